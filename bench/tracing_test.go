package main

import (
	"context"
	"testing"

	"capnproto.org/go/capnp/v3"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/vatactor/vatactor/actors"
	"github.com/vatactor/vatactor/interop"
	"github.com/vatactor/vatactor/tracing"
)

// BenchmarkTracingPerCall measures one echo call between two vats over
// loopback TCP, with the same work under three tracer providers:
//
//   - untraced: OpenTelemetry's no-op provider;
//   - unsampled: the SDK with a sampler that records nothing, so only the
//     trace context is made and carried in the sidecar;
//   - sampled: the SDK recording every span (client, server) with no
//     exporter, i.e. the cost of recording without the cost of export.
//
// Compare the ns/op and allocs/op of the three in the same run:
//
//	go test -run XXX -bench TracingPerCall -benchmem -count 5 ./bench
func BenchmarkTracingPerCall(b *testing.B) {
	providers := []struct {
		name string
		tp   func() trace.TracerProvider
	}{
		{"untraced", func() trace.TracerProvider { return noop.NewTracerProvider() }},
		{"unsampled", func() trace.TracerProvider {
			return sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample()))
		}},
		{"sampled", func() trace.TracerProvider {
			return sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))
		}},
	}
	for _, p := range providers {
		b.Run(p.name, func(b *testing.B) {
			tp := p.tp()
			server := actors.Spawn(actors.Options{Name: "server", TracerProvider: tp,
				Bootstrap: capnp.Client(interop.NewEchoServer().Client(actors.NewServer))})
			defer server.Stop()
			addr, err := server.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			client := actors.Spawn(actors.Options{Name: "client", TracerProvider: tp})
			defer client.Stop()
			// The caller's own span, as in a traced service: the question
			// spans are its children.
			ctx, root := tp.Tracer("bench").Start(context.Background(), "bench")
			defer root.End()
			boot, _, err := client.Dial(ctx, "tcp", addr.String())
			if err != nil {
				b.Fatal(err)
			}
			defer boot.Release()
			echo := interop.Echo(boot)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				f, release := echo.Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText("hello") })
				if _, err := f.Struct(); err != nil {
					b.Fatal(err)
				}
				release()
			}
		})
	}
}

// BenchmarkSDKSpanPair is the floor that the OpenTelemetry SDK sets under
// BenchmarkTracingPerCall/sampled: what one traced call's two spans cost
// with no RPC at all — a client span started as a child of the caller's,
// its context carried as a traceparent and taken up again, a server span
// started under it, both given the attributes vatactor gives them and
// ended (every span recorded, no exporter). Subtract it from the sampled
// call's cost to see vatactor's own share.
//
//	go test -run XXX -bench 'TracingPerCall|SDKSpanPair' -benchmem ./bench
func BenchmarkSDKSpanPair(b *testing.B) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))
	tr := tp.Tracer("bench")
	ctx, root := tr.Start(context.Background(), "bench")
	defer root.End()
	m := capnp.Method{InterfaceID: 0xea26a5ee7d9a27c9, MethodID: 0, InterfaceName: "interop.capnp:Echo", MethodName: "echo"}
	clientAttrs := append(append([]attribute.KeyValue{}, tracing.MethodAttributes(m)...), tracing.PeerAttributes("client", "127.0.0.1:4000")...)
	serverAttrs := append(append([]attribute.KeyValue{}, tracing.MethodAttributes(m)...), tracing.PeerAttributes("server", "127.0.0.1:4001")...)
	serverAttrs = append(serverAttrs, tracing.AttrAnswerID.Int(1))
	client := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindClient)}
	server := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindServer)}
	b.ReportAllocs()
	for range b.N {
		cctx, cs := tr.Start(ctx, tracing.SpanName(m), client...)
		var tp tracing.TraceParent
		ts, _ := tracing.InjectInto(&tp, cctx)
		parent := tracing.Extract(context.Background(), string(tp[:]), ts)
		_, ss := tr.Start(parent, tracing.SpanName(m), server...)
		tracing.EndCall(ss, nil, serverAttrs...)
		tracing.EndCall(cs, nil, clientAttrs...)
	}
}
