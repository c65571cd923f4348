package spantree_test

import (
	"context"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/vatactor/vatactor/tracing"
	"github.com/vatactor/vatactor/tracing/spantree"
)

func TestFormat(t *testing.T) {
	rec := spantree.New()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	tr := tp.Tracer("test")
	ctx, root := tr.Start(context.Background(), "root")
	for range 3 {
		_, s := tr.Start(ctx, "Echo.echo", trace.WithSpanKind(trace.SpanKindClient))
		tracing.EndCall(s, nil)
	}
	_, failed := tr.Start(ctx, "Echo.fail", trace.WithSpanKind(trace.SpanKindClient))
	failed.SetStatus(codes.Error, "boom")
	failed.End()
	sctx, sd := tr.Start(ctx, tracing.ShutdownSpan)
	_, step := tr.Start(sctx, "drain")
	step.SetAttributes(tracing.AttrPhaseSkipped.Bool(true))
	step.End()
	sd.End()
	root.End()
	_, other := tr.Start(context.Background(), "other trace")
	other.End()

	got := spantree.Format(rec.Spans())
	lines := strings.Split(strings.TrimSpace(got), "\n")
	want := []string{
		"trace " + root.SpanContext().TraceID().String(),
		"  root [unknown_service:",
		"  ├─ Echo.echo (client) [unknown_service:",
		"  ├─ Echo.fail (client) [unknown_service:",
		"  └─ shutdown [unknown_service:",
		"     └─ drain [unknown_service:",
		"trace " + other.SpanContext().TraceID().String(),
		"  other trace [unknown_service:",
	}
	if len(lines) != len(want) {
		t.Fatalf("got %d lines, want %d:\n%s", len(lines), len(want), got)
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("line %d = %q, want prefix %q", i, lines[i], w)
		}
	}
	if !strings.Contains(lines[2], "OK ×3") {
		t.Errorf("equal leaf calls not folded: %q", lines[2])
	}
	if !strings.Contains(lines[3], "ERROR") || !strings.Contains(lines[5], "skipped") {
		t.Errorf("status or skipped step missing:\n%s", got)
	}
}
