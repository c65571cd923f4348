package conn

import (
	"context"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
	"github.com/asynkron/protoactor-go/actor"

	"github.com/vatactor/vatactor/interop"
)

// TestIdleAfterBurst: a burst of calls in flight leaves little of itself
// with the connections once they are idle again. The live heap of pairs
// of connections over TCP grows by about 38 KB a pair over a burst of 64
// calls at once on each (before the storage was lent and the tables
// rebuilt: 248 KB): what stays is protoactor's (its registry of actors,
// process-wide, about 20 KB a pair; each connection actor's set of
// children, 3 KB), the mailboxes' queue slots and the question tables'
// slots (about 9 KB a pair in all). The registry grows with any burst:
// the same burst runs first on other connections.
func TestIdleAfterBurst(t *testing.T) {
	const pairs, burst = 20, 64
	sys := actor.NewActorSystem(actor.WithLoggerFactory(quietLogger))
	defer sys.Shutdown()
	boot := capnp.Client(interop.NewEchoServer().Client(interop.PlainServer))
	defer boot.Release()
	ctx := context.Background()

	live := 0 // the connections open in the process
	calls := func(p *echoPairs, n int) {
		type pending struct {
			f   interop.Echo_echo_Results_Future
			rel capnp.ReleaseFunc
		}
		var all []pending
		for _, e := range p.echoes {
			for range n {
				f, rel := e.Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText("burst") })
				all = append(all, pending{f, rel})
			}
		}
		for _, c := range all {
			if _, err := c.f.Struct(); err != nil {
				t.Fatal(err)
			}
			c.rel()
		}
		// Idle again: every Finish in but the bootstrap's (the client
		// keeps its question, and the server its answer, while the client
		// holds the capability).
		waitFor(t, func() bool {
			for _, c := range p.conns {
				if st := c.Stats(); st.Questions > 1 || st.Answers > 1 {
					return false
				}
			}
			return true
		})
		// And at rest: what a rest gives back is given back (every
		// connection of the process is p's or one of the others at rest).
		waitFor(t, func() bool { return restingReaders() == live })
		time.Sleep(10 * time.Millisecond) // writers' exits
	}
	warm := openEchoPairs(t, sys, boot, pairs)
	live = 2 * pairs
	calls(warm, burst)
	measured := openEchoPairs(t, sys, boot, pairs)
	defer measured.close()
	live = 4 * pairs
	calls(measured, 1) // every connection has made a call: its first storage is made
	warm.close()
	live = 2 * pairs
	time.Sleep(100 * time.Millisecond)
	before := liveHeap()
	calls(measured, burst)
	after := liveHeap()
	perPair := (after - before) / pairs
	t.Logf("live heap before the burst %d B, after %d B: %+d B a pair of connections", before, after, perPair)
	if perPair > 64<<10 {
		t.Errorf("after a burst of %d calls each pair of idle connections holds %d bytes more than before", burst, perPair)
	}
}
