package conn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"capnproto.org/go/capnp/v3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/vatactor/vatactor/conn/core"
	"github.com/vatactor/vatactor/supervisor"
	"github.com/vatactor/vatactor/tracing"
)

// This file is every tracing call of a connection, one function per
// transition of the span model (see package tracing). With a provider
// that does not record, each is a cheap no-op.

// connTrace holds the connection's spans. Only the connection actor
// touches it.
type connTrace struct {
	span        trace.Span      // capnp.conn; nil until begun
	ctx         context.Context // carries span
	parent      context.Context // span's parent: the dial's context or the peer's connection span
	end         *shutdownTrace  // nil until the connection starts ending
	eofReceived bool
}

// shutdownTrace holds the spans of a connection's end.
type shutdownTrace struct {
	span      trace.Span // capnp.shutdown
	ctx       context.Context
	step      trace.Span  // the span of the step running now (tracePhaseStart), or nil
	stepStart time.Time   // when its span started
	stepPhase Phase       // its step
	pending   []actorStop // actors stopped during the step running now
	steps     stepClock   // the start of the last step's span
}

// stepClock keeps the spans of a connection's end in the order their
// steps ran: the steps done in one turn share the core's time, and Jaeger
// orders spans by their start, to the microsecond, so a step's span
// starts at least a microsecond after the one before it.
type stepClock struct{ last time.Time }

// start returns when the span of a step that started at at begins.
func (c *stepClock) start(at time.Time) time.Time {
	if !at.After(c.last) {
		at = c.last.Add(time.Microsecond)
	}
	c.last = at
	return at
}

// end returns when the span of a step that began at start and ended at
// end ends.
func spanEnd(start, end time.Time) time.Time {
	if end.Before(start) {
		return start
	}
	return end
}

type actorStop struct {
	at time.Time
	ActorStopped
}

// traceBegin starts the connection span, backdated to the connection's
// start. A dialed connection begins at once; an accepted one waits for the
// peer's first frame, whose sidecar may name the peer's connection span
// as parent.
func (s *state) traceBegin() {
	if s.tr.span != nil {
		return
	}
	c := s.c
	parent := s.tr.parent
	if parent == nil {
		parent = c.opts.SpanParent
	}
	if parent == nil {
		parent = context.Background()
	}
	if c.untraced && !trace.SpanContextFromContext(parent).IsValid() {
		s.tr.ctx, s.tr.span = parent, noSpan
		return
	}
	s.tr.ctx, s.tr.span = c.tracer.Start(parent, tracing.ConnSpan,
		trace.WithSpanKind(trace.SpanKindInternal),
		trace.WithTimestamp(c.start),
		trace.WithAttributes(tracing.AttrPeer.String(c.opts.Peer), tracing.AttrRole.String(c.opts.Role)))
	s.tr.span.AddEvent("up", trace.WithTimestamp(c.start))
}

// traceStarted: the actor has started.
func (s *state) traceStarted() {
	if s.c.opts.Role != "server" || s.c.opts.SpanParent != nil {
		s.traceBegin()
	}
}

// traceFrameIn: a frame arrived; the first one may name the peer's
// connection span.
func (s *state) traceFrameIn(sc *Sidecar) {
	if s.tr.span != nil {
		return
	}
	if sc != nil && sc.ConnParent != "" {
		s.tr.parent = tracing.Extract(context.Background(), sc.ConnParent, "")
	}
	s.traceBegin()
}

// traceEvent adds a named event to the connection span.
func (s *state) traceEvent(name string, attrs ...attribute.KeyValue) {
	s.traceBegin()
	if s.tr.span.IsRecording() {
		s.tr.span.AddEvent(name, trace.WithAttributes(attrs...))
	}
}

// firstSidecar is the sidecar of our first frame: what we understand and
// the span of this connection.
func (s *state) firstSidecar(call *Sidecar) *Sidecar {
	s.traceBegin()
	sc := Sidecar{Features: ourFeatures}
	if call != nil {
		sc = *call
	}
	sc.ConnParent, _ = tracing.Inject(s.tr.ctx)
	return &sc
}

// traceShutdownBegin starts the shutdown span when the connection leaves
// phaseOpen, for whatever reason.
func (s *state) traceShutdownBegin() {
	if s.tr.end != nil {
		return
	}
	s.traceBegin()
	s.tr.end = new(shutdownTrace)
	if s.tr.span == noSpan {
		s.tr.end.ctx, s.tr.end.span = s.tr.ctx, noSpan
		return
	}
	s.tr.end.ctx, s.tr.end.span = s.c.tracer.Start(s.tr.ctx, tracing.ShutdownSpan,
		trace.WithAttributes(reasonAttributes(s.c.Err())...))
}

