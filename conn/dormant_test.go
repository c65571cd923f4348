package conn

import (
	"context"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/server"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
	"github.com/asynkron/protoactor-go/actor"

	"github.com/vatactor/vatactor/supervisor"
)

// TestExportDormant: an export that is not a promise has no actor while
// the peer holds it, so an idle connection holding the peer's reference to
// its bootstrap holds no actor for it; the export's actor is spawned when
// it stops, and however the export ends (the peer's Release, our
// graceful end, protoactor stopping the connection) our reference to the
// capability is released.
func TestExportDormant(t *testing.T) {
	ends := map[string]func(h *harness){
		"peer release": func(h *harness) {
			before := actorCount(h.sys)
			h.send(func(m rpccp.Message) error {
				r, err := m.NewRelease()
				r.SetId(0)
				r.SetReferenceCount(1)
				return err
			})
			waitFor(h.t, func() bool { return h.c.Stats().Exports == 0 })
			waitFor(h.t, func() bool { return actorCount(h.sys) == before }) // woken, then stopped
			h.c.Close()
		},
		"graceful end": func(h *harness) {
			if _, err := h.c.Shutdown(context.Background(), supervisor.Epitaph{Code: supervisor.OK}); err != nil {
				h.t.Error(err)
			}
		},
		"protoactor stop": func(h *harness) { h.sys.Root.Stop(h.c.PID()) },
		"close":           func(h *harness) { h.c.Close() },
		"graceful end hurried": func(h *harness) {
			ctx, cancel := context.WithCancel(context.Background())
			cancel() // hurries every step
			_, _ = h.c.Shutdown(ctx, supervisor.Epitaph{Code: supervisor.OK})
		},
	}
	for name, end := range ends {
		t.Run(name, func(t *testing.T) {
			shut := make(chan struct{})
			t.Cleanup(func() { // after the harness's own, which releases the harness's reference
				select {
				case <-shut:
				case <-time.After(5 * time.Second):
					t.Error("the bootstrap capability was never shut down: a reference leaked")
				}
			})
			h := newHarness(t, capnp.NewClient(server.New(nil, nil, onShutdown(func() { close(shut) }))))
			waitFor(t, func() bool { return actorCount(h.sys) > 0 })
			before := actorCount(h.sys)
			h.peerBootstrap(0)
			h.peerFinish(0)
			waitFor(t, func() bool { return h.c.Stats().Exports == 1 && h.c.Stats().Answers == 0 })
			if n := actorCount(h.sys); n != before {
				t.Fatalf("%d actors with the bootstrap exported, %d before: the export has an actor while idle", n, before)
			}
			end(h)
			select {
			case <-h.c.Done():
			case <-time.After(10 * time.Second):
				t.Fatal("the connection did not end")
			}
			select {
			case <-shut:
				t.Fatal("shut down while the harness holds a reference")
			default:
			}
		})
	}
}

// onShutdown is a server.Shutdowner.
type onShutdown func()

func (f onShutdown) Shutdown() { f() }

// actorCount counts the actors alive in sys.
func actorCount(sys *actor.ActorSystem) int {
	n := 0
	for _, m := range sys.ProcessRegistry.LocalPIDs.LocalPIDs {
		n += m.Count()
	}
	return n
}
