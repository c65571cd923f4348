package tracing_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	"capnproto.org/go/capnp/v3/schemas"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/vatactor/vatactor/interop"
	"github.com/vatactor/vatactor/tracing"
)

func TestSpanName(t *testing.T) {
	for _, c := range []struct {
		m    capnp.Method
		want string
	}{
		{capnp.Method{InterfaceID: 1, MethodID: 2, InterfaceName: "calculator.capnp:Calculator", MethodName: "evaluate"}, "Calculator.evaluate"},
		{capnp.Method{InterfaceName: "Echo", MethodName: "echo"}, "Echo.echo"},
		{capnp.Method{InterfaceID: 0x97983392df35cc36, MethodID: 3}, "@0x97983392df35cc36/3"},
	} {
		if got := tracing.MethodName(c.m); got != c.want {
			t.Errorf("MethodName(%v) = %q, want %q", c.m, got, c.want)
		}
		want := c.want
		if c.m.MethodName == "" {
			want = tracing.UnknownMethodSpan // a peer's ids never name a span
		}
		if got := tracing.SpanName(c.m); got != want {
			t.Errorf("SpanName(%v) = %q, want %q", c.m, got, want)
		}
	}
}

// TestUnknownMethodsShareOneSpanName: calls of any number of unknown
// methods make one span name, with the ids the peer sent in attributes.
func TestUnknownMethodsShareOneSpanName(t *testing.T) {
	names := map[string]bool{}
	for id := range uint64(1000) {
		m := capnp.Method{InterfaceID: 0xabc0000 + id, MethodID: uint16(id)}
		names[tracing.SpanName(m)] = true
		var original, iface string
		for _, kv := range tracing.MethodAttributes(m) {
			switch kv.Key {
			case "rpc.method_original":
				original = kv.Value.AsString()
			case tracing.AttrInterfaceID:
				iface = kv.Value.AsString()
			}
		}
		if want := fmt.Sprintf("@%#x/%d", m.InterfaceID, m.MethodID); original != want || iface != fmt.Sprintf("%#x", m.InterfaceID) {
			t.Fatalf("method %v: rpc.method_original %q, interface id %q", m, original, iface)
		}
	}
	if len(names) != 1 || !names[tracing.UnknownMethodSpan] {
		t.Fatalf("1,000 unknown methods made span names %v", names)
	}
}

// TestNames: a named method's names are made once and found again by
// its ids, as an incoming call names it; the same ids under other names
// are named as their caller names them, and leave the registered names
// alone.
func TestNames(t *testing.T) {
	m := capnp.Method{InterfaceID: 0x5eed0001, MethodID: 4, InterfaceName: "store.capnp:Store", MethodName: "put"}
	n := tracing.Names(m)
	if n.Span != "Store.put" || n.Method != m {
		t.Fatalf("Names(%v) = %+v", m, n)
	}
	if again := tracing.Names(m); again != n {
		t.Error("a named method's names were made twice")
	}
	if byID := tracing.NamesByID(m.InterfaceID, m.MethodID); byID != n {
		t.Errorf("NamesByID = %+v, want the names Names made", byID)
	}
	other := m
	other.MethodName = "store"
	if got := tracing.Names(other); got.Span != "Store.store" {
		t.Errorf("other names for the same ids: span %q", got.Span)
	}
	if got := tracing.NamesByID(m.InterfaceID, m.MethodID); got != n {
		t.Errorf("after other names for the same ids, NamesByID = %+v", got)
	}
	unknown := tracing.NamesByID(0x5eed0002, 1)
	if unknown.Span != tracing.UnknownMethodSpan || unknown.Method.InterfaceName != "" {
		t.Errorf("unknown ids: %+v", unknown)
	}
	b := tracing.BootstrapNames
	if b.Span != tracing.BootstrapSpan || tracing.MethodName(b.Method) != "Bootstrap.bootstrap" {
		t.Errorf("BootstrapNames = %+v", b)
	}
	for _, kv := range b.Attrs {
		if kv.Key == "rpc.method" && kv.Value.AsString() != "Bootstrap.bootstrap" {
			t.Errorf("a Bootstrap's rpc.method = %q", kv.Value.AsString())
		}
	}
}

