package main

import (
	"bytes"
	"context"
	"net"
	"runtime/trace"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"

	"github.com/vatactor/vatactor/actors"
	"github.com/vatactor/vatactor/conn"
	"github.com/vatactor/vatactor/interop"
	"github.com/vatactor/vatactor/supervisor"
)

// TestMeasureEchoOverTCP traces sequential echo calls between two
// connections over loopback TCP and finds both readers' hand-offs: the
// server's reader delivering each Call, the client's settling each Return.
func TestMeasureEchoOverTCP(t *testing.T) {
	if trace.IsEnabled() {
		t.Skip("an execution trace is already running (go test -trace)")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	sys := actors.QuietSystem()
	defer sys.Shutdown()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	cc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sc, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	boot := interop.NewEchoServer().Client(interop.PlainServer)
	server := conn.Spawn(sys.Root, sys.Root, conn.NewStreamTransport(sc, conn.Limits{}), conn.Options{Bootstrap: capnp.Client(boot), Role: "server"})
	boot.Release() // the connection holds its own reference
	client := conn.Spawn(sys.Root, sys.Root, conn.NewStreamTransport(cc, conn.Limits{}), conn.Options{Role: "client"})
	echo := interop.Echo(client.Bootstrap(context.Background()))

	const calls = 300
	var buf bytes.Buffer
	if err := trace.Start(&buf); err != nil {
		t.Fatal(err)
	}
	for range calls {
		f, release := echo.Echo(context.Background(), func(p interop.Echo_echo_Params) error { return p.SetText("hello") })
		_, err := f.Struct()
		release()
		if err != nil {
			trace.Stop()
			t.Fatal(err)
		}
	}
	trace.Stop()
	echo.Release()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := client.Shutdown(ctx, supervisor.Epitaph{Code: supervisor.OK}); err != nil {
		t.Fatal(err)
	}
	<-server.Done()

	found, err := measure(&buf)
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	for _, h := range found {
		counts[h.by] += len(h.times)
		for _, d := range h.times {
			if d < 0 {
				t.Fatalf("a negative hand-off time: %v", d)
			}
		}
	}
	// Most calls make one of each. Not all: a read that brings a Finish
	// ahead of the next Call, or finds the server's goroutine already
	// running, hands nothing on first.
	for _, by := range []string{"(*state).deliver", "(*state).settle"} {
		if counts[by] < calls/2 {
			t.Errorf("%d hand-offs by %s for %d calls (all: %v)", counts[by], by, calls, counts)
		}
	}
}
