package actors_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	"capnproto.org/go/capnp/v3/rpc"

	"github.com/vatactor/vatactor/actors"
	"github.com/vatactor/vatactor/conn"
	"github.com/vatactor/vatactor/interop"
)

// runEchoSuite makes every kind of call the interop tests require on an
// Echo capability, whichever engine serves it and whichever makes the calls.
func runEchoSuite(t *testing.T, e interop.Echo) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	t.Run("plain call", func(t *testing.T) {
		f, release := e.Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText("hello") })
		defer release()
		res, err := f.Struct()
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := res.Text(); got != "hello" {
			t.Fatalf("echo = %q, want hello", got)
		}
	})

	t.Run("pipelined two levels deep", func(t *testing.T) {
		// self("a").echo.self("b").echo.echo("x") — the second and third
		// calls are made on answers that have not arrived.
		f1, r1 := e.Self(ctx, func(p interop.Echo_self_Params) error { return p.SetTag("a:") })
		defer r1()
		f2, r2 := f1.Echo().Self(ctx, func(p interop.Echo_self_Params) error { return p.SetTag("b:") })
		defer r2()
		f3, r3 := f2.Echo().Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText("x") })
		defer r3()
		res, err := f3.Struct()
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := res.Text(); got != "a:b:x" {
			t.Fatalf("pipelined echo = %q, want a:b:x", got)
		}
	})

	t.Run("capability in results", func(t *testing.T) {
		f, release := e.Self(ctx, func(p interop.Echo_self_Params) error { return p.SetTag("r:") })
		defer release()
		res, err := f.Struct()
		if err != nil {
			t.Fatal(err)
		}
		child := res.Echo().AddRef()
		defer child.Release()
		for i := 0; i < 3; i++ {
			f, rel := child.Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText("y") })
			r, err := f.Struct()
			if err != nil {
				rel()
				t.Fatal(err)
			}
			if got, _ := r.Text(); got != "r:y" {
				t.Fatalf("child echo = %q", got)
			}
			rel()
		}
	})

	t.Run("capability in params called back", func(t *testing.T) {
		cb := interop.Callback_ServerToClient(interop.CallbackFunc(func(s string) (string, error) {
			return strings.ToUpper(s) + "!", nil
		}))
		defer cb.Release()
		f, release := e.CallBack(ctx, func(p interop.Echo_callBack_Params) error {
			if err := p.SetText("ping"); err != nil {
				return err
			}
			return p.SetCallback(cb.AddRef())
		})
		defer release()
		res, err := f.Struct()
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := res.Text(); got != "PING!" {
			t.Fatalf("callBack = %q, want PING!", got)
		}
	})

	t.Run("exception types", func(t *testing.T) {
		for _, typ := range []exc.Type{exc.Failed, exc.Overloaded, exc.Disconnected, exc.Unimplemented} {
			f, release := e.Fail(ctx, func(p interop.Echo_fail_Params) error {
				p.SetType(uint8(typ))
				return p.SetReason("boom " + typ.String())
			})
			_, err := f.Struct()
			release()
			if err == nil {
				t.Fatalf("fail(%v) returned no error", typ)
			}
			if got := exc.TypeOf(err); got != typ {
				t.Errorf("fail(%v): error type %v (%v)", typ, got, err)
			}
			if !strings.Contains(err.Error(), "boom "+typ.String()) {
				t.Errorf("fail(%v): error %q lost the reason", typ, err)
			}
		}
	})

	t.Run("release observed by the server", func(t *testing.T) {
		live := func() uint32 {
			f, release := e.LiveCounters(ctx, nil)
			defer release()
			r, err := f.Struct()
			if err != nil {
				t.Fatal(err)
			}
			return r.N()
		}
		before := live()
		f, release := e.NewCounter(ctx, nil)
		res, err := f.Struct()
		if err != nil {
			t.Fatal(err)
		}
		counter := res.Counter().AddRef()
		release()
		for want := uint32(1); want <= 2; want++ {
			nf, nrel := counter.Next(ctx, nil)
			nr, err := nf.Struct()
			if err != nil {
				t.Fatal(err)
			}
			if nr.N() != want {
				t.Fatalf("next = %d, want %d", nr.N(), want)
			}
			nrel()
		}
		if got := live(); got != before+1 {
			t.Fatalf("live counters = %d while held, want %d", got, before+1)
		}
		counter.Release()
		deadline := time.Now().Add(10 * time.Second)
		for live() != before {
			if time.Now().After(deadline) {
				t.Fatalf("counter not released on the server: live = %d, want %d", live(), before)
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// serveEcho starts a vat named "server" serving Echo (opts' Name is set
// here, and Bootstrap unless given: a plain EchoServer) on loopback TCP;
// it stops when the test ends.
func serveEcho(t *testing.T, opts actors.Options) (*actors.Vat, net.Addr) {
	t.Helper()
	opts.Name = "server"
	if !opts.Bootstrap.IsValid() {
		opts.Bootstrap = capnp.Client(interop.NewEchoServer().Client(actors.NewServer))
	}
	server := actors.Spawn(opts)
	t.Cleanup(server.Stop)
	addr, err := server.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return server, addr
}

// startGoCapnpServer serves Echo with go-capnp's rpc.Conn to the first
// connection on a loopback listener; served yields that rpc.Conn (closed
// without one if the listener closes first).
func startGoCapnpServer(t *testing.T) (addr string, served <-chan *rpc.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	ch := make(chan *rpc.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			close(ch)
			return
		}
		ch <- rpc.NewConn(rpc.NewStreamTransport(c), &rpc.Options{
			BootstrapClient: capnp.Client(interop.NewEchoServer().Client(interop.PlainServer)),
		})
	}()
	return l.Addr().String(), ch
}

// dialGoCapnp connects go-capnp's rpc.Conn to addr and asks for Echo.
func dialGoCapnp(t *testing.T, addr net.Addr) (*rpc.Conn, interop.Echo) {
	t.Helper()
	nc, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	rc := rpc.NewConn(rpc.NewStreamTransport(nc), nil)
	return rc, interop.Echo(rc.Bootstrap(context.Background()))
}

// TestInteropVatToVat: our client vat against our server vat, over TCP.
func TestInteropVatToVat(t *testing.T) {
	_, addr := serveEcho(t, actors.Options{})
	client := actors.Spawn(actors.Options{Name: "client"})
	defer client.Stop()
	boot, _, err := client.Dial(context.Background(), "tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer boot.Release()
	runEchoSuite(t, interop.Echo(boot))
}

// TestInteropGoCapnpServer: our client vat against go-capnp's rpc.Conn
// serving Echo, over TCP.
func TestInteropGoCapnpServer(t *testing.T) {
	addr, served := startGoCapnpServer(t)
	client := actors.Spawn(actors.Options{Name: "client"})
	boot, _, err := client.Dial(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	runEchoSuite(t, interop.Echo(boot))
	boot.Release()
	client.Stop()
	if rc := <-served; rc != nil {
		select {
		case <-rc.Done():
		case <-time.After(5 * time.Second):
			t.Error("go-capnp server did not see the connection end")
		}
		rc.Close()
	}
}

// TestInteropGoCapnpClient: go-capnp's rpc.Conn as the client of our
// server vat, over TCP.
func TestInteropGoCapnpClient(t *testing.T) {
	_, addr := serveEcho(t, actors.Options{})
	rc, echo := dialGoCapnp(t, addr)
	runEchoSuite(t, echo)
	capnp.Client(echo).Release()
	if err := rc.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		t.Logf("go-capnp close: %v", err)
	}
}

// TestLargeFramesAlone: a frame with a segment too large for the
// actor's own write goes to the writer goroutine, and goes even when no
// other frame follows it (a call, then nothing: each side has one large
// frame to write, the Call and the Return).
func TestLargeFramesAlone(t *testing.T) {
	_, addr := serveEcho(t, actors.Options{})
	e, _ := dialEcho(t, addr.String())
	big := strings.Repeat("z", 256<<10)
	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		got, err := echoText(ctx, e, big)
		cancel()
		if err != nil || got != big {
			t.Fatalf("large echo %d: %d bytes back, %v", i, len(got), err)
		}
		time.Sleep(50 * time.Millisecond) // the writers go idle between calls
	}
}

// TestInlineWriteAfterWriterDeadline: the writer goroutine's write arms
// a write deadline (WriteTimeout); once the goroutine is done and the
// actor writes inline again, that deadline must not be left to fail the
// inline write when it passes (it did: "raw-write: i/o timeout" on a
// healthy connection, WriteTimeout after a large frame).
func TestInlineWriteAfterWriterDeadline(t *testing.T) {
	opts := conn.Options{WriteTimeout: 100 * time.Millisecond}
	_, addr := serveEcho(t, actors.Options{Conn: opts})
	client := actors.Spawn(actors.Options{Name: "client", Conn: opts})
	t.Cleanup(client.Stop)
	boot, _, err := client.Dial(context.Background(), "tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(boot.Release)
	e := interop.Echo(boot)
	ctx := context.Background()
	big := strings.Repeat("w", 256<<10) // written by the writer goroutines
	if got, err := echoText(ctx, e, big); err != nil || got != big {
		t.Fatalf("large echo: %d bytes, %v", len(got), err)
	}
	time.Sleep(3 * opts.WriteTimeout) // past the deadline that write armed
	for i := range 3 {                // small frames: written inline
		if got, err := echoText(ctx, e, "small"); err != nil || got != "small" {
			t.Fatalf("small echo %d after the writer's deadline: %q, %v", i, got, err)
		}
	}
}
