// Package sampletrace gives the samples their tracer providers: exporting
// over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set (Jaeger, a collector),
// else recording in memory and printing a compact span tree at the end.
package sampletrace

import (
	"context"
	"errors"
	"fmt"
	"io"

	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/vatactor/vatactor/tracing/otlp"
	"github.com/vatactor/vatactor/tracing/spantree"
)

// Tracing is one tracer provider per service of a sample.
type Tracing struct {
	rec       *spantree.Recorder // nil when exporting
	providers map[string]*sdktrace.TracerProvider
	order     []string
}

// Start makes a provider for each service name.
func Start(ctx context.Context, services ...string) (*Tracing, error) {
	t := &Tracing{providers: map[string]*sdktrace.TracerProvider{}}
	if !otlp.Configured() {
		t.rec = spantree.New()
	}
	for _, svc := range services {
		var tp *sdktrace.TracerProvider
		if t.rec == nil {
			var err error
			if tp, err = otlp.Setup(ctx, svc); err != nil {
				return nil, err
			}
		} else {
			tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(t.rec),
				sdktrace.WithResource(resource.NewSchemaless(semconv.ServiceName(svc))))
		}
		t.providers[svc] = tp
		t.order = append(t.order, svc)
	}
	return t, nil
}

// Provider is the tracer provider of service.
func (t *Tracing) Provider(service string) *sdktrace.TracerProvider { return t.providers[service] }

// Exporting reports whether spans go to an OTLP endpoint.
func (t *Tracing) Exporting() bool { return t.rec == nil }

// Finish flushes and shuts down every provider, then prints the span tree
// to w when spans were kept in memory.
func (t *Tracing) Finish(ctx context.Context, w io.Writer) error {
	var errs []error
	for _, svc := range t.order {
		if err := t.providers[svc].Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("flushing the spans of %s: %w", svc, err))
		}
	}
	if t.rec != nil {
		fmt.Fprintln(w, "\nspans (set OTEL_EXPORTER_OTLP_ENDPOINT to send them to Jaeger instead):")
		errs = append(errs, t.rec.Write(w))
	}
	return errors.Join(errs...)
}
