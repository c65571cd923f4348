package main

import (
	"context"
	"testing"

	"capnproto.org/go/capnp/v3"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/vatactor/vatactor/actors"
	"github.com/vatactor/vatactor/interop"
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
