package conn

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
	"github.com/asynkron/protoactor-go/actor"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/vatactor/vatactor/interop"
	"github.com/vatactor/vatactor/metering"
	"github.com/vatactor/vatactor/supervisor"
	"github.com/vatactor/vatactor/tracing"
)

// observedEnd is one end of a connection with everything it reports
// recorded: spans, metrics, lifecycle events.
type observedEnd struct {
	c      *Conn
	spans  *tracetest.SpanRecorder
	reader *sdkmetric.ManualReader
	mu     sync.Mutex
	events []Event
	down   chan Down
}

func newObservedEnd(t *testing.T, sys *actor.ActorSystem, tr Transport, opts Options) *observedEnd {
	e := &observedEnd{spans: tracetest.NewSpanRecorder(), reader: sdkmetric.NewManualReader(), down: make(chan Down, 1)}
	opts.TracerProvider = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(e.spans))
	opts.MeterProvider = sdkmetric.NewMeterProvider(sdkmetric.WithReader(e.reader))
	opts.OnEvent = func(ev Event) {
		e.mu.Lock()
		e.events = append(e.events, ev)
		e.mu.Unlock()
		if d, ok := ev.(Down); ok {
			e.down <- d
		}
	}
	opts.LingerTimeout = time.Second
	e.c = Spawn(sys.Root, sys.Root, tr, opts)
	return e
}

// running counts the answers of method that the connection's snapshot
// shows running.
func (e *observedEnd) running(ctx context.Context, method string) (n int) {
	snap, _ := e.c.Inspect(ctx)
	for _, a := range snap.Answers {
		if a.Method == method && a.State == "running" {
			n++
		}
	}
	return n
}

func (e *observedEnd) spanNames() []string {
	var names []string
	for _, s := range e.spans.Ended() {
		names = append(names, s.Name())
	}
	return names
}

// metric returns the data points' sum of a counter or the count of a
// histogram named name.
func (e *observedEnd) metric(t *testing.T, name string) float64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := e.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	var total float64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					total += float64(p.Value)
				}
			case metricdata.Sum[float64]:
				for _, p := range d.DataPoints {
					total += p.Value
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					total += float64(p.Count)
				}
			}
		}
	}
	return total
}

