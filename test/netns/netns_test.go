package netns

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// newCluster creates hosts, skips the test where the environment cannot,
// and closes them when the test ends.
func newCluster(t *testing.T, cfg Config) *Cluster {
	t.Helper()
	if cfg.Log == nil {
		cfg.Log = t.Output()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := New(ctx, cfg)
	if errors.Is(err, ErrUnavailable) {
		skip(t, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	return c
}

const echoPort = 9000

// listenAll listens on echoPort on every host and accepts (and drops)
// connections until the test ends.
func listenAll(t *testing.T, c *Cluster) {
	var (
		wg        sync.WaitGroup
		listeners []net.Listener
	)
	t.Cleanup(func() {
		for _, l := range listeners {
			l.Close()
		}
		wg.Wait()
	})
	for i := 1; i <= c.Nodes(); i++ {
		l, err := c.Listen(i, "tcp", netip.AddrPortFrom(c.IP(i), echoPort).String())
		if err != nil {
			t.Fatal(err)
		}
		listeners = append(listeners, l)
		wg.Go(func() {
			for {
				conn, err := l.Accept()
				if err != nil {
					return
				}
				conn.Close()
			}
		})
	}
}

// checkReach dials every host's echoPort from every other host and from
// the root namespace (host 0), in parallel, and compares with want. A dial
// expected to pass may take seconds (a loaded machine); one expected to be
// cut is given 700 ms: a cut drops the SYN, so it never passes.
func checkReach(t *testing.T, c *Cluster, phase string, want func(from, to int) bool) {
	t.Helper()
	var (
		mu   sync.Mutex
		errs []string
		wg   sync.WaitGroup
	)
	for from := 0; from <= c.Nodes(); from++ {
		for to := 1; to <= c.Nodes(); to++ {
			if from == to {
				continue
			}
			wg.Go(func() {
				w := want(from, to)
				timeout := 700 * time.Millisecond
				if w {
					timeout = 10 * time.Second
				}
				ctx, cancel := context.WithTimeout(context.Background(), timeout)
				defer cancel()
				conn, err := c.Dial(ctx, from, "tcp", netip.AddrPortFrom(c.IP(to), echoPort).String())
				if err == nil {
					conn.Close()
				}
				if got := err == nil; got != w {
					mu.Lock()
					errs = append(errs, fmt.Sprintf("%s -> n%d: reachable %v, want %v (%v)", hostName(from), to, got, w, err))
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	for _, e := range errs {
		t.Errorf("%s: %s", phase, e)
	}
}

func hostName(i int) string {
	if i == 0 {
		return "root"
	}
	return fmt.Sprintf("n%d", i)
}

func all(from, to int) bool { return true }

// TestFaults checks each fault with TCP dials between namespaces: cut while
// the fault holds, through again after Heal.
func TestFaults(t *testing.T) {
	c := newCluster(t, Config{Nodes: 3})
	listenAll(t, c)
	checkReach(t, c, "start", all)

	t.Run("DropOneWay", func(t *testing.T) {
		// An established connection from n1 to n2: after the drop, data
		// flows n2 -> n1 only; the held-back data arrives after Heal.
		l, err := c.Listen(2, "tcp", netip.AddrPortFrom(c.IP(2), echoPort+1).String())
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c1, err := c.Dial(ctx, 1, "tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c1.Close()
		c2, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer c2.Close()

		for range 2 { // idempotent
			if err := c.DropOneWay(1, 2); err != nil {
				t.Fatal(err)
			}
		}
		checkReach(t, c, "drop n1 -> n2", func(from, to int) bool {
			// TCP needs both ways: neither n1 nor n2 can connect to the other.
			return !(from == 1 && to == 2 || from == 2 && to == 1)
		})
		if _, err := c2.Write([]byte("from n2\n")); err != nil {
			t.Fatal(err)
		}
		if got := readLine(t, c1, 10*time.Second); got != "from n2" {
			t.Errorf("n1 read %q, want the data n2 sent", got)
		}
		if _, err := c1.Write([]byte("from n1\n")); err != nil {
			t.Fatal(err)
		}
		if got := readLine(t, c2, 700*time.Millisecond); got != "" {
			t.Errorf("n2 read %q through the drop", got)
		}
		if err := c.Heal(); err != nil {
			t.Fatal(err)
		}
		if got := readLine(t, c2, 20*time.Second); got != "from n1" {
			t.Errorf("after heal n2 read %q, want the data n1 sent", got)
		}
		checkReach(t, c, "healed", all)
	})

	t.Run("IsolateFromPeers", func(t *testing.T) {
		if err := c.IsolateFromPeers(2); err != nil {
			t.Fatal(err)
		}
		checkReach(t, c, "isolate n2 from peers", func(from, to int) bool {
			return from == 0 || (from != 2 && to != 2)
		})
		heal(t, c)
	})

	t.Run("Isolate", func(t *testing.T) {
		for range 2 {
			if err := c.Isolate(2); err != nil {
				t.Fatal(err)
			}
		}
		checkReach(t, c, "isolate n2", func(from, to int) bool { return from != 2 && to != 2 })
		heal(t, c)
	})

	t.Run("Partition", func(t *testing.T) {
		if err := c.Partition([]int{1, 2}, []int{3}); err != nil {
			t.Fatal(err)
		}
		checkReach(t, c, "partition", func(from, to int) bool {
			return from == 0 || (from == 3) == (to == 3)
		})
		heal(t, c)
	})

	t.Run("Bridge", func(t *testing.T) {
		if err := c.Bridge([]int{1}, []int{3}, 2); err != nil {
			t.Fatal(err)
		}
		checkReach(t, c, "bridge", func(from, to int) bool {
			return !(from == 1 && to == 3 || from == 3 && to == 1)
		})
		heal(t, c)
	})

	t.Run("BadArgs", func(t *testing.T) {
		for name, err := range map[string]error{
			"out of range": c.Isolate(4),
			"overlap":      c.Partition([]int{1, 2}, []int{2, 3}),
			"mid in group": c.Bridge([]int{1}, []int{2}, 2),
			"same host":    c.DropOneWay(1, 1),
			"no binary":    c.Start(1),
		} {
			if err == nil {
				t.Errorf("%s: no error", name)
			}
		}
	})
}

func heal(t *testing.T, c *Cluster) {
	t.Helper()
	if err := c.Heal(); err != nil {
		t.Fatal(err)
	}
	checkReach(t, c, "healed", all)
}

// readLine reads one line from conn within d; "" if none came.
func readLine(t *testing.T, conn net.Conn, d time.Duration) string {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(d))
	line, err := bufio.NewReader(conn).ReadString('\n')
	var ne net.Error
	if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
		t.Errorf("read: %v", err)
	}
	return strings.TrimSuffix(line, "\n")
}

// TestCleanupStale leaves what a crashed run leaves (a namespace and a root
// link of a name whose lock no one holds) next to a live run, and checks
// that CleanupStale removes the first and keeps the second.
func TestCleanupStale(t *testing.T) {
	live := newCluster(t, Config{Nodes: 1})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	stale := fmt.Sprintf("qq%06x", rand.IntN(1<<24))
	if err := ipBatch(ctx, "", []string{
		"netns add " + stale + "-n1",
		"link add " + stale + " type veth peer name eth0 netns " + stale + "-n1",
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeRun(context.Background(), stale) })

	if err := CleanupStale(ctx, t.Output()); err != nil {
		t.Fatal(err)
	}
	if left := leftovers(t, stale); len(left) > 0 {
		t.Errorf("stale run %s not removed: %s", stale, strings.Join(left, ", "))
	}
	if left := leftovers(t, live.Name()); len(left) != 3 {
		t.Errorf("live run %s: left %v, want its link, switch and host namespaces", live.Name(), left)
	}
}

// leftovers lists the namespaces and root links whose names begin with run.
func leftovers(t *testing.T, run string) []string {
	t.Helper()
	var left []string
	for _, args := range [][]string{{"netns", "list"}, {"-o", "link", "show"}} {
		out, err := exec.Command("ip", args...).Output()
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.Lines(string(out)) {
			f := strings.Fields(line)
			if args[0] == "-o" && len(f) > 1 {
				f = f[1:]
			}
			if len(f) > 0 && strings.HasPrefix(f[0], run) {
				left = append(left, strings.TrimSuffix(f[0], ":"))
			}
		}
	}
	return left
}

// buildQuorumq builds the server binary into a temporary directory.
func buildQuorumq(t *testing.T) string {
	t.Helper()
	bin, err := BuildQuorumq(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// TestQuorumq runs a 3-node cluster in namespaces: it forms, survives a
// kill, a graceful restart and a pause, and Close leaves nothing behind.
func TestQuorumq(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs a 3-node cluster")
	}
	if err := probe(); err != nil {
		skip(t, err)
	}
	bin := buildQuorumq(t)
	c := newCluster(t, Config{Nodes: 3, Binary: bin, Dir: t.TempDir()})
	t.Cleanup(func() {
		if t.Failed() {
			for i := 1; i <= c.Nodes(); i++ {
				dumpLog(t, c.LogPath(i))
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	wait := func(what string, hosts ...int) {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		if err := c.WaitReady(wctx, hosts...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}

	for i := 1; i <= 3; i++ {
		if err := c.Start(i); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Start(1); err == nil {
		t.Error("second Start of a running node: no error")
	}
	wait("forming")
	cli(t, ctx, c, bin, c.ClientAddr(1), "queue", "create", "netns", "--partitions", "2")
	cli(t, ctx, c, bin, c.ClientAddr(3), "send", "netns", "hello-netns")

	if err := c.Kill(2); err != nil {
		t.Fatal(err)
	}
	if c.Running(2) {
		t.Fatal("n2 runs after Kill")
	}
	if exited, err := c.Exited(2); !exited || err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("Exited(2) = %v, %v; want killed", exited, err)
	}
	if err := c.Start(2); err != nil {
		t.Fatal(err)
	}
	wait("after kill and restart of n2")
	if out := cli(t, ctx, c, bin, c.ClientAddr(2), "cluster", "members"); strings.Count(out, `"gossipState":"alive"`) != 3 {
		t.Errorf("members seen by n2 after its restart, want 3 alive:\n%s", out)
	}

	if err := c.Restart(ctx, 3); err != nil {
		t.Fatal(err)
	}
	wait("after graceful restart of n3")

	if err := c.Pause(1); err != nil {
		t.Fatal(err)
	}
	pctx, pcancel := context.WithTimeout(ctx, 3*time.Second)
	err := c.WaitReady(pctx, 1)
	pcancel()
	if err == nil {
		t.Error("paused n1 answered /readyz")
	}
	if err := c.Resume(1); err != nil {
		t.Fatal(err)
	}
	wait("after pause of n1")

	// Sent through n3 before n2's kill, received through n1 after it all.
	want := base64.StdEncoding.EncodeToString([]byte("hello-netns"))
	if out := cli(t, ctx, c, bin, c.ClientAddr(1), "recv", "netns", "--ack", "--wait", "10s"); !strings.Contains(out, want) {
		t.Errorf("recv through n1: %s, want the message sent through n3", out)
	}

	// n3 comes back as a new node with an empty data directory.
	if err := c.Wipe(3); err == nil {
		t.Error("Wipe of a running node: no error")
	}
	if err := c.Kill(3); err != nil {
		t.Fatal(err)
	}
	if err := c.Wipe(3); err != nil {
		t.Fatal(err)
	}
	if err := c.StartAs(3, "n3b"); err != nil {
		t.Fatal(err)
	}
	wait("after n3 came back as n3b")
	if out := cli(t, ctx, c, bin, c.ClientAddr(3), "cluster", "status"); !strings.Contains(out, `"nodeId":"n3b"`) {
		t.Errorf("status of n3 after StartAs: %s", out)
	}

	if fi, err := os.Stat(c.LogPath(2)); err != nil || fi.Size() == 0 {
		t.Errorf("log of n2: %v, %v", fi, err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		if c.Running(i) {
			t.Errorf("n%d runs after Close", i)
		}
	}
	if left := leftovers(t, c.Name()); len(left) > 0 {
		t.Errorf("Close left %s", strings.Join(left, ", "))
	}
}

// cli runs a quorumq client command against server (from the root
// namespace) until it succeeds, for up to a minute: a node just restarted
// may still answer UNAVAILABLE. It returns the JSON output.
func cli(t *testing.T, ctx context.Context, c *Cluster, bin, server string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	creds, err := c.AdminCLIEnv()
	if err != nil {
		t.Fatal(err)
	}
	args = append([]string{"--servers", server, "-o", "json", "--timeout", "20s"}, args...)
	for {
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Env = append(serverEnv(), append(creds, "QUORUMQ_CONFIG_DIR="+t.TempDir())...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err == nil {
			return string(out)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("quorumq %s: %v: %s", strings.Join(args, " "), err, stderr.String())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// skip skips the test because the environment cannot run the harness,
// or fails it if QUORUMQ_NETNS_REQUIRED is set (a CI that must not skip).
func skip(t *testing.T, err error) {
	t.Helper()
	if os.Getenv("QUORUMQ_NETNS_REQUIRED") != "" {
		t.Fatalf("QUORUMQ_NETNS_REQUIRED is set: %v", err)
	}
	t.Skip(err)
}

// probe says why the harness cannot run here, before the binary is built.
func probe() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: needs root", ErrUnavailable)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("%w: no ip command", ErrUnavailable)
	}
	return nil
}

// dumpLog logs the end of a node's log file.
func dumpLog(t *testing.T, path string) {
	f, err := os.Open(path)
	if err != nil {
		t.Logf("%s: %v", path, err)
		return
	}
	defer f.Close()
	data, _ := io.ReadAll(f)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	t.Logf("== %s (last %d lines)\n%s", path, len(lines), strings.Join(lines, "\n"))
}