// tracePhaseStart starts the span of a step of the connection's end that
// lasts more than one turn (drain, stopQuestions, stopExports), as the
// step starts; tracePhase ends it.
func (s *state) tracePhaseStart(p Phase, start time.Time) {
	s.traceShutdownBegin()
	if !s.tr.end.span.IsRecording() {
		return
	}
	_, s.tr.end.step = s.c.tracer.Start(s.tr.end.ctx, string(p), trace.WithTimestamp(s.tr.end.steps.start(start)))
	s.tr.end.stepPhase = p
	s.tr.end.stepStart = s.tr.end.steps.last
}

// tracePhase records one step of the connection's end as a child of the
// shutdown span, with the actors it stopped as events: it ends the span
// tracePhaseStart began for it, or makes one for a step done within a
// turn (or timed by the closer goroutine).
func (s *state) tracePhase(p PhaseReport) {
	s.traceShutdownBegin()
	span := s.tr.end.step
	if span == nil || s.tr.end.stepPhase != p.Phase {
		if span != nil { // a step that did not end: it ends here
			span.End()
		}
		span = nil
	}
	s.tr.end.step = nil
	if !s.tr.end.span.IsRecording() {
		return
	}
	start := s.tr.end.stepStart
	if span == nil {
		start = s.tr.end.steps.start(p.Start)
		_, span = s.c.tracer.Start(s.tr.end.ctx, string(p.Phase), trace.WithTimestamp(start))
	}
	span.SetAttributes(phaseAttributes(p)...)
	for _, a := range s.tr.end.pending {
		span.AddEvent(string(a.Kind)+" stopped", trace.WithTimestamp(a.at), trace.WithAttributes(
			attribute.Int(string(a.Kind)+".id", int(a.ID)), attribute.Bool("timed_out", a.TimedOut)))
	}
	s.tr.end.pending = nil
	span.End(trace.WithTimestamp(spanEnd(start, p.Start.Add(p.Took))))
}

func phaseAttributes(p PhaseReport) []attribute.KeyValue {
	attrs := []attribute.KeyValue{tracing.AttrPhaseNote.String(p.Note)}
	if p.Skipped {
		attrs = append(attrs, tracing.AttrPhaseSkipped.Bool(true))
	}
	if p.CutShort {
		attrs = append(attrs, tracing.AttrPhaseCutShort.Bool(true))
	}
	return attrs
}

// stepTracer makes the spans of the closer goroutine's steps (closeWrite,
// linger, closeSocket) as they run, as children of the shutdown span. Its
// zero value makes none. It holds only what the closer may touch: the
// tracer and the shutdown span's context, fixed before the closer starts.
type stepTracer struct {
	tracer trace.Tracer
	ctx    context.Context // nil: not recording
	steps  stepClock       // after the actor's steps
}

// closerTracer is the stepTracer of this connection's closer.
func (s *state) closerTracer() *stepTracer {
	s.traceShutdownBegin()
	if !s.tr.end.span.IsRecording() {
		return &stepTracer{}
	}
	return &stepTracer{tracer: s.c.tracer, ctx: s.tr.end.ctx, steps: s.tr.end.steps}
}

func (st *stepTracer) start(p Phase, at time.Time) trace.Span {
	if st.ctx == nil {
		return nil
	}
	_, span := st.tracer.Start(st.ctx, string(p), trace.WithTimestamp(st.steps.start(at)))
	return span
}

func (st *stepTracer) end(span trace.Span, p PhaseReport) {
	if span == nil {
		return
	}
	span.SetAttributes(phaseAttributes(p)...)
	span.End(trace.WithTimestamp(spanEnd(st.steps.last, p.Start.Add(p.Took))))
}

// traceActorStopped: a question or export actor stopped during a step.
// It becomes an event of the step's span, at the time it stopped.
func (s *state) traceActorStopped(e ActorStopped) {
	if s.tr.end != nil && s.tr.end.span.IsRecording() {
		s.tr.end.pending = append(s.tr.end.pending, actorStop{at: time.Now(), ActorStopped: e})
	}
}

// traceEOFReceived: the peer half-closed.
func (s *state) traceEOFReceived(at time.Time) {
	if !s.tr.eofReceived {
		s.tr.eofReceived = true
		s.traceBegin()
		s.tr.span.AddEvent("eof.received", trace.WithTimestamp(at))
	}
}

