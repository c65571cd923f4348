// Package spantree keeps finished spans in memory and prints them as a
// compact tree per trace: the embedded default of the samples, which
// needs no tracing backend.
package spantree

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/vatactor/vatactor/tracing"
)

// Recorder is a span processor that keeps every finished span. Register
// it with sdktrace.WithSpanProcessor on one or more tracer providers.
type Recorder struct {
	mu    sync.Mutex
	spans []sdktrace.ReadOnlySpan
}

// New returns an empty Recorder.
func New() *Recorder { return &Recorder{} }

// OnStart implements sdktrace.SpanProcessor.
func (r *Recorder) OnStart(context.Context, sdktrace.ReadWriteSpan) {}

// OnEnd implements sdktrace.SpanProcessor.
func (r *Recorder) OnEnd(s sdktrace.ReadOnlySpan) {
	r.mu.Lock()
	r.spans = append(r.spans, s)
	r.mu.Unlock()
}

// Shutdown implements sdktrace.SpanProcessor.
func (r *Recorder) Shutdown(context.Context) error { return nil }

// ForceFlush implements sdktrace.SpanProcessor.
func (r *Recorder) ForceFlush(context.Context) error { return nil }

// Spans returns the spans finished so far, in the order they ended.
func (r *Recorder) Spans() []sdktrace.ReadOnlySpan {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.spans)
}

// Write prints the finished spans as trees, one per trace (see Format).
func (r *Recorder) Write(w io.Writer) error {
	_, err := io.WriteString(w, Format(r.Spans()))
	return err
}

// Format prints spans as one tree per trace, children in start order.
// A line is: name, service, duration, then what matters of the span
// (peer and role of a connection, the reason it ended, a call's status,
// a skipped or cut-short step). Runs of leaf siblings with the same name,
// service and status are folded into one line "×N".
func Format(spans []sdktrace.ReadOnlySpan) string {
	byID := make(map[trace.SpanID]bool, len(spans))
	for _, s := range spans {
		byID[s.SpanContext().SpanID()] = true
	}
	children := make(map[trace.SpanID][]sdktrace.ReadOnlySpan)
	var roots []sdktrace.ReadOnlySpan
	for _, s := range spans {
		if p := s.Parent(); p.IsValid() && byID[p.SpanID()] {
			children[p.SpanID()] = append(children[p.SpanID()], s)
		} else {
			roots = append(roots, s)
		}
	}
	byStart := func(a, b sdktrace.ReadOnlySpan) int { return a.StartTime().Compare(b.StartTime()) }
	slices.SortStableFunc(roots, byStart)
	for _, c := range children {
		slices.SortStableFunc(c, byStart)
	}
	// One tree per trace, in the order the traces began: roots of the
	// same trace print together.
	first := make(map[trace.TraceID]int64)
	for _, r := range roots { // in start order: the first seen is the earliest
		if _, ok := first[r.SpanContext().TraceID()]; !ok {
			first[r.SpanContext().TraceID()] = r.StartTime().UnixNano()
		}
	}
	slices.SortStableFunc(roots, func(a, b sdktrace.ReadOnlySpan) int {
		return cmp.Compare(first[a.SpanContext().TraceID()], first[b.SpanContext().TraceID()])
	})
	var b strings.Builder
	var last trace.TraceID
	for _, r := range roots {
		if id := r.SpanContext().TraceID(); id != last {
			last = id
			fmt.Fprintf(&b, "trace %s\n", id)
		}
		p := printer{b: &b, children: children}
		fmt.Fprintf(&b, "  %s\n", describe(r))
		p.print(p.children[r.SpanContext().SpanID()], "  ")
	}
	return b.String()
}

type printer struct {
	b        *strings.Builder
	children map[trace.SpanID][]sdktrace.ReadOnlySpan
}

// print writes siblings, folding runs of equal leaves.
func (p printer) print(sibs []sdktrace.ReadOnlySpan, indent string) {
	for i := 0; i < len(sibs); {
		s := sibs[i]
		n := 1
		for i+n < len(sibs) && p.foldable(s, sibs[i+n]) {
			n++
		}
		lastOne := i+n == len(sibs)
		branch, next := indent+"├─ ", indent+"│  "
		if lastOne {
			branch, next = indent+"└─ ", indent+"   "
		}
		line := describe(s)
		if n > 1 {
			var total time.Duration
			for _, t := range sibs[i : i+n] {
				total += t.EndTime().Sub(t.StartTime())
			}
			line = fmt.Sprintf("%s ×%d  avg %s", head(s), n, round(total/time.Duration(n)))
		}
		fmt.Fprintf(p.b, "%s%s\n", branch, line)
		if n == 1 {
			p.print(p.children[s.SpanContext().SpanID()], next)
		}
		i += n
	}
}

func (p printer) foldable(a, b sdktrace.ReadOnlySpan) bool {
	return len(p.children[a.SpanContext().SpanID()]) == 0 && len(p.children[b.SpanContext().SpanID()]) == 0 &&
		head(a) == head(b) && status(a) == status(b)
}

// head is a span's name, kind and service.
func head(s sdktrace.ReadOnlySpan) string {
	h := s.Name()
	if k := s.SpanKind(); k == trace.SpanKindClient || k == trace.SpanKindServer {
		h += " (" + k.String() + ")"
	}
	if svc := service(s); svc != "" {
		h += " [" + svc + "]"
	}
	if st := status(s); st != "" {
		h += " " + st
	}
	return h
}

func describe(s sdktrace.ReadOnlySpan) string {
	var extra []string
	for _, kv := range s.Attributes() {
		switch kv.Key {
		case tracing.AttrRole, tracing.AttrPeer, tracing.AttrReasonKind, tracing.AttrEpitaphCode, tracing.AttrPhaseNote:
			if v := kv.Value.Emit(); v != "" {
				extra = append(extra, v)
			}
		case tracing.AttrPipelined:
			extra = append(extra, "pipelined")
		case tracing.AttrPhaseSkipped:
			extra = append(extra, "skipped")
		case tracing.AttrPhaseCutShort:
			extra = append(extra, "CUT SHORT")
		}
	}
	line := fmt.Sprintf("%s  %s", head(s), round(s.EndTime().Sub(s.StartTime())))
	if len(extra) > 0 {
		line += "  " + strings.Join(extra, "; ")
	}
	return line
}

// status is a call's status code, or "ERROR" for another failed span.
func status(s sdktrace.ReadOnlySpan) string {
	for _, kv := range s.Attributes() {
		if kv.Key == semconv.RPCResponseStatusCodeKey {
			return kv.Value.AsString()
		}
	}
	if s.Status().Code == codes.Error {
		return "ERROR"
	}
	return ""
}

func service(s sdktrace.ReadOnlySpan) string {
	if r := s.Resource(); r != nil {
		if v, ok := r.Set().Value(semconv.ServiceNameKey); ok {
			return v.AsString()
		}
	}
	return ""
}

func round(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}
