package tracing

import (
	"context"
	"encoding/hex"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
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
// or empty strings when ctx has no valid span context. It writes the
// header itself (one string), as propagation.TraceContext would.
func Inject(ctx context.Context) (traceparent, tracestate string) {
	var b TraceParent
	tracestate, ok := InjectInto(&b, ctx)
	if !ok {
		return "", ""
	}
	return string(b[:]), tracestate
}

// TraceParent is a version-00 W3C traceparent header:
// "00-" trace id "-" span id "-" flags, in lower-case hex.
type TraceParent [55]byte

// InjectInto writes the traceparent of the span in ctx into b, returns
// its tracestate, and reports whether ctx has a valid span context (b is
// left alone when not): Inject without making a string of the header,
// for a caller that keeps it in storage of its own.
func InjectInto(b *TraceParent, ctx context.Context) (tracestate string, ok bool) {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return "", false
	}
	tid, sid := sc.TraceID(), sc.SpanID()
	b[0], b[1], b[2] = '0', '0', '-'
	hex.Encode(b[3:35], tid[:])
	b[35] = '-'
	hex.Encode(b[36:52], sid[:])
	b[52] = '-'
	flags := [1]byte{byte(sc.TraceFlags() & trace.FlagsSampled)}
	hex.Encode(b[53:55], flags[:])
	if ts := sc.TraceState(); ts.Len() > 0 {
		tracestate = ts.String()
	}
	return tracestate, true
}

// Extract returns ctx with the remote span context that traceparent and
// tracestate describe; ctx unchanged when traceparent is empty or invalid.
// A version-00 header is parsed here without allocating; any other goes
// through propagation.TraceContext.
func Extract(ctx context.Context, traceparent, tracestate string) context.Context {
	if traceparent == "" {
		return ctx
	}
	if len(traceparent) != 55 || traceparent[:3] != "00-" || traceparent[35] != '-' || traceparent[52] != '-' {
		return w3c.Extract(ctx, &carrier{traceparent: traceparent, tracestate: tracestate})
	}
	var cfg trace.SpanContextConfig
	var flags [1]byte
	if !decodeHex(cfg.TraceID[:], traceparent[3:35]) || !decodeHex(cfg.SpanID[:], traceparent[36:52]) ||
		!decodeHex(flags[:], traceparent[53:55]) {
		return ctx
	}
	if flags[0] > 1 { // version 00 defines only the sampled bit
		return ctx
	}
	cfg.TraceFlags = trace.TraceFlags(flags[0])
	cfg.Remote = true
	if tracestate != "" {
		ts, err := trace.ParseTraceState(tracestate)
		if err == nil {
			cfg.TraceState = ts
		}
	}
	sc := trace.NewSpanContext(cfg)
	if !sc.IsValid() {
		return ctx
	}
	return trace.ContextWithRemoteSpanContext(ctx, sc)
}

// decodeHex decodes lower-case hex s into dst (W3C forbids upper case).
func decodeHex(dst []byte, s string) bool {
	for i := range dst {
		hi, ok1 := unhex(s[2*i])
		lo, ok2 := unhex(s[2*i+1])
		if !ok1 || !ok2 {
			return false
		}
		dst[i] = hi<<4 | lo
	}
	return true
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}