// traceDown ends the shutdown span and the connection span with the
// report.
func (s *state) traceDown(r Report, m socketResult) {
	s.traceShutdownBegin()
	if !m.hard && !m.flushCut {
		s.tr.span.AddEvent("eof.sent", trace.WithTimestamp(m.lingerStart))
	}
	if rd := s.c.readEnded.Load(); rd != nil && errors.Is(rd.err, io.EOF) {
		s.traceEOFReceived(rd.at)
	}
	attrs := reasonAttributes(r.Reason)
	if r.Peer != nil {
		attrs = append(attrs, tracing.AttrPeerReason.String(r.Peer.Error()))
	}
	attrs = append(attrs, statsAttributes(r.Stats)...)
	s.tr.end.span.SetAttributes(attrs...)
	s.tr.end.span.End()
	s.tr.span.SetAttributes(attrs...)
	if r.Reason != nil && !r.Reason.Expected() {
		s.tr.span.SetStatus(codes.Error, r.Reason.Error())
	}
	s.tr.span.End()
}

// reasonAttributes describe why a connection ends.
func reasonAttributes(r supervisor.Reason) []attribute.KeyValue {
	if r == nil {
		return nil
	}
	attrs := []attribute.KeyValue{
		tracing.AttrReason.String(r.Error()),
		tracing.AttrReasonKind.String(reasonKind(r)),
		tracing.AttrExpected.Bool(r.Expected()),
	}
	if ep, ok := reasonEpitaph(r); ok {
		attrs = append(attrs, epitaphAttributes(ep)...)
	}
	return attrs
}

// reasonEpitaph is the epitaph a reason carries, ours or the peer's.
func reasonEpitaph(r supervisor.Reason) (supervisor.Epitaph, bool) {
	switch r := r.(type) {
	case supervisor.LocalShutdown:
		return r.Epitaph, true
	case supervisor.PeerEpitaph:
		return r.Epitaph, true
	}
	return supervisor.Epitaph{}, false
}

func reasonKind(r supervisor.Reason) string {
	t := fmt.Sprintf("%T", r)
	return t[strings.LastIndexByte(t, '.')+1:]
}

// epitaphAttributes describe an epitaph sent or received.
func epitaphAttributes(ep supervisor.Epitaph) []attribute.KeyValue {
	return []attribute.KeyValue{tracing.AttrEpitaphCode.String(ep.Code.String()), tracing.AttrEpitaphText.String(ep.Message)}
}

// statsAttributes are a connection's table counts.
func statsAttributes(st Stats) []attribute.KeyValue {
	return []attribute.KeyValue{
		tracing.AttrQuestions.Int(st.Questions), tracing.AttrAnswers.Int(st.Answers),
		tracing.AttrExports.Int(st.Exports), tracing.AttrImports.Int(st.Imports),
		tracing.AttrEmbargoes.Int(st.Embargoes),
	}
}

// startQuestionSpan starts q's client span on the caller's goroutine, as
// a child of the caller's context, with q's names; the sidecar it sets
// carries the span to the peer (nil when there is no trace context).
func (c *Conn) startQuestionSpan(ctx context.Context, q *question) {
	if c.untraced && !trace.SpanContextFromContext(ctx).IsValid() {
		q.span = noSpan
		return
	}
	q.names = tracing.BootstrapNames
	if !q.bootstrap {
		q.names = tracing.Names(q.method)
	}
	// The span's attributes are all set when it ends, in one call: a
	// sampler sees only what Start is given, so nothing is lost, and the
	// SDK sizes the span's attribute slice once.
	ctx, q.span = c.tracer.Start(ctx, q.names.Span, clientStart...)
	if !q.span.SpanContext().IsValid() {
		return
	}
	var tp tracing.TraceParent
	ts, _ := tracing.InjectInto(&tp, ctx)
	q.sidecar = sidecarHolding(ourFeatures, &tp)
	q.sidecar.TraceState = ts
}

// noSpan is the span of a call on an untraced connection: it records
// nothing and carries no context.
var noSpan = trace.SpanFromContext(context.Background())