func TestStatusCode(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{nil, "OK"},
		{exc.New(exc.Failed, "", "x"), "FAILED"},
		{exc.New(exc.Overloaded, "", "x"), "OVERLOADED"},
		{fmt.Errorf("wrapped: %w", exc.New(exc.Disconnected, "", "x")), "DISCONNECTED"},
		{exc.New(exc.Unimplemented, "", "x"), "UNIMPLEMENTED"},
		{fmt.Errorf("call: %w", context.Canceled), "CANCELED"},
		{context.DeadlineExceeded, "DEADLINE_EXCEEDED"},
		{errors.New("plain"), "FAILED"},
	} {
		if got := tracing.StatusCode(c.err); got != c.want {
			t.Errorf("StatusCode(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}

func TestInjectExtract(t *testing.T) {
	if tp, ts := tracing.Inject(context.Background()); tp != "" || ts != "" {
		t.Errorf("no span: Inject = %q, %q", tp, ts)
	}
	ts, _ := trace.ParseTraceState("vendor=abc")
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1, 2, 3}, SpanID: trace.SpanID{4, 5}, TraceFlags: trace.FlagsSampled, TraceState: ts})
	tp, tst := tracing.Inject(trace.ContextWithSpanContext(context.Background(), sc))
	if want := "00-01020300000000000000000000000000-0405000000000000-01"; tp != want || tst != "vendor=abc" {
		t.Fatalf("Inject = %q, %q", tp, tst)
	}
	got := trace.SpanContextFromContext(tracing.Extract(context.Background(), tp, tst))
	if !got.IsRemote() || got.TraceID() != sc.TraceID() || got.SpanID() != sc.SpanID() || got.TraceState().String() != "vendor=abc" {
		t.Errorf("Extract = %+v", got)
	}
	for _, bad := range []string{"", "garbage", "00-00000000000000000000000000000000-0405000000000000-01"} {
		if trace.SpanContextFromContext(tracing.Extract(context.Background(), bad, "")).IsValid() {
			t.Errorf("Extract(%q) gave a valid span context", bad)
		}
	}
}

// TestLookupMethod: names come from RegisterMethods or, failing that,
// from capnp's schema registry.
func TestLookupMethod(t *testing.T) {
	const echoID, callbackID = interop.Echo_TypeID, interop.Callback_TypeID
	if m, ok := tracing.LookupMethod(0x1234, 0); ok || tracing.MethodName(m) != "@0x1234/0" {
		t.Errorf("unknown interface: %v %v", m, ok)
	}
	tracing.RegisterMethods(capnp.Method{InterfaceID: callbackID, MethodID: 0, InterfaceName: "interop.capnp:Callback", MethodName: "call"})
	if m, ok := tracing.LookupMethod(callbackID, 0); !ok || tracing.SpanName(m) != "Callback.call" {
		t.Errorf("registered: %v %v", m, ok)
	}
	interop.RegisterSchema(schemas.DefaultRegistry)
	m, ok := tracing.LookupMethod(echoID, 6)
	if !ok || m.InterfaceName != "interop.capnp:Echo" || m.MethodName != "wait" {
		t.Errorf("from the schema registry: %+v %v", m, ok)
	}
	if _, ok := tracing.LookupMethod(echoID, 99); ok {
		t.Error("a method the interface does not have was found")
	}
}

func TestNoop(t *testing.T) {
	for _, c := range []struct {
		name string
		tp   trace.TracerProvider
		want bool
	}{
		{"global before SetTracerProvider", nil, true},
		{"otel.GetTracerProvider", otel.GetTracerProvider(), true},
		{"noop.NewTracerProvider", noop.NewTracerProvider(), true},
		{"trace.NewNoopTracerProvider", trace.NewNoopTracerProvider(), true}, //nolint:staticcheck // still in use
		{"SDK that samples nothing", sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample())), false},
		{"SDK", sdktrace.NewTracerProvider(), false},
	} {
		if got := tracing.Noop(c.tp); got != c.want {
			t.Errorf("Noop(%s) = %v, want %v", c.name, got, c.want)
		}
	}
}

// TestPropagationMatchesOTel: the hand-written W3C header code says
// exactly what OpenTelemetry's TraceContext propagator says.
func TestPropagationMatchesOTel(t *testing.T) {
	var w3c propagation.TraceContext
	ts, _ := trace.ParseTraceState("a=1,b=2")
	for _, sc := range []trace.SpanContext{
		trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{0xab, 0xcd}, SpanID: trace.SpanID{0xef, 1}}),
		trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{15: 0xff}, SpanID: trace.SpanID{7: 0x10},
			TraceFlags: trace.FlagsSampled | 0x04, TraceState: ts}),
	} {
		ctx := trace.ContextWithSpanContext(context.Background(), sc)
		carrier := propagation.MapCarrier{}
		w3c.Inject(ctx, carrier)
		tp, tst := tracing.Inject(ctx)
		if tp != carrier.Get("traceparent") || tst != carrier.Get("tracestate") {
			t.Errorf("Inject = %q %q, OTel %q %q", tp, tst, carrier.Get("traceparent"), carrier.Get("tracestate"))
		}
	}
	for _, h := range []string{
		"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
		"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-09",
		"00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
		"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
		"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0g",
		"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-later",
		"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-",
	} {
		for _, state := range []string{"", "k=v", "bad state!"} {
			want := trace.SpanContextFromContext(w3c.Extract(context.Background(),
				propagation.MapCarrier{"traceparent": h, "tracestate": state}))
			got := trace.SpanContextFromContext(tracing.Extract(context.Background(), h, state))
			if !got.Equal(want) || got.IsRemote() != want.IsRemote() {
				t.Errorf("Extract(%q, %q) = %v, OTel %v", h, state, got, want)
			}
		}
	}
}
