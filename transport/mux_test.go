package transport

import (
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/goleak"
)

// startMux serves a Mux on 127.0.0.1:0 and closes it at cleanup, checking
// that Serve returned nil.
func startMux(t *testing.T, configure func(*Mux)) *Mux {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := NewMux(l, nil)
	if configure != nil {
		configure(m)
	}
	served := make(chan error, 1)
	go func() { served <- m.Serve() }()
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("Mux.Close: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("Mux.Serve: %v", err)
		}
	})
	return m
}

// group registers member "m1" of group id on m, advertising m's address.
func group(t *testing.T, m *Mux, id string) *GroupLayer {
	t.Helper()
	l, err := m.Group(id, "m1", "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// accept returns the next conn of l, failing after a few seconds.
func accept(t *testing.T, l net.Listener) net.Conn {
	t.Helper()
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := l.Accept()
		ch <- result{c, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("Accept: %v", r.err)
		}
		t.Cleanup(func() { r.c.Close() })
		return r.c
	case <-time.After(5 * time.Second):
		l.Close() // unblocks the goroutine
		t.Fatal("Accept: timed out")
		return nil
	}
}

// roundTrip writes msg on a and expects to read it on b.
func roundTrip(t *testing.T, a, b net.Conn, msg string) {
	t.Helper()
	if _, err := a.Write([]byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(b, got); err != nil {
		t.Fatalf("read: %v", err)
	}
	if string(got) != msg {
		t.Fatalf("read %q, want %q", got, msg)
	}
}

// expectClosed waits for the peer to close c.
func expectClosed(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	for {
		_, err := c.Read(buf)
		if err == nil {
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("connection was not closed by the mux")
		}
		return
	}
}

func rawDial(t *testing.T, m *Mux, first string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", m.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if first != "" {
		if _, err := c.Write([]byte(first)); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func TestMuxRoutesRaftConnsByGroup(t *testing.T) {
	m := startMux(t, nil)
	g1, g2 := group(t, m, "g1"), group(t, m, "g2")
	if g1.Addr().String() != m.Addr().String() {
		t.Fatalf("advertise = %s, want the mux address %s", g1.Addr(), m.Addr())
	}

	for _, g := range []*GroupLayer{g1, g2} {
		out, err := g.Dial(Address(m.Addr().String(), "m1"), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer out.Close()
		in := accept(t, g)
		roundTrip(t, out, in, "to "+g.ID())
		roundTrip(t, in, out, "from "+g.ID())
	}
	if s := m.Stats(); s.Raft != 2 || s.Accepted != 2 {
		t.Fatalf("stats = %+v, want 2 raft conns", s)
	}
}

func TestMuxClosesBadConnections(t *testing.T) {
	m := startMux(t, func(m *Mux) { m.HandshakeTimeout = 300 * time.Millisecond })
	g1 := group(t, m, "g1")

	// A healthy Raft conn, open across the whole test.
	out, err := g1.Dial(Address(m.Addr().String(), "m1"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	in := accept(t, g1)
	roundTrip(t, out, in, "before")

	bad := []struct {
		name  string
		first string
	}{
		{"http/1", "GET / HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"binary garbage", "\x00\xff\x13\x37garbage"},
		{"bad length", "QQR2\xff\xff"},
		{"version 1 (no target)", string(append([]byte("QQR1\x00\x02"), "g1"...))},
		{"no target", "QQR2\x00\x02g1\x00\x00"},
		{"not quite http/2", "PRI * HTTP/1.1\r\n\r\nSM\r\n\r\n"},
		{"silent", ""},
		{"half a header", "QQR2\x00\x09g"},
	}
	for _, b := range bad {
		t.Run(b.name, func(t *testing.T) {
			expectClosed(t, rawDial(t, m, b.first))
		})
	}
	unknown := rawDial(t, m, string(appendHeader(nil, "nope", "m1")))
	expectClosed(t, unknown)

	roundTrip(t, out, in, "after")
	roundTrip(t, in, out, "still fine")
	s := m.Stats()
	if s.BadHeader != uint64(len(bad)) || s.UnknownGroup != 1 || s.Raft != 1 {
		t.Fatalf("stats = %+v, want %d bad headers, 1 unknown group, 1 raft", s, len(bad))
	}
}

func TestMuxGRPCListener(t *testing.T) {
	m := startMux(t, func(m *Mux) { m.HandshakeTimeout = 300 * time.Millisecond })
	g1 := group(t, m, "g1")
	gl := m.GRPCListener()
	if gl != m.GRPCListener() || gl.Addr().String() != m.Addr().String() {
		t.Fatal("GRPCListener must be one listener on the mux address")
	}

	c := rawDial(t, m, http2Preface+"SETTINGS")
	in := accept(t, gl)
	in.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, len(http2Preface)+len("SETTINGS"))
	if _, err := io.ReadFull(in, got); err != nil {
		t.Fatal(err)
	}
	if string(got) != http2Preface+"SETTINGS" {
		t.Fatalf("gRPC side read %q, want the replayed preface", got)
	}
	roundTrip(t, in, c, "server frames")

	// Closing the gRPC listener leaves the mux and Raft alone.
	if err := gl.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := gl.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
	}
	expectClosed(t, rawDial(t, m, http2Preface))
	out, err := g1.Dial(Address(m.Addr().String(), "m1"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	roundTrip(t, out, accept(t, g1), "raft still works")
	roundTrip(t, in, c, "accepted gRPC conn still works")
	if s := m.Stats(); s.GRPC != 1 || s.Dropped != 1 || s.Raft != 1 {
		t.Fatalf("stats = %+v, want 1 grpc, 1 dropped, 1 raft", s)
	}
}

func TestMuxGroupRegistration(t *testing.T) {
	m := startMux(t, nil)
	for _, id := range []string{"", strings.Repeat("x", MaxGroupIDLen+1)} {
		if _, err := m.Group(id, "m1", ""); !errors.Is(err, ErrInvalidGroupID) {
			t.Fatalf("Group(%d bytes) = %v, want ErrInvalidGroupID", len(id), err)
		}
	}
	for _, local := range []raft.ServerID{"", raft.ServerID(strings.Repeat("x", MaxServerIDLen+1))} {
		if _, err := m.Group("g1", local, ""); !errors.Is(err, ErrInvalidServerID) {
			t.Fatalf("Group(server id of %d bytes) = %v, want ErrInvalidServerID", len(local), err)
		}
	}
	g1, err := m.Group("g1", "m1", "node-1.peers:7421")
	if err != nil {
		t.Fatal(err)
	}
	if got := g1.Addr().String(); got != "node-1.peers:7421" {
		t.Fatalf("Addr = %s, want the advertised address", got)
	}
	if _, err := m.Group("g1", "m2", ""); !errors.Is(err, ErrGroupExists) {
		t.Fatalf("second Group(g1) = %v, want ErrGroupExists", err)
	}

	// Close of the layer closes what it accepted and dialed, and unregisters.
	out, err := g1.Dial(Address(m.Addr().String(), "m1"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	in := accept(t, g1)
	roundTrip(t, out, in, "x")
	if err := g1.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := in.Read(make([]byte, 1)); err == nil {
		t.Fatal("accepted conn still open after GroupLayer.Close")
	}
	if _, err := out.Write([]byte("y")); err == nil {
		t.Fatal("dialed conn still open after GroupLayer.Close")
	}
	if _, err := g1.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close = %v, want net.ErrClosed", err)
	}
	if _, err := g1.Dial(Address(m.Addr().String(), "m1"), time.Second); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Dial after Close = %v, want net.ErrClosed", err)
	}
	expectClosed(t, rawDial(t, m, string(appendHeader(nil, "g1", "m1"))))
	if s := m.Stats(); s.UnknownGroup != 1 {
		t.Fatalf("stats = %+v, want 1 unknown group", s)
	}

	// The id is free again.
	g1b := group(t, m, "g1")
	out2, err := g1b.Dial(Address(m.Addr().String(), "m1"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer out2.Close()
	roundTrip(t, out2, accept(t, g1b), "again")
}

func TestMuxCloseStopsEverything(t *testing.T) {
	defer goleak.VerifyNone(t)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := NewMux(l, nil)
	served := make(chan error, 1)
	go func() { served <- m.Serve() }()
	waitFor(t, 5*time.Second, "Serve to start", func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.serving
	})
	if err := m.Serve(); err == nil {
		t.Fatal("second Serve returned nil, want an error")
	}

	g1, err := m.Group("g1", "m1", "")
	if err != nil {
		t.Fatal(err)
	}
	out, err := g1.Dial(Address(m.Addr().String(), "m1"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	in, err := g1.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()

	// Blocked in Accept, in the header sniff and in the hand-off when Close comes.
	acceptErrs := make(chan error, 2)
	go func() { _, err := g1.Accept(); acceptErrs <- err }()
	go func() { _, err := m.GRPCListener().Accept(); acceptErrs <- err }()
	silent, err := net.Dial("tcp", m.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	g2, err := m.Group("g2", "m1", "")
	if err != nil {
		t.Fatal(err)
	}
	waiting, err := g2.Dial(Address(m.Addr().String(), "m1"), time.Second) // nobody accepts g2
	if err != nil {
		t.Fatal(err)
	}
	defer waiting.Close()
	waitFor(t, 5*time.Second, "all three conns to reach the mux", func() bool { return m.Stats().Accepted == 3 })

	start := time.Now()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve = %v, want nil after Close", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Close took %v; it must not wait for handshake timeouts", d)
	}
	for range 2 {
		if err := <-acceptErrs; !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Mux.Close = %v, want net.ErrClosed", err)
		}
	}
	expectClosed(t, silent)
	expectClosed(t, waiting)
	expectClosed(t, out)
	if _, err := m.Group("g3", "m1", ""); !errors.Is(err, ErrMuxClosed) {
		t.Fatalf("Group after Close = %v, want ErrMuxClosed", err)
	}
	if err := m.Serve(); err != nil {
		t.Fatalf("Serve after Close = %v, want nil", err)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
	if _, err := net.Dial("tcp", m.Addr().String()); err == nil {
		t.Fatal("listener still accepting after Close")
	}
}

// A connection for a member of a group that the node does not hold — an
// old incarnation, a wiped or removed replica — reaches no member: the Mux
// closes it and counts it, and the member that does run here never sees it.
func TestMuxRefusesOtherMembersOfAGroup(t *testing.T) {
	m := startMux(t, nil)
	current, err := m.Group("q/orders/7/0", "n3/33", "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { current.Close() })
	dialer := startMux(t, nil)
	out, err := dialer.Group("q/orders/7/0", "n2/5", "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { out.Close() })

	for _, old := range []raft.ServerID{"n3/14", "n3", "n3/3"} {
		c, err := out.Dial(Address(m.Addr().String(), old), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		expectClosed(t, c)
	}
	waitFor(t, 5*time.Second, "3 refused connections", func() bool { return m.Stats().WrongTarget == 3 })
	if s := m.Stats(); s.Raft != 0 {
		t.Fatalf("stats %+v: a connection for another member was accepted", s)
	}

	// An address without a server id is not dialed at all.
	if _, err := out.Dial(raft.ServerAddress(m.Addr().String()), time.Second); !errors.Is(err, ErrNoServerID) {
		t.Fatalf("Dial without a server id = %v, want ErrNoServerID", err)
	}

	// The member that runs here is reached under its own id.
	c, err := out.Dial(Address(m.Addr().String(), "n3/33"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	roundTrip(t, c, accept(t, current), "for n3/33")
	if s := m.Stats(); s.Raft != 1 || s.WrongTarget != 3 {
		t.Fatalf("stats %+v, want 1 raft conn and 3 wrong targets", s)
	}
}

func TestSplitAddress(t *testing.T) {
	for in, want := range map[string][2]string{
		"10.0.0.1:7421":         {"10.0.0.1:7421", ""},
		"10.0.0.1:7421#n1/10":   {"10.0.0.1:7421", "n1/10"},
		"[::1]:7421#n1":         {"[::1]:7421", "n1"},
		"q-0.svc:7421#q0/3#odd": {"q-0.svc:7421", "q0/3#odd"},
	} {
		hp, id := SplitAddress(raft.ServerAddress(in))
		if hp != want[0] || string(id) != want[1] {
			t.Errorf("SplitAddress(%q) = %q, %q; want %q, %q", in, hp, id, want[0], want[1])
		}
	}
	if got := Address("h:1", "n1/2"); got != "h:1#n1/2" {
		t.Errorf("Address = %q", got)
	}
}