// endQuestionSpan records a question's outcome and ends its span, with
// all its attributes; withID adds the question's id.
func endQuestionSpan(q *question, err error, withID bool) {
	span := q.span
	if span == nil || span == noSpan || !span.IsRecording() {
		return
	}
	buf := attrBufs.Get().(*[16]attribute.KeyValue)
	attrs := append(append(buf[:0], q.names.Attrs...), q.c.peerAttrs...)
	if q.target.cap.Kind == core.CapQuestion {
		attrs = append(attrs, tracing.AttrPipelined.Bool(true))
	}
	if withID {
		attrs = append(attrs, tracing.AttrQuestionID.Int(int(q.id)))
	}
	if errors.Is(err, ErrNotProcessed) {
		attrs = append(attrs, tracing.AttrNotProcessed.Bool(true))
	}
	tracing.EndCall(span, err, attrs...)
	putAttrBuf(buf)
}

// attrBufs are the attribute buffers of ending call spans: SetAttributes
// copies what it is given, and a buffer on the stack would escape (the
// span is an interface) at one allocation a span.
var attrBufs = sync.Pool{New: func() any { return new([16]attribute.KeyValue) }}

func putAttrBuf(buf *[16]attribute.KeyValue) {
	clear(buf[:])
	attrBufs.Put(buf)
}

// startAnswerSpan starts a's server span for an incoming call of m: a
// child of the caller's question span when the call's sidecar carries it,
// else a new trace linked to the connection span. It sets a's method,
// with its names when they are known, and a.ctx's parent, carrying the
// span for the callee (the span's attributes are set when it ends,
// endAnswerSpan).
func (s *state) startAnswerSpan(a *answer, m capnp.Method, bootstrap bool, sc *Sidecar) {
	a.ctx.parent, a.span, a.method = context.Background(), noSpan, m
	if s.c.untraced && (sc == nil || sc.TraceParent == "") {
		return
	}
	a.names = tracing.BootstrapNames
	if !bootstrap {
		a.names = tracing.NamesByID(m.InterfaceID, m.MethodID)
		a.method = a.names.Method
	}
	if sc != nil && sc.TraceParent != "" {
		// The caller's span, put in the callee's context, is our span's
		// parent; the context Start returns is then the callee's.
		if parent := tracing.Extract(context.Background(), sc.TraceParent, sc.TraceState); trace.SpanContextFromContext(parent).IsValid() {
			cctx, span := s.c.tracer.Start(parent, a.names.Span, serverStart...)
			a.span = span
			if span.SpanContext().IsValid() {
				a.ctx.parent = cctx
			}
			return
		}
	}
	// No caller's span: a new trace, linked to the connection span.
	opts := serverStart
	if s.tr.span != nil {
		opts = []trace.SpanStartOption{serverKind, trace.WithLinks(trace.LinkFromContext(s.tr.ctx))}
	}
	_, a.span = s.c.tracer.Start(context.Background(), a.names.Span, opts...)
	if a.span.SpanContext().IsValid() {
		a.ctx.parent = trace.ContextWithSpan(context.Background(), a.span)
	}
}

// Span kinds, made once; the start options of call spans, as slices made
// once (a variadic argument to an interface's method is made anew each
// call).
var (
	clientKind  trace.SpanStartOption = trace.WithSpanKind(trace.SpanKindClient)
	serverKind  trace.SpanStartOption = trace.WithSpanKind(trace.SpanKindServer)
	clientStart                       = []trace.SpanStartOption{clientKind}
	serverStart                       = []trace.SpanStartOption{serverKind}
)

// bootstrapMethod is how a Bootstrap is named.
var bootstrapMethod = tracing.BootstrapNames.Method

// endAnswerSpan records an answer's outcome when its Return is queued;
// notProcessed: the call was refused by our drain.
func endAnswerSpan(a *answer, err error, notProcessed bool) {
	if a.span == noSpan || !a.span.IsRecording() {
		return
	}
	buf := attrBufs.Get().(*[16]attribute.KeyValue)
	attrs := append(append(append(buf[:0], a.names.Attrs...), a.c.peerAttrs...), tracing.AttrAnswerID.Int(int(a.id)))
	if notProcessed {
		attrs = append(attrs, tracing.AttrNotProcessed.Bool(true))
	}
	tracing.EndCall(a.span, err, attrs...)
	putAttrBuf(buf)
}

// startExportSpan starts the span of an export's lifetime, a child of the
// connection span.
func (s *state) startExportSpan(e *export) trace.Span {
	s.traceBegin()
	if s.tr.span == noSpan {
		return noSpan
	}
	_, span := s.c.tracer.Start(s.tr.ctx, tracing.ExportSpan)
	if span.IsRecording() {
		span.SetAttributes(tracing.AttrExportID.Int(int(e.id)), attribute.Bool("capnp.export.promise", e.promise))
	}
	return span
}
