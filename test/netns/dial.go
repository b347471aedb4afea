package netns

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// Listen listens on addr inside host i's namespace (say
// c.IP(i).String()+":9000"), to test the network itself. The socket stays
// in that namespace; the calling goroutine does not move.
func (c *Cluster) Listen(i int, network, addr string) (net.Listener, error) {
	var l net.Listener
	err := inNetns(c.host(i).ns, func() (err error) {
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

// Dial connects to addr from inside host i's namespace; host 0 is the root
// namespace (the test process's own, behind the gateway).
func (c *Cluster) Dial(ctx context.Context, i int, network, addr string) (net.Conn, error) {
	var d net.Dialer
	if i == 0 {
		return d.DialContext(ctx, network, addr)
	}
	var conn net.Conn
	err := inNetns(c.host(i).ns, func() (err error) {
		conn, err = d.DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

// inNetns runs fn on an OS thread switched into the named namespace.
// Sockets fn creates belong to that namespace for their whole life. The
// thread switches back afterwards; if it cannot, it stays locked and exits
// with its goroutine, so no other goroutine ever runs in the namespace.
func inNetns(name string, fn func() error) error {
	target, err := os.Open(filepath.Join("/run/netns", name))
	if err != nil {
		return err
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns: enter %s: %w", name, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("netns: leave %s: %w", name, err) // the thread dies locked
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
