package conn

import (
	"context"
	"runtime"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
	"github.com/asynkron/protoactor-go/actor"

	"github.com/vatactor/vatactor/interop"
)

// TestIdleConnectionBudget keeps what an idle connection holds: pairs of
// connections over TCP, each client holding its bootstrap and having made
// one call, then left alone past their rest. The live heap they add
// (objects only: goroutine stacks and the heap's partly used spans are not
// counted, so the figure is steady from run to run: 17,944–18,005 B in
// four runs, one with -race) is about 18 KB a pair (server and client,
// protoactor's share included); the bench's idle figure counts the
// server's side with its stack and spans (bench/README.md). The budget is
// there to catch what would hold a buffer, an actor or a map per idle
// connection again: an actor per bootstrap export, as before dormant
// exports, makes it 20.2 KB.
func TestIdleConnectionBudget(t *testing.T) {
	const pairs = 100
	const budget = 19 << 10 // a pair
	sys := actor.NewActorSystem(actor.WithLoggerFactory(quietLogger))
	defer sys.Shutdown()
	boot := capnp.Client(interop.NewEchoServer().Client(interop.PlainServer))
	defer boot.Release()
	ctx := context.Background()
	live := func() int64 {
		runtime.GC()
		runtime.GC() // the pools' victims too
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return int64(m.HeapAlloc)
	}
	open := func(n int) ([]*Conn, []interop.Echo) {
		var conns []*Conn
		var echoes []interop.Echo
		for range n {
			ours, theirs := tcpPair(t)
			conns = append(conns,
				Spawn(sys.Root, sys.Root, NewStreamTransport(theirs, Limits{}), Options{Bootstrap: boot, Peer: "client", Role: "server"}),
				Spawn(sys.Root, sys.Root, NewStreamTransport(ours, Limits{}), Options{Peer: "server", Role: "client"}))
			e := interop.Echo(conns[len(conns)-1].Bootstrap(ctx))
			f, rel := e.Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText("once") })
			if _, err := f.Struct(); err != nil {
				t.Fatal(err)
			}
			rel()
			echoes = append(echoes, e)
		}
		return conns, echoes
	}
	closeAll := func(conns []*Conn, echoes []interop.Echo) {
		for _, e := range echoes {
			e.Release()
		}
		for _, c := range conns {
			_ = c.Close()
		}
	}
	// The process's own first costs (pools, the registry's growth) come
	// with a first set, closed before the measured one opens.
	closeAll(open(pairs))
	time.Sleep(100 * time.Millisecond)
	before := live()
	conns, echoes := open(pairs)
	defer closeAll(conns, echoes)
	time.Sleep(4 * restDelay) // every connection rests
	after := live()
	perPair := (after - before) / pairs
	t.Logf("live heap %d B before, %d B with %d idle pairs: %d B a pair of connections", before, after, pairs, perPair)
	if perPair > budget {
		t.Errorf("a pair of idle connections holds %d bytes of live heap, budget %d", perPair, budget)
	}
}
