package conn

import (
	"context"
	"runtime"
	"testing"

	"capnproto.org/go/capnp/v3"
	"github.com/asynkron/protoactor-go/actor"

	"github.com/vatactor/vatactor/interop"
)

// echoPairs are pairs of connections over TCP: each server serves boot,
// each client holds its bootstrap as an Echo.
type echoPairs struct {
	conns  []*Conn // server, client, server, client, …
	echoes []interop.Echo
}

// openEchoPairs opens n pairs in sys.
func openEchoPairs(t *testing.T, sys *actor.ActorSystem, boot capnp.Client, n int) *echoPairs {
	t.Helper()
	p := &echoPairs{}
	for range n {
		ours, theirs := tcpPair(t)
		p.conns = append(p.conns,
			Spawn(sys.Root, sys.Root, NewStreamTransport(theirs, Limits{}), Options{Bootstrap: boot, Peer: "client", Role: "server"}),
			Spawn(sys.Root, sys.Root, NewStreamTransport(ours, Limits{}), Options{Peer: "server", Role: "client"}))
		p.echoes = append(p.echoes, interop.Echo(p.conns[len(p.conns)-1].Bootstrap(context.Background())))
	}
	return p
}

// newEchoPairs opens n pairs in an actor system of their own, serving
// an echo server; the system stops when the test ends.
func newEchoPairs(t *testing.T, n int) *echoPairs {
	t.Helper()
	sys := actor.NewActorSystem(actor.WithLoggerFactory(quietLogger))
	t.Cleanup(sys.Shutdown)
	boot := capnp.Client(interop.NewEchoServer().Client(interop.PlainServer))
	t.Cleanup(boot.Release)
	return openEchoPairs(t, sys, boot, n)
}

// echo makes one echo call of text on pair i and checks what comes back.
func (p *echoPairs) echo(t *testing.T, i int, text string) {
	t.Helper()
	f, rel := p.echoes[i].Echo(context.Background(), func(p interop.Echo_echo_Params) error { return p.SetText(text) })
	defer rel()
	s, err := f.Struct()
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Text(); got != text {
		t.Fatalf("echo of %q: %q", text, got)
	}
}

// close releases the echoes and closes every connection.
func (p *echoPairs) close() {
	for _, e := range p.echoes {
		e.Release()
	}
	for _, c := range p.conns {
		_ = c.Close()
	}
}

// liveHeap is the live heap after two collections (the pools' victims
// too).
func liveHeap() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}
