package actors_test

import (
	"context"
	"fmt"
	"time"

	"capnproto.org/go/capnp/v3"

	"github.com/vatactor/vatactor/actors"
	"github.com/vatactor/vatactor/interop"
	"github.com/vatactor/vatactor/supervisor"
)

// A server vat listens on loopback TCP with an Echo capability as its
// bootstrap; generated code's methods served through NewServer.
func ExampleVat_Listen() {
	server := actors.Spawn(actors.Options{Name: "server",
		Bootstrap: capnp.Client(interop.NewEchoServer().Client(actors.NewServer))})
	defer server.Stop()
	addr, err := server.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("listening:", addr.Network())
	// Output: listening: tcp
}

// A client vat dials a server and calls its bootstrap capability with the
// generated client code.
func ExampleVat_Dial() {
	server := actors.Spawn(actors.Options{Bootstrap: capnp.Client(interop.NewEchoServer().Client(actors.NewServer))})
	defer server.Stop()
	addr, _ := server.Listen("tcp", "127.0.0.1:0")

	client := actors.Spawn(actors.Options{Name: "client"})
	defer client.Stop()
	ctx := context.Background()
	boot, _, err := client.Dial(ctx, "tcp", addr.String())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer boot.Release()
	f, release := interop.Echo(boot).Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText("hello") })
	defer release()
	res, err := f.Struct()
	if err != nil {
		fmt.Println(err)
		return
	}
	text, _ := res.Text()
	fmt.Println(text)
	// Output: hello
}

// A graceful shutdown: calls in flight finish, then each connection ends
// with the epitaph, which the peer reads as the reason of its end.
func ExampleVat_Shutdown() {
	server := actors.Spawn(actors.Options{Bootstrap: capnp.Client(interop.NewEchoServer().Client(actors.NewServer))})
	addr, _ := server.Listen("tcp", "127.0.0.1:0")
	client := actors.Spawn(actors.Options{})
	defer client.Stop()
	boot, cn, err := client.Dial(context.Background(), "tcp", addr.String())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer boot.Release()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rep, err := server.Shutdown(ctx, supervisor.Epitaph{Code: supervisor.Unavailable, Message: "upgrading"})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("server:", rep.Conns[0].Reason)
	<-cn.Done()
	fmt.Println("client:", cn.Err(), "expected:", cn.Err().Expected())
	// Output:
	// server: closed locally (epitaph UNAVAILABLE: upgrading)
	// client: peer closed with epitaph UNAVAILABLE: upgrading expected: false
}

// A supervised client: one stable capability whose calls go to the
// current connection, redialed with backoff when it ends.
func ExampleVat_DialSupervised() {
	server := actors.Spawn(actors.Options{Bootstrap: capnp.Client(interop.NewEchoServer().Client(actors.NewServer))})
	defer server.Stop()
	addr, _ := server.Listen("tcp", "127.0.0.1:0")

	client := actors.Spawn(actors.Options{})
	defer client.Stop()
	r, err := client.DialSupervised(context.Background(), "tcp", addr.String(), actors.RedialOptions{WaitDuringOutage: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()
	echo := interop.Echo(r.Client())
	defer echo.Release()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	f, release := echo.Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText("through the redialer") })
	defer release()
	res, err := f.Struct()
	if err != nil {
		fmt.Println(err)
		return
	}
	text, _ := res.Text()
	fmt.Println(text)
	// Output: through the redialer
}
