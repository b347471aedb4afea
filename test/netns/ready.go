package netns

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"
)

// WaitReady polls /readyz of the given hosts (none: every host whose server
// runs) until all answer 200 in the same round, or ctx ends; it fails at
// once if one of their servers exits. Its error names each host that was
// not ready and why.
func (c *Cluster) WaitReady(ctx context.Context, hosts ...int) error {
	if err := c.check(hosts...); err != nil {
		return err
	}
	if len(hosts) == 0 {
		for i := 1; i <= len(c.hosts); i++ {
			if c.Running(i) {
				hosts = append(hosts, i)
			}
		}
		if len(hosts) == 0 {
			return fmt.Errorf("netns: wait ready: %w", ErrNotRunning)
		}
	}
	// No proxy from the environment, no idle connections left behind.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	defer client.CloseIdleConnections()
	start := time.Now()
	why := map[int]string{}
	for {
		clear(why)
		for _, i := range hosts {
			if !c.Running(i) {
				_, err := c.Exited(i)
				return fmt.Errorf("netns: n%d is not running (%s; log %s)", i, exitString(err), c.LogPath(i))
			}
			if reason := c.readyz(ctx, client, i); reason != "" {
				why[i] = reason
			}
		}
		if len(why) == 0 {
			c.logf("ready %s after %.1fs", hostList(hosts), time.Since(start).Seconds())
			return nil
		}
		select {
		case <-ctx.Done():
			var parts []string
			for _, i := range slices.Sorted(maps.Keys(why)) {
				parts = append(parts, fmt.Sprintf("n%d: %s", i, why[i]))
			}
			return fmt.Errorf("netns: not ready: %s: %w", strings.Join(parts, "; "), ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// readyz asks host i's /readyz and says why it is not ready, or "".
func (c *Cluster) readyz(ctx context.Context, client *http.Client, i int) string {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.HTTPAddr(i)+"/readyz", nil)
	if err != nil {
		return err.Error()
	}
	resp, err := client.Do(req)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Sprintf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return ""
}

func hostList(hosts []int) string {
	var names []string
	for _, i := range hosts {
		names = append(names, fmt.Sprintf("n%d", i))
	}
	return strings.Join(names, " ")
}