// TestObservedConnection: two connections of ours over real TCP, traced
// and metered, make calls (one failing) and end with the client's
// graceful shutdown: each end's spans, metrics, events and snapshot say
// what happened, and the server reads the client's epitaph.
func TestObservedConnection(t *testing.T) {
	ours, theirs := tcpPair(t)
	sys := actor.NewActorSystem(actor.WithLoggerFactory(quietLogger))
	defer sys.Shutdown()
	boot := capnp.Client(interop.NewEchoServer().Client(interop.PlainServer))
	defer boot.Release()
	server := newObservedEnd(t, sys, NewStreamTransport(theirs, Limits{}), Options{Bootstrap: boot, Peer: "client", Role: "server"})
	client := newObservedEnd(t, sys, NewStreamTransport(ours, Limits{}), Options{Peer: "server", Role: "client"})

	ctx := context.Background()
	echo := interop.Echo(client.c.Bootstrap(ctx))
	for range 3 {
		res, rel := echo.Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText("hi") })
		if r, err := res.Struct(); err != nil {
			t.Fatal(err)
		} else if got, _ := r.Text(); got != "hi" {
			t.Fatalf("echo: %q", got)
		}
		rel()
	}
	failed, rel := echo.Fail(ctx, func(p interop.Echo_fail_Params) error { return p.SetReason("on purpose") })
	if _, err := failed.Struct(); err == nil || !strings.Contains(err.Error(), "on purpose") {
		t.Fatalf("fail: %v", err)
	}
	rel()

	// A call with a deadline tells the callee the time left.
	dctx, cancel := context.WithTimeout(ctx, time.Minute)
	res, rel := echo.Echo(dctx, func(p interop.Echo_echo_Params) error { return p.SetText("in time") })
	if _, err := res.Struct(); err != nil {
		t.Fatal(err)
	}
	rel()
	cancel()
	// A call queued on a local promise goes on to the import once the
	// promise is fulfilled with it (the import's Recv).
	promise, resolver := capnp.NewLocalPromise[interop.Echo]()
	queued, rel := promise.Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText("queued") })
	resolver.Fulfill(echo.AddRef())
	if r, err := queued.Struct(); err != nil {
		t.Fatal(err)
	} else if got, _ := r.Text(); got != "queued" {
		t.Fatalf("queued call: %q", got)
	}
	rel()
	promise.Release()

	// While a call waits: the client's snapshot shows it, and the import
	// it is on; the server's, the answer running.
	wctx, stopWaiting := context.WithCancel(ctx)
	waiting, rel := echo.Wait(wctx, func(p interop.Echo_wait_Params) error { p.SetMs(60_000); return nil })
	waitFor(t, func() bool { return server.running(ctx, "Echo.wait") == 1 })
	csnap, err := client.c.Inspect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(csnap.Questions) != 2 || csnap.Questions[1].Method != "Echo.wait" || csnap.Questions[1].State != "waiting" || len(csnap.Imports) != 1 {
		t.Errorf("client snapshot: questions %+v, imports %+v", csnap.Questions, csnap.Imports)
	}
	stopWaiting() // canceled: the client sends Finish, the server cancels the call
	if _, err := waiting.Struct(); !errors.Is(err, context.Canceled) {
		t.Errorf("a canceled call: %v, want context.Canceled", err)
	}
	rel()
	waitFor(t, func() bool { return server.running(ctx, "Echo.wait") == 0 })

	snap, err := server.c.Inspect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if snap.State != "open" || len(snap.Exports) != 1 || snap.Flow.MaxSendQueue != DefaultMaxSendQueue || snap.Flow.MaxRecvQueue != DefaultMaxRecvQueue {
		t.Errorf("server snapshot: state %q, %d exports, flow %+v", snap.State, len(snap.Exports), snap.Flow)
	}
	kept := echo.AddRef()
	defer kept.Release()
	echo.Release()

	rep, err := client.c.Shutdown(ctx, supervisor.Epitaph{Code: supervisor.OK, Message: "done here"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(phaseNamesOf(rep), "sendEpitaph") {
		t.Errorf("client's phases %v", phaseNamesOf(rep))
	}
	var sd Down
	select {
	case sd = <-server.down:
	case <-time.After(5 * time.Second):
		t.Fatal("the server's connection did not end")
	}
	var ep supervisor.PeerEpitaph
	if !errors.As(sd.Reason, &ep) || ep.Epitaph.Message != "done here" {
		t.Errorf("server's reason %v, want the client's epitaph", sd.Reason)
	}
	<-client.down
	late, rel := kept.Echo(ctx, nil)
	if _, err := late.Struct(); !errors.Is(err, ErrNotProcessed) {
		t.Errorf("a call once the connection has ended: %v, want ErrNotProcessed", err)
	}
	rel()

	// Spans: each call on both sides, the bootstrap, the connection and
	// the shutdown's phases.
	cs, ss := client.spanNames(), server.spanNames()
	t.Logf("client spans %v\nserver spans %v", cs, ss)
	for _, want := range []string{tracing.ConnSpan, tracing.ShutdownSpan, tracing.BootstrapSpan} {
		if !slices.Contains(cs, want) {
			t.Errorf("client spans %v lack %q", cs, want)
		}
	}
	if !slices.Contains(ss, tracing.ConnSpan) {
		t.Errorf("server spans %v lack %q", ss, tracing.ConnSpan)
	}
	calls := func(names []string) (n int) {
		for _, s := range names {
			if strings.Contains(s, "echo") || strings.Contains(s, "fail") || strings.Contains(s, "wait") {
				n++
			}
		}
		return n
	}
	if calls(cs) != 8 || calls(ss) != 7 { // the late call's span on the client only
		t.Errorf("call spans: client %d, server %d, want 8 and 7 (client %v, server %v)", calls(cs), calls(ss), cs, ss)
	}
	for _, sp := range client.spans.Ended() {
		if sp.Name() == tracing.ShutdownSpan && len(sp.Events())+countChildren(client.spans.Ended(), sp) == 0 {
			t.Errorf("the shutdown span has no steps")
		}
	}

	// Metrics: the calls on both sides, messages both ways.
	if n := client.metric(t, metering.ClientCallDuration); n != 8 { // the bootstrap, five echoes, a fail, a wait
		t.Errorf("client call durations: %v, want 8", n)
	}
	if n := server.metric(t, metering.ServerCallDuration); n != 8 {
		t.Errorf("server call durations: %v, want 8", n)
	}
	if client.metric(t, metering.MessagesSent) == 0 || server.metric(t, metering.MessagesReceived) == 0 {
		t.Error("no messages counted")
	}

	// Events: each has a one-line description naming its connection.
	client.mu.Lock()
	defer client.mu.Unlock()
	var kinds []string
	for _, ev := range client.events {
		if ev.Source() != client.c {
			t.Errorf("event %v from another connection", ev)
		}
		if s := ev.String(); s == "" || strings.Contains(s, "\n") {
			t.Errorf("event %T described as %q", ev, s)
		}
		kinds = append(kinds, strings.TrimPrefix(fmt.Sprintf("%T", ev), "conn."))
	}
	for _, want := range []string{"Up", "Busy", "PhaseDone", "Down"} {
		if !slices.Contains(kinds, want) {
			t.Errorf("client events %v lack %s", kinds, want)
		}
	}
}

func countChildren(spans []sdktrace.ReadOnlySpan, parent sdktrace.ReadOnlySpan) (n int) {
	for _, s := range spans {
		if s.Parent().SpanID() == parent.SpanContext().SpanID() {
			n++
		}
	}
	return n
}

// TestCallDurationsRecordedBeforeDown: a call's duration, measured in a
// turn whose Return went to the writer goroutine (so its recording waits
// for a turn that writes or for a timer), is recorded by the time the
// connection reports Down, the peer hanging up right after the call. (The
// end's own turns usually record it first; the sample's test, scraping
// as soon as Down is out, once found it missing under load.)
func TestCallDurationsRecordedBeforeDown(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	down := make(chan Down, 1)
	h := newHarnessWith(t, Options{
		Bootstrap:     capnp.Client(interop.NewEchoServer().Client(interop.PlainServer)),
		MeterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)),
		OnEvent: func(ev Event) {
			if d, ok := ev.(Down); ok {
				down <- d
			}
		},
	})
	h.peerBootstrap(0)
	h.send(callImport(0, 1, "hi"))
	h.expect("return q1")
	h.send(finishMsgQ(1))
	_ = h.peer.Close() // at once: well within the recording timer's delay
	<-down
	e := &observedEnd{reader: reader}
	if n := e.metric(t, metering.ServerCallDuration); n != 2 { // the bootstrap and the call
		t.Fatalf("%v server call durations recorded at Down, want 2", n)
	}
}
