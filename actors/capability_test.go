package actors_test

import (
	"context"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/server"
	"github.com/asynkron/protoactor-go/actor"

	"github.com/vatactor/vatactor/actors"
	"github.com/vatactor/vatactor/interop"
)

// TestActorClientNamesAndResults: a call that names its method by ids
// only (as a peer's does) reaches the actor with the names of the methods
// ActorClient was given; AllocResults sizes results from the generated
// constructor.
func TestActorClientNamesAndResults(t *testing.T) {
	const iface = 0xfa57c0de00000001 // an interface no other test knows
	fake := server.Method{Method: capnp.Method{InterfaceID: iface, MethodID: 3, InterfaceName: "fake.capnp:Fake", MethodName: "poke"}}
	seen := make(chan capnp.Method, 1)
	system := actors.QuietSystem()
	defer system.Shutdown()
	pid := system.Root.Spawn(actors.CapabilityProps(func() actor.Actor {
		return actor.ReceiveFunc(func(ctx actor.Context) {
			call, ok := ctx.Message().(*actors.Call)
			if !ok {
				return
			}
			seen <- call.Method
			res, err := actors.AllocResults(call, interop.NewEcho_echo_Results)
			if err == nil {
				err = res.SetText("poked")
			}
			call.Return(err)
		})
	}))
	client := actors.ActorClient(system, pid, fake)
	defer client.Release()
	ans, release := client.SendCall(context.Background(), capnp.Send{Method: capnp.Method{InterfaceID: iface, MethodID: 3}})
	defer release()
	ptr, err := ans.Struct()
	if err != nil {
		t.Fatal(err)
	}
	if m := <-seen; m.InterfaceName != "fake.capnp:Fake" || m.MethodName != "poke" {
		t.Errorf("the actor saw %+v, want the names ActorClient was given", m)
	}
	if got, _ := interop.Echo_echo_Results(ptr).Text(); got != "poked" {
		t.Errorf("results %q", got)
	}
	if sz := ptr.Size(); sz != (capnp.ObjectSize{PointerCount: 1}) {
		t.Errorf("results of size %v, want the generated type's (one pointer)", sz)
	}
}

// rendezvous's echo() waits until two calls are inside it at once.
type rendezvous struct {
	*interop.EchoServer
	inside chan struct{}
}

func (r *rendezvous) Echo(ctx context.Context, call interop.Echo_echo) error {
	select { // the first call waits here for a second one inside
	case r.inside <- struct{}{}:
	case <-r.inside:
	case <-ctx.Done():
		return ctx.Err()
	}
	return r.EchoServer.Echo(ctx, call)
}

// TestConcurrentServer: with actors.NewConcurrentServer, a capability's
// calls run at once (two calls meet inside the method); with
// actors.NewServer, one after another (the first waits in vain for a
// second and gives up at its deadline).
func TestConcurrentServer(t *testing.T) {
	for _, concurrent := range []bool{true, false} {
		impl := &rendezvous{EchoServer: interop.NewEchoServer(), inside: make(chan struct{})}
		build := actors.NewServer
		if concurrent {
			build = actors.NewConcurrentServer
		}
		e := interop.Echo(build(interop.Echo_Methods(nil, impl), impl))
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		f1, r1 := e.Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText("a") })
		f2, r2 := e.Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText("b") })
		_, err1 := f1.Struct()
		_, err2 := f2.Struct()
		if concurrent && (err1 != nil || err2 != nil) {
			t.Errorf("concurrent: %v, %v: the calls did not meet", err1, err2)
		}
		if !concurrent && err1 == nil {
			t.Errorf("in order: the calls met inside the method")
		}
		cancel()
		r1()
		r2()
		e.Release()
	}
}
