// Package otlp sets up OpenTelemetry trace export over OTLP from the
// standard environment variables, for samples and for programs that want
// the usual behaviour without writing it. The library itself never
// creates exporters: it takes whatever TracerProvider it is given.
//
// The variables read (the OpenTelemetry SDK's own names):
//
//   - OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT:
//     where to send spans; unset, Configured reports false and the caller
//     picks another default.
//   - OTEL_EXPORTER_OTLP_PROTOCOL (or …_TRACES_PROTOCOL): "http/protobuf"
//     (the default, port 4318) or "grpc" (port 4317).
//   - OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES: the resource; the
//     service name given to Setup applies when OTEL_SERVICE_NAME is unset.
//   - OTEL_TRACES_SAMPLER, OTEL_EXPORTER_OTLP_HEADERS, …_TIMEOUT,
//     …_INSECURE and the rest, as the SDK and exporters define them.
package otlp

import (
	"context"
	"fmt"
	"os"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// Configured reports whether the environment names an OTLP endpoint.
func Configured() bool {
	return os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
}

// Setup returns a tracer provider that batches spans to the OTLP endpoint
// the environment names, with service as its service.name unless
// OTEL_SERVICE_NAME says otherwise. The caller must call the provider's
// Shutdown before exiting: it flushes what is still queued.
func Setup(ctx context.Context, service string) (*sdktrace.TracerProvider, error) {
	if !Configured() {
		return nil, fmt.Errorf("otlp: no endpoint: set OTEL_EXPORTER_OTLP_ENDPOINT (e.g. http://127.0.0.1:4318)")
	}
	exp, err := newExporter(ctx)
	if err != nil {
		return nil, err
	}
	res, err := Resource(ctx, service)
	if err != nil {
		return nil, err
	}
	return sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res)), nil
}

// Resource describes this process as service: the SDK's defaults, then
// service, then OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME.
func Resource(ctx context.Context, service string) (*resource.Resource, error) {
	named, err := resource.Merge(resource.Default(), resource.NewSchemaless(semconv.ServiceName(service)))
	if err != nil {
		return nil, err
	}
	env, err := resource.New(ctx, resource.WithFromEnv())
	if err != nil {
		return nil, err
	}
	return resource.Merge(named, env)
}

func newExporter(ctx context.Context) (*otlptrace.Exporter, error) {
	proto := os.Getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if proto == "" {
		proto = os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	switch proto {
	case "", "http/protobuf":
		return otlptracehttp.New(ctx)
	case "grpc":
		return otlptracegrpc.New(ctx)
	}
	return nil, fmt.Errorf("otlp: OTEL_EXPORTER_OTLP_PROTOCOL=%q: want http/protobuf or grpc", proto)
}
