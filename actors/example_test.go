package actors_test

import (
	"context"
	"fmt"

	"capnproto.org/go/capnp/v3"
	"github.com/asynkron/protoactor-go/actor"

	"github.com/vatactor/vatactor/actors"
	"github.com/vatactor/vatactor/interop"
)

// echoActor implements the Echo interface's echo method as a plain
// protoactor actor: each call arrives as an *actors.Call message.
type echoActor struct{ calls int }

func (a *echoActor) Receive(ctx actor.Context) {
	call, ok := ctx.Message().(*actors.Call)
	if !ok {
		return
	}
	if call.Method.MethodID != 0 { // only echo @0
		call.Return(capnp.Unimplemented("echoActor implements echo only"))
		return
	}
	a.calls++
	text, err := interop.Echo_echo_Params(call.Args()).Text()
	if err != nil {
		call.Return(err)
		return
	}
	res, err := actors.AllocResults(call, interop.NewEcho_echo_Results)
	if err != nil {
		call.Return(err)
		return
	}
	if err := res.SetText(fmt.Sprintf("%s (call %d)", text, a.calls)); err != nil {
		call.Return(err)
		return
	}
	call.Return(nil)
}

// An actor serves as a vat's bootstrap capability; a client vat calls it
// over loopback TCP with the generated client code.
func ExampleActorClient() {
	system := actors.QuietSystem()
	defer system.Shutdown()
	pid := system.Root.Spawn(actors.CapabilityProps(func() actor.Actor { return &echoActor{} }))

	server := actors.Spawn(actors.Options{System: system, Bootstrap: actors.ActorClient(system, pid, interop.Echo_Methods(nil, nil)...)})
	defer server.Stop()
	addr, _ := server.Listen("tcp", "127.0.0.1:0")

	client := actors.Spawn(actors.Options{System: system})
	defer client.Stop()
	boot, _, err := client.Dial(context.Background(), "tcp", addr.String())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer boot.Release()

	for _, word := range []string{"hello", "again"} {
		f, release := interop.Echo(boot).Echo(context.Background(), func(p interop.Echo_echo_Params) error {
			return p.SetText(word)
		})
		res, err := f.Struct()
		if err != nil {
			fmt.Println(err)
		} else {
			text, _ := res.Text()
			fmt.Println(text)
		}
		release()
	}
	// Output:
	// hello (call 1)
	// again (call 2)
}
