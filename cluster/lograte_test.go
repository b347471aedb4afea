package cluster

import (
	"bytes"
	"context"
	"fmt"
	"log"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestRateLimitedWriter(t *testing.T) {
	var out bytes.Buffer
	now := time.Unix(0, 0)
	w := newRateLimitedWriter(&out, 10*time.Second)
	w.now = func() time.Time { return now }
	l := log.New(w, "", 0)
	for i := range 1000 {
		l.Printf("[ERR] memberlist: Decrypt packet failed: no installed keys could decrypt the message from=10.0.0.%d:%d", i%250, 1000+i)
		l.Printf("[WARN] memberlist: Got ping for unexpected node 'n%d' from=10.0.0.1:1", i)
		l.Printf("[DEBUG] memberlist: Stream connection %d", i)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2+1000 {
		t.Fatalf("%d lines written, want 2 and the 1000 debug ones:\n%s", len(lines), strings.Join(lines[:min(len(lines), 10)], "\n"))
	}
	out.Reset()
	now = now.Add(10 * time.Second)
	l.Printf("[ERR] memberlist: Decrypt packet failed: again from=10.0.0.1:1")
	if !strings.Contains(out.String(), "and 999 more like it") {
		t.Fatalf("after the period: %q", out.String())
	}
	// Kinds are bounded: a sender choosing new words each time does not
	// grow the map past maxLogKeys.
	for i := range 10 * maxLogKeys {
		l.Printf("[ERR] memberlist: %c%c%c", 'a'+i%26, 'a'+i/26%26, 'a'+i/676%26)
	}
	if len(w.keys) > maxLogKeys {
		t.Fatalf("%d kinds remembered", len(w.keys))
	}
}

// countingHandler counts the records whose message contains substr.
type countingHandler struct {
	mu     sync.Mutex
	substr string
	n      int
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, h.substr) {
		h.mu.Lock()
		h.n++
		h.mu.Unlock()
	}
	return nil
}
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }
func (h *countingHandler) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n
}

// TestGossipGarbageLogged: garbage datagrams to the gossip port make a
// line now and then, not one each.
func TestGossipGarbageLogged(t *testing.T) {
	h := &countingHandler{substr: "memberlist"}
	c := startClusterWith(t, 3, func(cfg *Config) {
		if cfg.NodeID == "n3" {
			cfg.Logger = slog.New(h)
		}
	})
	conn, err := net.Dial("udp", c.nodes[2].GossipAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	w := c.nodes[2].gossip.mlLog
	before, seen := h.count(), w.limitedLines()
	for i := range 2000 {
		if _, err := conn.Write(fmt.Appendf(nil, "garbage %d %s", i, strings.Repeat("x", i%100))); err != nil {
			t.Fatal(err)
		}
	}
	// UDP may drop some; most arrive.
	c.waitFor("garbage handled", 10*time.Second, func() bool { return w.limitedLines()-seen >= 1000 })
	got := h.count() - before
	t.Logf("2000 garbage datagrams (%d error lines from memberlist): %d written", w.limitedLines()-seen, got)
	if got > 20 {
		t.Fatalf("%d log lines for 2000 garbage datagrams", got)
	}
	// The node still gossips: its view of the others stays alive.
	for _, id := range []string{"n1", "n2"} {
		if s := c.gossipState(2, id); s != "alive" {
			t.Fatalf("n3 sees %s %s", id, s)
		}
	}
}
