package actors_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
	"github.com/asynkron/protoactor-go/actor"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/vatactor/vatactor/actors"
	"github.com/vatactor/vatactor/conn"
	"github.com/vatactor/vatactor/interop"
	"github.com/vatactor/vatactor/supervisor"
	"github.com/vatactor/vatactor/tracing"
	"github.com/vatactor/vatactor/tracing/spantree"
)

// traced is one vat's tracer provider, recording into a recorder shared
// by both vats of a test. Each vat has its own provider (and service
// name), so a parent/child link between them can only come over the wire.
type traced struct {
	rec *spantree.Recorder
	tps map[string]*sdktrace.TracerProvider
}

func newTraced(t *testing.T, services ...string) *traced {
	tr := &traced{rec: spantree.New(), tps: map[string]*sdktrace.TracerProvider{}}
	for _, svc := range services {
		tr.tps[svc] = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(tr.rec),
			sdktrace.WithResource(resource.NewSchemaless(semconv.ServiceName(svc))))
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("spans:\n%s", spantree.Format(tr.rec.Spans()))
		}
	})
	return tr
}

// tracedPair is a server vat serving Echo and a client vat dialed to it
// over loopback TCP, each with its own tracer provider.
func tracedPair(t *testing.T, tr *traced) (client, server *actors.Vat, echo interop.Echo, cc *conn.Conn, root trace.Span, ctx context.Context) {
	t.Helper()
	server, addr := serveEcho(t, actors.Options{TracerProvider: tr.tps["server"]})
	client = actors.Spawn(actors.Options{Name: "client", TracerProvider: tr.tps["client"]})
	t.Cleanup(client.Stop)
	ctx, root = tr.tps["client"].Tracer("test").Start(context.Background(), "work")
	boot, cc, err := client.Dial(ctx, "tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(boot.Release)
	return client, server, interop.Echo(boot), cc, root, ctx
}

func spanNamed(t *testing.T, spans []sdktrace.ReadOnlySpan, name string, kind trace.SpanKind, service string) sdktrace.ReadOnlySpan {
	t.Helper()
	var found []sdktrace.ReadOnlySpan
	for _, s := range spans {
		if s.Name() == name && s.SpanKind() == kind && serviceOf(s) == service {
			found = append(found, s)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d spans named %q kind %v in %s, want 1", len(found), name, kind, service)
	}
	return found[0]
}

func serviceOf(s sdktrace.ReadOnlySpan) string {
	v, _ := s.Resource().Set().Value(semconv.ServiceNameKey)
	return v.AsString()
}

func attr(s sdktrace.ReadOnlySpan, k attribute.Key) attribute.Value {
	for _, kv := range s.Attributes() {
		if kv.Key == k {
			return kv.Value
		}
	}
	return attribute.Value{}
}

// assertChild checks that child's parent is parent, in the same trace.
func assertChild(t *testing.T, child, parent sdktrace.ReadOnlySpan) {
	t.Helper()
	if child.SpanContext().TraceID() != parent.SpanContext().TraceID() {
		t.Errorf("%s [%s] is in trace %s, %s [%s] in %s", child.Name(), serviceOf(child), child.SpanContext().TraceID(),
			parent.Name(), serviceOf(parent), parent.SpanContext().TraceID())
	}
	if child.Parent().SpanID() != parent.SpanContext().SpanID() {
		t.Errorf("%s [%s] has parent %s, want %s [%s] %s", child.Name(), serviceOf(child), child.Parent().SpanID(),
			parent.Name(), serviceOf(parent), parent.SpanContext().SpanID())
	}
}

func assertCall(t *testing.T, s sdktrace.ReadOnlySpan, method, status string) {
	t.Helper()
	if got := attr(s, semconv.RPCSystemNameKey).AsString(); got != "capnp" {
		t.Errorf("%s: rpc.system.name = %q", s.Name(), got)
	}
	if got := attr(s, semconv.RPCMethodKey).AsString(); got != method || s.Name() != method {
		t.Errorf("%s: rpc.method = %q, want %q, the span's name", s.Name(), got, method)
	}
	if attr(s, semconv.NetworkPeerAddressKey).AsString() != "127.0.0.1" || attr(s, semconv.NetworkPeerPortKey).AsInt64() == 0 {
		t.Errorf("%s: network.peer.* = %v:%v", s.Name(), attr(s, semconv.NetworkPeerAddressKey), attr(s, semconv.NetworkPeerPortKey))
	}
	if s.SpanKind() == trace.SpanKindClient && (attr(s, semconv.ServerAddressKey).AsString() != "127.0.0.1" || attr(s, semconv.ServerPortKey).AsInt64() == 0) {
		t.Errorf("%s: a client span without server.address and server.port", s.Name())
	}
	if got := attr(s, semconv.RPCResponseStatusCodeKey).AsString(); got != status {
		t.Errorf("%s: rpc.response.status_code = %q, want %q", s.Name(), got, status)
	}
	errType := attr(s, semconv.ErrorTypeKey).AsString()
	if status == "OK" && (errType != "" || s.Status().Code == codes.Error) {
		t.Errorf("%s: succeeded but error.type = %q, status %v", s.Name(), errType, s.Status())
	}
	if status != "OK" && (errType != status || s.Status().Code != codes.Error) {
		t.Errorf("%s: failed with %s but error.type = %q, status %v", s.Name(), status, errType, s.Status())
	}
}

// TestTraceCall: the caller's span → client span → server span in the
// other vat, one trace, across a real TCP connection.
func TestTraceCall(t *testing.T) {
	tr := newTraced(t, "client", "server")
	_, _, echo, _, root, ctx := tracedPair(t, tr)
	if got, err := echoText(ctx, echo, "hi"); err != nil || got != "hi" {
		t.Fatalf("echo = %q, %v", got, err)
	}
	root.End()
	spans := tr.rec.Spans()
	work := spanNamed(t, spans, "work", trace.SpanKindInternal, "client")
	cs := spanNamed(t, spans, "Echo.echo", trace.SpanKindClient, "client")
	ss := spanNamed(t, spans, "Echo.echo", trace.SpanKindServer, "server")
	assertChild(t, cs, work)
	assertChild(t, ss, cs)
	if !ss.Parent().IsRemote() {
		t.Error("server span's parent is not marked remote")
	}
	assertCall(t, cs, "Echo.echo", "OK")
	assertCall(t, ss, "Echo.echo", "OK")
	if !attr(cs, tracing.AttrQuestionID).AsBool() && attr(cs, tracing.AttrQuestionID).Type() != attribute.INT64 {
		t.Error("client span has no question id")
	}
	// The bootstrap made by Dial is traced the same way.
	assertChild(t, spanNamed(t, spans, tracing.BootstrapSpan, trace.SpanKindServer, "server"),
		spanNamed(t, spans, tracing.BootstrapSpan, trace.SpanKindClient, "client"))
}

// TestTracePipelinedCall: a call on a capability in an answer that has
// not arrived is its own client span, marked pipelined, with its server
// span as child.
func TestTracePipelinedCall(t *testing.T) {
	tr := newTraced(t, "client", "server")
	// The server's self() waits until the pipelined call has been made,
	// so that it is pipelined for certain (a fast server could answer
	// before the call is made, and the call would go to the answer).
	gate := make(chan struct{})
	srv := &gatedSelf{EchoServer: interop.NewEchoServer(), gate: gate}
	server := actors.Spawn(actors.Options{Name: "server", TracerProvider: tr.tps["server"],
		Bootstrap: actors.NewServer(interop.Echo_Methods(nil, srv), srv)})
	t.Cleanup(server.Stop)
	addr, err := server.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	client := actors.Spawn(actors.Options{Name: "client", TracerProvider: tr.tps["client"]})
	t.Cleanup(client.Stop)
	ctx, root := tr.tps["client"].Tracer("test").Start(context.Background(), "work")
	boot, _, err := client.Dial(ctx, "tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(boot.Release)
	echo := interop.Echo(boot)
	self, release := echo.Self(ctx, func(p interop.Echo_self_Params) error { return p.SetTag("a:") })
	defer release()
	f, rel := self.Echo().Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText("x") })
	defer rel()
	close(gate)
	if res, err := f.Struct(); err != nil {
		t.Fatalf("pipelined echo: %v", err)
	} else if got, _ := res.Text(); got != "a:x" {
		t.Fatalf("pipelined echo = %q", got)
	}
	if _, err := self.Struct(); err != nil { // its client span ends before it resolves
		t.Fatal(err)
	}
	root.End()
	spans := tr.rec.Spans()
	work := spanNamed(t, spans, "work", trace.SpanKindInternal, "client")
	selfC := spanNamed(t, spans, "Echo.self", trace.SpanKindClient, "client")
	var pipelined, served []sdktrace.ReadOnlySpan
	for _, s := range spans {
		if s.Name() == "Echo.echo" && s.SpanKind() == trace.SpanKindClient {
			pipelined = append(pipelined, s)
		}
		if s.Name() == "Echo.echo" && s.SpanKind() == trace.SpanKindServer {
			served = append(served, s)
		}
	}
	if len(pipelined) != 1 || len(served) != 1 {
		t.Fatalf("%d client and %d server Echo.echo spans, want 1 each", len(pipelined), len(served))
	}
	assertChild(t, selfC, work)
	assertChild(t, pipelined[0], work)
	assertChild(t, served[0], pipelined[0])
	if !attr(pipelined[0], tracing.AttrPipelined).AsBool() {
		t.Error("pipelined call's span is not marked capnp.pipelined")
	}
	if attr(selfC, tracing.AttrPipelined).AsBool() {
		t.Error("direct call's span is marked pipelined")
	}
}

// gatedSelf is an Echo whose self() waits for gate.
type gatedSelf struct {
	*interop.EchoServer
	gate chan struct{}
}

func (g *gatedSelf) Self(ctx context.Context, call interop.Echo_self) error {
	select {
	case <-g.gate:
	case <-ctx.Done():
		return ctx.Err()
	}
	return g.EchoServer.Self(ctx, call)
}

// callbackActor implements Callback as a protoactor actor; inside, it
// starts a span from the call's context.
type callbackActor struct {
	tp      trace.TracerProvider
	headers chan string
}

func (a *callbackActor) Receive(ctx actor.Context) {
	call, ok := ctx.Message().(*actors.Call)
	if !ok {
		return
	}
	a.headers <- ctx.MessageHeader().Get("traceparent")
	_, span := a.tp.Tracer("test").Start(call.Context(), "inside actor")
	text, _ := interop.Callback_call_Params(call.Args()).Text()
	res, err := call.AllocResults(capnp.ObjectSize{PointerCount: 1})
	if err == nil {
		err = interop.Callback_call_Results(res).SetText("called back: " + text)
	}
	// The work's span ends before the Return: ended after it, it could
	// still be open when the caller, answered, reads the spans.
	span.End()
	call.Return(err)
}

// TestTraceCallback: the server calls back into the client while it
// answers; the callback is implemented by an actor. One trace:
// callBack (client) → callBack (server) → Callback.call (client, in the
// server vat) → Callback.call (server, in the client vat) → the span the
// actor started.
func TestTraceCallback(t *testing.T) {
	tr := newTraced(t, "client", "server")
	client, _, echo, _, root, ctx := tracedPair(t, tr)
	cba := &callbackActor{tp: tr.tps["client"], headers: make(chan string, 1)}
	pid := client.System().Root.Spawn(actors.CapabilityProps(func() actor.Actor { return cba }))
	defer client.System().Root.Stop(pid)
	cb := interop.Callback(actors.ActorClient(client.System(), pid))
	f, release := echo.CallBack(ctx, func(p interop.Echo_callBack_Params) error {
		if err := p.SetText("ping"); err != nil {
			return err
		}
		return p.SetCallback(cb.AddRef())
	})
	res, err := f.Struct()
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := res.Text(); got != "called back: ping" {
		t.Fatalf("callBack = %q", got)
	}
	release()
	capnp.Client(cb).Release()
	root.End()
	spans := tr.rec.Spans()
	work := spanNamed(t, spans, "work", trace.SpanKindInternal, "client")
	c1 := spanNamed(t, spans, "Echo.callBack", trace.SpanKindClient, "client")
	s1 := spanNamed(t, spans, "Echo.callBack", trace.SpanKindServer, "server")
	c2 := spanNamed(t, spans, "Callback.call", trace.SpanKindClient, "server")
	s2 := spanNamed(t, spans, "Callback.call", trace.SpanKindServer, "client")
	inside := spanNamed(t, spans, "inside actor", trace.SpanKindInternal, "client")
	assertChild(t, c1, work)
	assertChild(t, s1, c1)
	assertChild(t, c2, s1)
	assertChild(t, s2, c2)
	assertChild(t, inside, s2)
	assertCall(t, s2, "Callback.call", "OK")
	tp, ts := tracing.Inject(trace.ContextWithSpanContext(context.Background(), s2.SpanContext()))
	if got := <-cba.headers; got != tp || ts != "" {
		t.Errorf("actor message header traceparent = %q, want the answer span's %q", got, tp)
	}
	if !slices.ContainsFunc(s2.Events(), func(e sdktrace.Event) bool { return e.Name == "actor.received" }) {
		t.Error("answer span has no actor.received event")
	}
}

// TestTraceException: a call that fails records its exception type as
// status code and error.type, on both sides.
func TestTraceException(t *testing.T) {
	tr := newTraced(t, "client", "server")
	_, _, echo, _, root, ctx := tracedPair(t, tr)
	f, release := echo.Fail(ctx, func(p interop.Echo_fail_Params) error {
		p.SetType(1) // overloaded
		return p.SetReason("too busy")
	})
	_, err := f.Struct()
	release()
	if err == nil {
		t.Fatal("fail succeeded")
	}
	root.End()
	spans := tr.rec.Spans()
	cs := spanNamed(t, spans, "Echo.fail", trace.SpanKindClient, "client")
	ss := spanNamed(t, spans, "Echo.fail", trace.SpanKindServer, "server")
	assertChild(t, ss, cs)
	assertCall(t, cs, "Echo.fail", "OVERLOADED")
	assertCall(t, ss, "Echo.fail", "OVERLOADED")
	if !strings.Contains(cs.Status().Description, "too busy") {
		t.Errorf("client span status %q does not carry the reason", cs.Status().Description)
	}
}

// TestTraceShutdown: a graceful shutdown is a shutdown span under the
// connection span with one child per step, in order; the accepted
// connection's span is a child of the dialer's, so both ends are in the
// caller's trace.
func TestTraceShutdown(t *testing.T) {
	tr := newTraced(t, "client", "server")
	_, server, echo, cc, root, ctx := tracedPair(t, tr)
	if _, err := echoText(ctx, echo, "before"); err != nil {
		t.Fatal(err)
	}
	sc := server.Conns()[0]
	if _, err := cc.Shutdown(ctx, supervisor.Epitaph{Code: supervisor.Unavailable, Message: "maintenance"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sc.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("server connection did not end")
	}
	root.End()
	spans := tr.rec.Spans()
	work := spanNamed(t, spans, "work", trace.SpanKindInternal, "client")
	cconn := spanNamed(t, spans, tracing.ConnSpan, trace.SpanKindInternal, "client")
	sconn := spanNamed(t, spans, tracing.ConnSpan, trace.SpanKindInternal, "server")
	assertChild(t, cconn, work)
	assertChild(t, sconn, cconn)
	if got := attr(cconn, tracing.AttrEpitaphCode).AsString(); got != "UNAVAILABLE" {
		t.Errorf("client connection span epitaph = %q", got)
	}
	if got := attr(sconn, tracing.AttrReasonKind).AsString(); got != "PeerEpitaph" {
		t.Errorf("server connection span reason kind = %q, want PeerEpitaph", got)
	}
	for _, side := range []struct {
		conn sdktrace.ReadOnlySpan
		svc  string
	}{{cconn, "client"}, {sconn, "server"}} {
		sd := spanNamed(t, spans, tracing.ShutdownSpan, trace.SpanKindInternal, side.svc)
		assertChild(t, sd, side.conn)
		var steps []string
		var prevStart, prevEnd time.Time
		for _, s := range spans {
			if s.Parent().SpanID() != sd.SpanContext().SpanID() {
				continue
			}
			steps = append(steps, s.Name())
			if s.StartTime().Before(prevEnd) {
				t.Errorf("%s: step %s starts before the previous one ended", side.svc, s.Name())
			}
			if !prevStart.IsZero() && s.StartTime().Sub(prevStart) < time.Microsecond {
				// Jaeger orders spans by their start, to the microsecond.
				t.Errorf("%s: step %s starts within a microsecond of the one before", side.svc, s.Name())
			}
			prevStart, prevEnd = s.StartTime(), s.EndTime()
		}
		want := []string{"drain", "stopQuestions", "stopExports", "releaseImports", "sendEpitaph", "closeWrite", "linger", "closeSocket"}
		if !slices.Equal(steps, want) {
			t.Errorf("%s shutdown steps = %v, want %v", side.svc, steps, want)
		}
		if sd.EndTime().After(side.conn.EndTime()) {
			t.Errorf("%s: shutdown span ends after the connection span", side.svc)
		}
	}
	events := func(s sdktrace.ReadOnlySpan) (names []string) {
		for _, e := range s.Events() {
			names = append(names, e.Name)
		}
		return names
	}
	for _, want := range []string{"up", "bootstrap", "busy", "epitaph.sent", "eof.sent", "eof.received"} {
		if !slices.Contains(events(cconn), want) {
			t.Errorf("client connection span events %v lack %q", events(cconn), want)
		}
	}
	for _, want := range []string{"up", "bootstrap", "epitaph.received", "eof.sent"} {
		if !slices.Contains(events(sconn), want) {
			t.Errorf("server connection span events %v lack %q", events(sconn), want)
		}
	}
}

// TestTraceInterop: with trace context in the sidecar of every Call, the
// C++ reference and go-capnp's rpc.Conn answer as before (the whole echo
// suite), our client spans record their outcomes, and the calls that
// go-capnp makes to our vat, which carry no trace context, start traces
// of their own linked to the connection span.
func TestTraceInterop(t *testing.T) {
	servers := map[string]func(t *testing.T) string{
		"cxx": func(t *testing.T) string { addr, _ := startCxxServer(t, cxxPeer(t)); return addr },
		"gocapnp": func(t *testing.T) string {
			addr, served := startGoCapnpServer(t)
			t.Cleanup(func() {
				if rc := <-served; rc != nil {
					rc.Close()
				}
			})
			return addr
		},
	}
	for name, start := range servers {
		t.Run(name+"Server", func(t *testing.T) {
			addr := start(t)
			tr := newTraced(t, "client")
			client := actors.Spawn(actors.Options{Name: "client", TracerProvider: tr.tps["client"]})
			defer client.Stop()
			ctx, root := tr.tps["client"].Tracer("test").Start(context.Background(), "work")
			boot, _, err := client.Dial(ctx, "tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			runEchoSuite(t, interop.Echo(boot))
			boot.Release()
			root.End()
			calls := 0
			for _, s := range tr.rec.Spans() {
				if s.SpanKind() != trace.SpanKindClient {
					continue
				}
				calls++
				if s.Parent().TraceID() != root.SpanContext().TraceID() && s.Parent().IsValid() {
					t.Errorf("%s is in another trace", s.Name())
				}
				if attr(s, semconv.RPCResponseStatusCodeKey).AsString() == "" {
					t.Errorf("%s has no status code", s.Name())
				}
			}
			if calls < 10 {
				t.Errorf("%d client spans, want the suite's calls", calls)
			}
		})
	}
	t.Run("gocapnpClient", func(t *testing.T) {
		tr := newTraced(t, "server")
		server, addr := serveEcho(t, actors.Options{TracerProvider: tr.tps["server"]})
		rc, echo := dialGoCapnp(t, addr)
		if got, err := echoText(context.Background(), echo, "plain"); err != nil || got != "plain" {
			t.Fatalf("echo = %q, %v", got, err)
		}
		capnp.Client(echo).Release()
		rc.Close()
		sc := server.Conns()
		for _, c := range sc {
			<-c.Done()
		}
		spans := tr.rec.Spans()
		ss := spanNamed(t, spans, "Echo.echo", trace.SpanKindServer, "server")
		cs := spanNamed(t, spans, tracing.ConnSpan, trace.SpanKindInternal, "server")
		if ss.Parent().IsValid() {
			t.Error("a call with no trace context has a parent")
		}
		if links := ss.Links(); len(links) != 1 || links[0].SpanContext.SpanID() != cs.SpanContext().SpanID() {
			t.Errorf("server span links = %v, want the connection span", links)
		}
		if cs.Parent().IsValid() {
			t.Error("connection span of a peer that names none has a parent")
		}
	})
}

// TestTraceSupervisedDial: the context given to DialSupervised parents
// the connection spans its redials make, and its span records each step
// with its attempt.
func TestTraceSupervisedDial(t *testing.T) {
	tr := newTraced(t, "client")
	server, addr := echoServerVat(t, "127.0.0.1:0")
	defer server.Stop()
	client := actors.Spawn(actors.Options{Name: "client", TracerProvider: tr.tps["client"]})
	ctx, root := tr.tps["client"].Tracer("test").Start(context.Background(), "supervised")
	log := newRedialLog()
	rd, err := client.DialSupervised(ctx, "tcp", addr, actors.RedialOptions{OnEvent: log.add})
	if err != nil {
		t.Fatal(err)
	}
	log.next(t, "connected")
	rd.Close()
	client.Stop()
	root.End()

	spans := tr.rec.Spans()
	var rootSpan, connSpan sdktrace.ReadOnlySpan
	for _, s := range spans {
		switch s.Name() {
		case "supervised":
			rootSpan = s
		case tracing.ConnSpan:
			connSpan = s
		}
	}
	if rootSpan == nil || connSpan == nil {
		t.Fatalf("spans: %v", spantree.Format(spans))
	}
	if connSpan.Parent().SpanID() != rootSpan.SpanContext().SpanID() {
		t.Errorf("the connection span's parent is not DialSupervised's context")
	}
	var steps []string
	for _, e := range rootSpan.Events() {
		if e.Name != "redial" {
			continue
		}
		var step string
		var attempt int64
		for _, kv := range e.Attributes {
			switch kv.Key {
			case tracing.AttrRedialStep:
				step = kv.Value.AsString()
			case tracing.AttrRedialAttempt:
				attempt = kv.Value.AsInt64()
			}
		}
		steps = append(steps, fmt.Sprintf("%s#%d", step, attempt))
	}
	if len(steps) < 2 || steps[0] != "dialing#1" || steps[1] != "connected#1" {
		t.Errorf("redial events %v, want dialing#1, connected#1, …", steps)
	}
}
