package conn

import (
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/vatactor/vatactor/supervisor"
)

// pollers counts the parker's poll goroutines.
func pollers() int {
	buf := make([]byte, 1<<20)
	n := runtime.Stack(buf, true)
	return strings.Count(string(buf[:n]), "conn.(*parker).run(")
}

// TestParkedReaders: on Linux a rested connection's reader is parked (no
// goroutine of its own); it wakes for the peer's next call, parks again,
// wakes for the peer's FIN, and once no reader is parked the poll
// goroutine ends.
func TestParkedReaders(t *testing.T) {
	p := newEchoPairs(t, 1)
	call := func() { t.Helper(); p.echo(t, 0, "parked") }
	for range 3 {
		call()
		waitFor(t, func() bool { return readers.parked() == 2 && shallowReaders() == 0 })
		if pollers() != 1 {
			t.Fatalf("%d poll goroutines for the parked readers, want 1", pollers())
		}
	}
	p.close() // the client's end: its FIN wakes the server's parked reader
	for _, c := range p.conns {
		<-c.Done()
		if r := c.Err(); r == nil || !r.Expected() {
			t.Errorf("%s ended with %v, want an expected end", c.opts.Role, r)
		}
	}
	waitFor(t, func() bool { return readers.parked() == 0 && pollers() == 0 })
}

// TestParkedReaderClosed: a connection whose reader is parked and whose
// peer never answers closes: its linger runs out, the socket is closed,
// and the parked reader, whose socket gets no event then, is woken by the
// close; a peer's reset wakes another.
func TestParkedReaderClosed(t *testing.T) {
	sys := actor.NewActorSystem(actor.WithLoggerFactory(quietLogger))
	defer sys.Shutdown()
	silent, theirs := tcpPair(t)
	defer theirs.Close()
	c := Spawn(sys.Root, sys.Root, NewStreamTransport(silent, Limits{}), Options{Peer: "silent", Role: "server", LingerTimeout: 50 * time.Millisecond})
	waitFor(t, func() bool { return readers.parked() == 1 })
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close of a connection whose reader is parked did not return")
	}
	if readers.parked() != 0 {
		t.Fatalf("%d readers parked after Close", readers.parked())
	}

	resetting, theirs2 := tcpPair(t)
	c2 := Spawn(sys.Root, sys.Root, NewStreamTransport(resetting, Limits{}), Options{Peer: "resetting", Role: "server"})
	waitFor(t, func() bool { return readers.parked() == 1 })
	_ = theirs2.(*net.TCPConn).SetLinger(0)
	_ = theirs2.Close() // a reset
	select {
	case <-c2.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("a peer's reset did not wake the parked reader")
	}
	if r, ok := c2.Err().(supervisor.TransportError); !ok || !strings.Contains(r.Error(), "reset") {
		t.Errorf("after the peer's reset: %v (%T), want a TransportError that says reset", c2.Err(), c2.Err())
	}
	waitFor(t, func() bool { return readers.parked() == 0 && pollers() == 0 })
}
