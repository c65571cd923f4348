// Command tracing shows one trace that starts in a client vat, crosses
// loopback TCP into a server vat and back, and ends with the connection's
// shutdown steps in order.
//
//	go run ./samples/tracing
//
// By default the spans are kept in memory and printed as a tree. With an
// OTLP endpoint they go there instead, for Jaeger:
//
//	OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 go run ./samples/tracing
//
// The client makes a plain call, a call pipelined on an answer that has not
// arrived, a call the server answers by calling back into the client (to a
// capability implemented by a protoactor actor, which starts a span of its
// own), and a call that fails; then it shuts the connection down with an
// epitaph. Each vat has its own tracer provider (service "vatactor-client"
// and "vatactor-server"): the only way the server's spans join the
// client's trace is the trace context in the frames.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"capnproto.org/go/capnp/v3"
	"github.com/asynkron/protoactor-go/actor"
	"go.opentelemetry.io/otel/trace"

	"github.com/vatactor/vatactor/actors"
	"github.com/vatactor/vatactor/interop"
	"github.com/vatactor/vatactor/samples/internal/sampletrace"
	"github.com/vatactor/vatactor/supervisor"
)

func main() {
	if _, err := run(os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "tracing:", err)
		os.Exit(1)
	}
}

// run runs the sample, printing to w, and returns its trace's id.
func run(w io.Writer) (trace.TraceID, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tr, err := sampletrace.Start(ctx, "vatactor-client", "vatactor-server")
	if err != nil {
		return trace.TraceID{}, err
	}
	clientTP, serverTP := tr.Provider("vatactor-client"), tr.Provider("vatactor-server")

	server := actors.Spawn(actors.Options{Name: "server", TracerProvider: serverTP,
		Bootstrap: capnp.Client(interop.NewEchoServer().Client(actors.NewServer))})
	defer server.Stop()
	addr, err := server.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return trace.TraceID{}, err
	}
	client := actors.Spawn(actors.Options{Name: "client", TracerProvider: clientTP})
	defer client.Stop()

	ctx, root := clientTP.Tracer("samples/tracing").Start(ctx, "sample")
	fmt.Fprintf(w, "trace %s\n", root.SpanContext().TraceID())
	boot, cn, err := client.Dial(ctx, "tcp", addr.String())
	if err != nil {
		return trace.TraceID{}, err
	}
	echo := interop.Echo(boot)
	if err := calls(ctx, w, client, echo, clientTP); err != nil {
		return trace.TraceID{}, err
	}
	boot.Release()

	serverConn := server.Conns()[0]
	rep, err := cn.Shutdown(ctx, supervisor.Epitaph{Code: supervisor.OK, Message: "sample done"})
	if err != nil {
		return trace.TraceID{}, err
	}
	<-serverConn.Done()
	fmt.Fprintf(w, "client connection: %v in %v\n", rep.Reason, rep.Lifetime.Round(time.Microsecond))
	fmt.Fprintf(w, "server connection: %v\n", serverConn.Err())
	root.End()

	client.Stop()
	server.Stop()
	if err := tr.Finish(context.Background(), w); err != nil {
		return trace.TraceID{}, err
	}
	if tr.Exporting() {
		fmt.Fprintf(w, "exported; in Jaeger: /trace/%s (services vatactor-client, vatactor-server)\n", root.SpanContext().TraceID())
	}
	return root.SpanContext().TraceID(), nil
}

// calls makes the sample's calls, each under ctx's span.
func calls(ctx context.Context, w io.Writer, client *actors.Vat, echo interop.Echo, tp trace.TracerProvider) error {
	// A plain call.
	f, release := echo.Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText("hello") })
	res, err := f.Struct()
	if err != nil {
		return fmt.Errorf("echo: %w", err)
	}
	text, _ := res.Text()
	release()
	fmt.Fprintf(w, "echo: %q\n", text)

	// A call pipelined on the answer of another.
	self, releaseSelf := echo.Self(ctx, func(p interop.Echo_self_Params) error { return p.SetTag("tagged:") })
	pf, releaseP := self.Echo().Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText("pipelined") })
	pres, err := pf.Struct()
	if err != nil {
		return fmt.Errorf("pipelined echo: %w", err)
	}
	text, _ = pres.Text()
	releaseP()
	if _, err := self.Struct(); err != nil {
		return fmt.Errorf("self: %w", err)
	}
	releaseSelf()
	fmt.Fprintf(w, "pipelined: %q\n", text)

	// A call answered by calling back into the client, where an actor
	// implements the callback.
	pid := client.System().Root.Spawn(actors.CapabilityProps(func() actor.Actor { return &callback{tp: tp} }))
	defer client.System().Root.Stop(pid)
	cb := interop.Callback(actors.ActorClient(client.System(), pid))
	cf, releaseC := echo.CallBack(ctx, func(p interop.Echo_callBack_Params) error {
		if err := p.SetText("ping"); err != nil {
			return err
		}
		return p.SetCallback(cb)
	})
	cres, err := cf.Struct()
	if err != nil {
		return fmt.Errorf("callBack: %w", err)
	}
	text, _ = cres.Text()
	releaseC()
	fmt.Fprintf(w, "callback: %q\n", text)

	// A call that fails: its spans carry the exception type.
	ff, releaseF := echo.Fail(ctx, func(p interop.Echo_fail_Params) error {
		p.SetType(1) // overloaded
		return p.SetReason("the sample asked for it")
	})
	_, err = ff.Struct()
	releaseF()
	fmt.Fprintf(w, "fail: %v\n", err)
	return nil
}

// callback implements Callback as an actor; its work is a span of its own,
// a child of the call's span.
type callback struct{ tp trace.TracerProvider }

func (c *callback) Receive(ctx actor.Context) {
	call, ok := ctx.Message().(*actors.Call)
	if !ok {
		return
	}
	_, span := c.tp.Tracer("samples/tracing").Start(call.Context(), "callback actor: compose reply")
	text, _ := interop.Callback_call_Params(call.Args()).Text()
	res, err := call.AllocResults(capnp.ObjectSize{PointerCount: 1})
	if err == nil {
		err = interop.Callback_call_Results(res).SetText("pong to " + text)
	}
	span.End()
	call.Return(err)
}
