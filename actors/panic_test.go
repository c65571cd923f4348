package actors_test

import (
	"context"
	"strings"
	"testing"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	"github.com/asynkron/protoactor-go/actor"

	"github.com/vatactor/vatactor/actors"
	"github.com/vatactor/vatactor/interop"
)

type panicky struct{ interop.EchoServer }

func (*panicky) Echo(context.Context, interop.Echo_echo) error { panic("bad input") }

// A panic inside a call answers that call with a "failed" exception; the
// process and the connection live on.
func TestPanicInCallAnswersFailed(t *testing.T) {
	impl := &panicky{EchoServer: *interop.NewEchoServer()}
	server := actors.Spawn(actors.Options{Bootstrap: actors.NewServer(interop.Echo_Methods(nil, impl), impl)})
	defer server.Stop()
	addr, err := server.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	client := actors.Spawn(actors.Options{})
	defer client.Stop()
	boot, _, err := client.Dial(context.Background(), "tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer boot.Release()
	e := interop.Echo(boot)
	for i := 0; i < 2; i++ {
		f, release := e.Echo(context.Background(), func(p interop.Echo_echo_Params) error { return p.SetText("x") })
		_, err := f.Struct()
		release()
		if exc.TypeOf(err) != exc.Failed || !strings.Contains(err.Error(), "panic in") {
			t.Fatalf("call %d: err = %v, want a failed exception naming the panic", i, err)
		}
	}
	// The connection still works.
	f, release := e.LiveCounters(context.Background(), nil)
	defer release()
	if _, err := f.Struct(); err != nil {
		t.Fatal(err)
	}
}

type panicActor struct{}

func (panicActor) Receive(ctx actor.Context) {
	if _, ok := ctx.Message().(*actors.Call); ok {
		panic("actor bug")
	}
}

func TestPanicInActorCapability(t *testing.T) {
	system := actors.QuietSystem()
	defer system.Shutdown()
	pid := system.Root.Spawn(actors.CapabilityProps(func() actor.Actor { return panicActor{} }))
	c := interop.Echo(actors.ActorClient(system, pid))
	defer capnp.Client(c).Release()
	f, release := c.Echo(context.Background(), func(p interop.Echo_echo_Params) error { return p.SetText("x") })
	defer release()
	if _, err := f.Struct(); exc.TypeOf(err) != exc.Failed || !strings.Contains(err.Error(), "actor bug") {
		t.Fatalf("err = %v, want failed exception naming the panic", err)
	}
}
