package conn

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"sync"
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

// TestConnectionsSpawnedAtOnce: connection actors share one Props, whose
// producers take the state of the spawn under way (spawnConn); spawned
// at once from many goroutines and two actor systems, every connection
// still gets its own actor and mailbox, and answers its own calls.
func TestConnectionsSpawnedAtOnce(t *testing.T) {
	const spawners, pairsEach = 8, 4
	boot := capnp.Client(interop.NewEchoServer().Client(interop.PlainServer))
	defer boot.Release()
	var systems [2]*actor.ActorSystem
	for i := range systems {
		systems[i] = actor.NewActorSystem(actor.WithLoggerFactory(quietLogger))
		defer systems[i].Shutdown()
	}
	type pair struct{ ours, theirs net.Conn }
	sockets := make([][]pair, spawners)
	for g := range sockets {
		for range pairsEach {
			ours, theirs := tcpPair(t)
			sockets[g] = append(sockets[g], pair{ours, theirs})
		}
	}
	all := make([]echoPairs, spawners)
	var wg sync.WaitGroup
	for g := range spawners {
		wg.Go(func() {
			sys := systems[g%len(systems)]
			for _, s := range sockets[g] {
				all[g].conns = append(all[g].conns,
					Spawn(sys.Root, sys.Root, NewStreamTransport(s.theirs, Limits{}), Options{Bootstrap: boot, Peer: "client", Role: "server"}),
					Spawn(sys.Root, sys.Root, NewStreamTransport(s.ours, Limits{}), Options{Peer: "server", Role: "client"}))
				all[g].echoes = append(all[g].echoes, interop.Echo(all[g].conns[len(all[g].conns)-1].Bootstrap(context.Background())))
			}
		})
	}
	wg.Wait()
	pids := map[string]bool{} // by system, as each system numbers its own
	mailboxes := map[any]bool{}
	for g := range all {
		defer all[g].close()
		for i, c := range all[g].conns {
			pid := c.PID()
			key := fmt.Sprintf("%d %v", g%len(systems), pid)
			if pid == nil || pids[key] || c.mailbox == nil || mailboxes[c.mailbox] {
				t.Fatalf("connection %d of spawner %d: PID %v, mailbox %p: not its own", i, g, pid, c.mailbox)
			}
			pids[key], mailboxes[c.mailbox] = true, true
		}
		for i := range all[g].echoes {
			all[g].echo(t, i, fmt.Sprintf("spawner %d pair %d", g, i))
		}
	}
}
