package netns

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/quorumq/quorumq/transport/pki"
)

const (
	sigKILL = syscall.SIGKILL
	sigTERM = syscall.SIGTERM
	sigSTOP = syscall.SIGSTOP
	sigCONT = syscall.SIGCONT
)

// proc is one server process.
type proc struct {
	cmd    *exec.Cmd
	done   chan struct{} // closed once the process has exited and is reaped
	err    error         // Wait's result; read only after done
	paused bool          // guarded by Cluster.mu
}

func (p *proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// signal sends sig to the process's group (the server and anything it
// started). A process already reaped is left alone, so the pid cannot have
// been reused.
func (p *proc) signal(sig syscall.Signal) {
	if p.alive() {
		syscall.Kill(-p.cmd.Process.Pid, sig)
	}
}

// spawner starts processes from one OS thread that lives until close.
// Pdeathsig fires when the thread that forked a child exits, not the
// process (golang/go#27505): a child forked from an ordinary Go thread
// could be killed when the runtime retires that thread.
type spawner struct{ req chan func() }

func newSpawner() *spawner {
	s := &spawner{req: make(chan func())}
	go func() {
		// Never unlocked: when close ends this goroutine the thread exits,
		// and any child still alive gets its Pdeathsig.
		runtime.LockOSThread()
		for f := range s.req {
			f()
		}
	}()
	return s
}

func (s *spawner) do(f func()) {
	done := make(chan struct{})
	s.req <- func() { f(); close(done) }
	<-done
}

func (s *spawner) close() { close(s.req) }

// Start starts host i's server with its current node id (n<i> unless
// StartAs changed it). The process runs in its own process group, gets
// SIGKILL if the test process dies, and appends its output to LogPath(i).
// It is an error if the node is already running.
func (c *Cluster) Start(i int) error {
	return c.start(i, "")
}

// StartAs starts host i's server as nodeID, which later Starts keep. With
// Wipe first, the host comes back as a new node.
func (c *Cluster) StartAs(i int, nodeID string) error {
	if nodeID == "" {
		return errors.New("netns: empty node id")
	}
	return c.start(i, nodeID)
}

func (c *Cluster) start(i int, nodeID string) error {
	h := c.host(i)
	if c.cfg.Binary == "" {
		return errors.New("netns: Config.Binary not set")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errors.New("netns: cluster closed")
	}
	if h.proc != nil && h.proc.alive() {
		return fmt.Errorf("netns: n%d already running (pid %d)", i, h.proc.cmd.Process.Pid)
	}
	if nodeID != "" {
		h.nodeID = nodeID
	}
	logf, err := os.OpenFile(c.LogPath(i), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close() // the child has its own copy
	args := c.serverArgs(h)
	if c.cfg.Insecure {
		args = append(args, "--insecure")
	} else {
		tlsArgs, err := c.tlsArgs(h)
		if err != nil {
			return err
		}
		args = append(args, tlsArgs...)
	}
	args = append(args, c.cfg.ExtraArgs...)
	fmt.Fprintf(logf, "=== %s netns: ip netns exec %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(args, " "))

	cmd := exec.Command("ip", append([]string{"netns", "exec", h.ns}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = serverEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// `ip netns exec` execs the binary in place: the pid is the server's.
	c.spawn.do(func() { err = cmd.Start() })
	if err != nil {
		return fmt.Errorf("netns: start n%d: %w", i, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	h.proc = p
	what := fmt.Sprintf("start n%d", i)
	if h.nodeID != fmt.Sprintf("n%d", i) {
		what += " as " + h.nodeID
	}
	c.logf("%s (pid %d)", what, cmd.Process.Pid)
	go func() {
		p.err = cmd.Wait()
		c.logf("n%d exited: %v", i, exitString(p.err))
		close(p.done)
	}()
	return nil
}

// serverArgs is host h's `quorumq server` command line, without the
// security flags and Config.ExtraArgs.
func (c *Cluster) serverArgs(h *host) []string {
	var join []string
	for _, o := range c.hosts {
		join = append(join, c.addr(o.n, GossipPort))
	}
	ip := h.ip.String()
	args := []string{c.cfg.Binary, "server",
		"--data-dir", c.DataDir(h.n),
		"--node-id", h.nodeID,
		"--bootstrap-expect", strconv.Itoa(len(c.hosts)),
		"--join", strings.Join(join, ","),
		"--client-addr", c.addr(h.n, ClientPort),
		"--peer-addr", c.addr(h.n, PeerPort),
		"--gossip-addr", c.addr(h.n, GossipPort),
		"--http-addr", c.addr(h.n, HTTPPort),
		"--advertise-host", ip,
		"--log-level", "info",
	}
	return args
}

// TLSDir is where the cluster's TLS material lives (CA, node certificates,
// gossip key), outside every data directory.
func (c *Cluster) TLSDir() string { return filepath.Join(c.dir, "tls") }

// tlsArgs are host h's TLS flags; its certificate is issued on first use
// (a node started under a new id gets one for that id).
func (c *Cluster) tlsArgs(h *host) ([]string, error) {
	l, err := pki.OpenLocal(c.TLSDir())
	if err != nil {
		return nil, fmt.Errorf("netns: TLS material: %w", err)
	}
	f, err := l.Node(h.nodeID)
	if err != nil {
		return nil, fmt.Errorf("netns: TLS material of %s: %w", h.nodeID, err)
	}
	return []string{"--tls-ca", f.CA, "--tls-cert", f.Cert, "--tls-key", f.Key, "--gossip-key-file", l.GossipKeyFile}, nil
}

// serverEnv is the test process's environment without QUORUMQ_* variables,
// which would configure the servers behind the harness's back.
func serverEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "QUORUMQ_") {
			env = append(env, kv)
		}
	}
	return env
}

func exitString(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// running returns host i's live process, or nil.
func (c *Cluster) running(i int) *proc {
	h := c.host(i)
	c.mu.Lock()
	defer c.mu.Unlock()
	if h.proc != nil && h.proc.alive() {
		return h.proc
	}
	return nil
}

// Running says whether host i's server process is alive (paused counts).
func (c *Cluster) Running(i int) bool { return c.running(i) != nil }

// Exited reports whether host i's last process has exited, and how: err
// is its Wait error (nil for exit status 0).
func (c *Cluster) Exited(i int) (exited bool, err error) {
	h := c.host(i)
	c.mu.Lock()
	p := h.proc
	c.mu.Unlock()
	if p == nil || p.alive() {
		return false, nil
	}
	return true, p.err
}

// NodeID is the node id host i's server is (or will be) started with.
func (c *Cluster) NodeID(i int) string {
	h := c.host(i)
	c.mu.Lock()
	defer c.mu.Unlock()
	return h.nodeID
}

// Kill sends SIGKILL to host i's server and waits until it has exited. A
// node that is not running is left as it is.
func (c *Cluster) Kill(i int) error {
	p := c.running(i)
	if p == nil {
		c.logf("kill n%d (not running)", i)
		return nil
	}
	c.logf("kill n%d", i)
	p.signal(sigKILL)
	<-p.done
	return nil
}

// Stop sends SIGTERM to host i's server (and SIGCONT, should it be paused)
// and waits until it has exited. If ctx ends first, Stop kills it and
// returns ctx's error. A node that is not running is left as it is.
func (c *Cluster) Stop(ctx context.Context, i int) error {
	p := c.running(i)
	if p == nil {
		c.logf("stop n%d (not running)", i)
		return nil
	}
	c.logf("stop n%d", i)
	p.signal(sigTERM)
	c.mu.Lock()
	if p.paused {
		p.signal(sigCONT)
		p.paused = false
	}
	c.mu.Unlock()
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		p.signal(sigKILL)
		<-p.done
		c.logf("n%d killed: graceful stop took too long", i)
		return fmt.Errorf("netns: stop n%d: %w (killed)", i, ctx.Err())
	}
}

// Restart stops host i's server gracefully (if it runs) and starts it again.
func (c *Cluster) Restart(ctx context.Context, i int) error {
	if err := c.Stop(ctx, i); err != nil {
		return err
	}
	return c.Start(i)
}

// Pause freezes host i's server with SIGSTOP: it keeps its sockets but
// answers nothing, like a long GC pause or a stalled VM.
func (c *Cluster) Pause(i int) error {
	return c.setPaused(i, true)
}

// Resume thaws a paused server with SIGCONT.
func (c *Cluster) Resume(i int) error {
	return c.setPaused(i, false)
}

func (c *Cluster) setPaused(i int, pause bool) error {
	op, sig := "resume", sigCONT
	if pause {
		op, sig = "pause", sigSTOP
	}
	c.logf("%s n%d", op, i)
	p := c.running(i)
	if p == nil {
		return fmt.Errorf("%s n%d: %w", op, i, ErrNotRunning)
	}
	c.mu.Lock()
	p.signal(sig)
	p.paused = pause
	c.mu.Unlock()
	if pause {
		// SIGSTOP takes effect asynchronously: a thread may still finish
		// what it was doing. Return once the process is stopped.
		return p.waitStopped(2 * time.Second)
	}
	return nil
}

// waitStopped polls /proc until every thread of the process is stopped
// ('T'), or timeout passes.
func (p *proc) waitStopped(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", p.cmd.Process.Pid))
		if err != nil || !p.alive() {
			return nil // gone: nothing left to stop
		}
		stopped := len(tasks) > 0
		for _, t := range tasks {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", p.cmd.Process.Pid, t.Name()))
			if err != nil {
				continue // the thread ended
			}
			// The state follows the parenthesised command name.
			i := strings.LastIndexByte(string(b), ')')
			if i < 0 || i+2 >= len(b) || (b[i+2] != 'T' && b[i+2] != 't') {
				stopped = false
				break
			}
		}
		if stopped {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("netns: pid %d not stopped after %v", p.cmd.Process.Pid, timeout)
		}
		time.Sleep(5 * time.Millisecond) // polling the kernel's state, not waiting for time to pass
	}
}

// Wipe deletes host i's data directory; the server must not be running.
// Started again, it joins as a new node under the same id (or another,
// with StartAs). A data directory that is a mount point (a test may put
// it on a filesystem of its own, such as test/lazyfs) is emptied and
// stays.
func (c *Cluster) Wipe(i int) error {
	if c.Running(i) {
		return fmt.Errorf("netns: wipe n%d: still running", i)
	}
	c.logf("wipe n%d", i)
	dir := c.DataDir(i)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, syscall.EBUSY) {
		return err
	}
	return nil
}

// AdminCLIEnv are the environment variables that make a quorumq client
// command the cluster's admin (client certificate "admin"); none with
// Insecure. Variables, not flags: on send, --key is the partition key.
func (c *Cluster) AdminCLIEnv() ([]string, error) {
	if c.cfg.Insecure {
		return nil, nil
	}
	f, err := c.adminFiles()
	if err != nil {
		return nil, err
	}
	return []string{"QUORUMQ_CA=" + f.CA, "QUORUMQ_CERT=" + f.Cert, "QUORUMQ_KEY=" + f.Key}, nil
}

// AdminTLS is the client TLS configuration of the cluster's admin (client
// certificate "admin"); nil with Insecure.
func (c *Cluster) AdminTLS() (*tls.Config, error) {
	if c.cfg.Insecure {
		return nil, nil
	}
	f, err := c.adminFiles()
	if err != nil {
		return nil, err
	}
	return pki.ClientTLSConfig(f.CA, f.Cert, f.Key)
}

func (c *Cluster) adminFiles() (pki.Files, error) {
	l, err := pki.OpenLocal(c.TLSDir())
	if err != nil {
		return pki.Files{}, fmt.Errorf("netns: TLS material: %w", err)
	}
	f, err := l.Client("admin")
	if err != nil {
		return pki.Files{}, fmt.Errorf("netns: admin certificate: %w", err)
	}
	return f, nil
}
