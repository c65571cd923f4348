package tracing

import (
	"context"

	"go.opentelemetry.io/otel/propagation"
)

// The sidecar always speaks W3C Trace Context, whatever the process's
// global propagator is: it is part of the wire format.
var w3c propagation.TraceContext

// carrier is a TextMapCarrier with exactly the two W3C fields.
type carrier struct{ traceparent, tracestate string }

func (c *carrier) Get(key string) string {
	switch key {
	case "traceparent":
		return c.traceparent
	case "tracestate":
		return c.tracestate
	}
	return ""
}

func (c *carrier) Set(key, value string) {
	switch key {
	case "traceparent":
		c.traceparent = value
	case "tracestate":
		c.tracestate = value
	}
}

func (c *carrier) Keys() []string { return []string{"traceparent", "tracestate"} }

// Inject returns the W3C traceparent and tracestate of the span in ctx,
// or empty strings when ctx has no valid span context.
func Inject(ctx context.Context) (traceparent, tracestate string) {
	var c carrier
	w3c.Inject(ctx, &c)
	return c.traceparent, c.tracestate
}

// Extract returns ctx with the remote span context that traceparent and
// tracestate describe; ctx unchanged when traceparent is empty or invalid.
func Extract(ctx context.Context, traceparent, tracestate string) context.Context {
	if traceparent == "" {
		return ctx
	}
	return w3c.Extract(ctx, &carrier{traceparent: traceparent, tracestate: tracestate})
}
