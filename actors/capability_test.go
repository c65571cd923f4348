package actors_test

import (
	"context"
	"testing"

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
