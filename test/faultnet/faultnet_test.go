package faultnet

import (
	"context"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/quorumq/quorumq/transport"
)

func listen(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { // echo
				buf := make([]byte, 64)
				for {
					k, err := c.Read(buf)
					if err != nil {
						c.Close()
						return
					}
					c.Write(buf[:k])
				}
			}()
		}
	}()
	return l
}

func TestCutClosesAndRefuses(t *testing.T) {
	nw := New()
	lb := listen(t)
	nw.Register("b", lb.Addr().String())
	dial := nw.Dialer("a")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := dial(ctx, lb.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(buf); err != nil {
		t.Fatal(err)
	}

	nw.Cut([]string{"a"}, []string{"b"})
	if _, err := c.Read(buf); err == nil {
		t.Fatal("connection over a cut link still open")
	}
	if _, err := dial(ctx, lb.Addr().String()); !errors.Is(err, ErrCut) {
		t.Fatalf("dial over a cut link: %v, want ErrCut", err)
	}
	// The other direction is cut too; other links are not.
	la := listen(t)
	nw.Register("a", la.Addr().String())
	if _, err := nw.Dialer("b")(ctx, la.Addr().String()); !errors.Is(err, ErrCut) {
		t.Fatalf("reverse dial: %v, want ErrCut", err)
	}
	if c2, err := nw.Dialer("c")(ctx, lb.Addr().String()); err != nil {
		t.Fatalf("c -> b: %v", err)
	} else {
		c2.Close()
	}
	if nw.Refused() != 2 {
		t.Fatalf("refused %d, want 2", nw.Refused())
	}

	nw.Heal()
	c3, err := dial(ctx, lb.Addr().String())
	if err != nil {
		t.Fatalf("after Heal: %v", err)
	}
	c3.Close()
}

func TestCutMembers(t *testing.T) {
	nw := New()
	lb := listen(t) // stands for node b's peer port (echoes the Raft header back)
	nw.Register("b", lb.Addr().String())
	la, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := transport.NewMux(la, nil)
	m.Dial = nw.Dialer("a")
	go m.Serve()
	defer m.Close()
	layer, err := m.Group("g", "a/1", "")
	if err != nil {
		t.Fatal(err)
	}
	c, err := layer.Dial(transport.Address(lb.Addr().String(), "b/1"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	other, err := layer.Dial(transport.Address(lb.Addr().String(), "b/2"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()

	nw.CutMembers("a/1", "b/1")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 256)
	for {
		if _, err := c.Read(buf); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal("connection between cut members still open")
			}
			break
		}
	}
	if _, err := layer.Dial(transport.Address(lb.Addr().String(), "b/1"), time.Second); !errors.Is(err, ErrCut) {
		t.Fatalf("dial between cut members: %v, want ErrCut", err)
	}
	// Other members of the same nodes still talk.
	if _, err := other.Write([]byte("x")); err != nil {
		t.Fatalf("other member's connection: %v", err)
	}
	nw.CutMembers("a/1", "*")
	if _, err := layer.Dial(transport.Address(lb.Addr().String(), "b/2"), time.Second); !errors.Is(err, ErrCut) {
		t.Fatalf("dial from an isolated member: %v, want ErrCut", err)
	}
	nw.Heal()
	c2, err := layer.Dial(transport.Address(lb.Addr().String(), "b/1"), time.Second)
	if err != nil {
		t.Fatalf("after Heal: %v", err)
	}
	c2.Close()
}
