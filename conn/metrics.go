package conn

import (
	"context"
	"time"

	"capnproto.org/go/capnp/v3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/vatactor/vatactor/conn/core"
	"github.com/vatactor/vatactor/metering"
	"github.com/vatactor/vatactor/supervisor"
	"github.com/vatactor/vatactor/tracing"
)

// The connection's metrics (package metering names them). c.meters is nil
// when the provider records nothing: then none of this runs, and no clock
// is read for it.

// meterEpoch is what call durations are measured from: meterNow reads
// the monotonic clock alone (time.Since), where time.Now reads two.
var meterEpoch = time.Now()

// meterNow is the time since meterEpoch.
func meterNow() time.Duration { return time.Since(meterEpoch) }

// callStart is when a call starts, by meterNow, for its duration (0: not
// measured); server: one of the peer's calls.
func (c *Conn) callStart(server bool) time.Duration {
	m := c.meters
	if m == nil {
		return 0
	}
	h := m.ClientCallDuration
	if server {
		h = m.ServerCallDuration
	}
	if !h.Enabled(context.Background()) {
		return 0
	}
	return max(meterNow(), 1)
}

// meteredCall is a call's duration, measured and not yet recorded
// (state.recordMetered).
type meteredCall struct {
	server bool
	took   time.Duration
	method capnp.Method
	err    error
}

func (c *Conn) recordCall(mc meteredCall) {
	h := c.meters.ClientCallDuration
	if mc.server {
		h = c.meters.ServerCallDuration
	}
	h.Record(context.Background(), mc.took.Seconds(), metering.CallAttributes(mc.method, mc.err)...)
}

// meterSince is the time from start (by meterNow) to the current step's
// clock value, which costs no clock read.
func (s *state) meterSince(start time.Duration) time.Duration {
	return max(s.now.Sub(meterEpoch)-start, 0)
}

// meterFlushDelay is how long measured durations wait for a turn that
// writes (an idle connection has none) before a timer has them recorded.
const meterFlushDelay = 5 * time.Millisecond

// meterFlush: the timer of meterFlushDelay fired.
type meterFlush struct{}

// recordMetered records the durations measured (s.metered) after a turn
// that wrote, or when now is set (the timer fired, or the actor's last
// turn); otherwise it makes sure the timer runs. After a write, the peer
// works on what was written meanwhile, so recording is on no caller's
// path: a question's actor would delay the caller it has just woken (the
// caller waits in that goroutine's P until it parks), and a turn that
// only read a Return would delay the actor that wakes the caller. wrote
// is the end of the turn's flush: a Return queued when no other message
// waits is written at once, within queue, so a server's durations mostly
// wait for the timer, which records them in batches (recording them
// after that write instead measured no cheaper, bench/README.md).
func (s *state) recordMetered(wrote, now bool) {
	if len(s.metered) == 0 {
		return
	}
	if !wrote && !now {
		if !s.meterArmed {
			s.meterArmed = true
			s.c.postAfter(&s.meterTimer, meterFlushDelay, meterFlush{})
		}
		return
	}
	for i, mc := range s.metered {
		s.c.recordCall(mc)
		s.metered[i] = meteredCall{} // it holds an error
	}
	s.metered = s.metered[:0]
}

// meterUp: the connection is up.
func (c *Conn) meterUp() {
	if m := c.meters; m != nil {
		m.ConnectionsOpen.Add(context.Background(), 1, metering.With(tracing.AttrRole, c.opts.Role))
	}
}

// meterDown: the connection has ended, for rep.Reason.
func (c *Conn) meterDown(rep Report) {
	m := c.meters
	if m == nil {
		return
	}
	ctx := context.Background()
	role := tracing.AttrRole.String(c.opts.Role)
	m.Messages.Close(c.msgCounts)
	m.ConnectionsOpen.Add(ctx, -1, metering.With(tracing.AttrRole, c.opts.Role))
	m.ConnectionsEnded.Add(ctx, 1, metric.WithAttributes(endedAttributes(rep.Reason, role)...))
	expected := rep.Reason != nil && rep.Reason.Expected()
	m.ConnectionDuration.Record(ctx, rep.Lifetime.Seconds(), metric.WithAttributes(role, tracing.AttrExpected.Bool(expected)))
}

// endedAttributes are the attributes of a connection's end: of the
// reason's span attributes those whose values are few (its kind, whether
// it was expected), and the epitaph's code by Class (a peer's code number
// or text would make a series each).
func endedAttributes(r supervisor.Reason, role attribute.KeyValue) []attribute.KeyValue {
	out := []attribute.KeyValue{role}
	for _, a := range reasonAttributes(r) {
		switch a.Key {
		case tracing.AttrReasonKind, tracing.AttrExpected:
			out = append(out, a)
		}
	}
	if ep, ok := reasonEpitaph(r); ok {
		out = append(out, tracing.AttrEpitaphCode.String(ep.Code.Class()))
	}
	return out
}

// meterPhase: a step of the connection's end is done.
func (c *Conn) meterPhase(p PhaseReport) {
	if m := c.meters; m != nil {
		m.PhaseDuration.Record(context.Background(), p.Took.Seconds(),
			metric.WithAttributes(metering.AttrPhase.String(string(p.Phase)), tracing.AttrPhaseSkipped.Bool(p.Skipped)))
	}
}

// meterRefused: the core refused one of the peer's calls.
func (c *Conn) meterRefused(why string) {
	if m := c.meters; m != nil {
		m.CallsRefused.Add(context.Background(), 1, metering.With(metering.AttrRefused, why))
	}
}

// meterMessage counts one message of kind, of n bytes, sent or received.
func (c *Conn) meterMessage(sent bool, kind metering.MessageKind, n int64) {
	if c.msgCounts != nil {
		c.msgCounts.Count(sent, kind, n)
	}
}

// meterFlowWait records a call's wait for room in a flow window.
func (c *Conn) meterFlowWait(d time.Duration) {
	if m := c.meters; m != nil {
		m.FlowWait.Record(context.Background(), d.Seconds())
	}
}

// kindOf is a core message's type on the wire (capnp.message.type).
func kindOf(m core.Message) metering.MessageKind {
	switch m.(type) {
	case *core.Bootstrap:
		return metering.KindBootstrap
	case *core.Call:
		return metering.KindCall
	case *core.Return:
		return metering.KindReturn
	case *core.Finish:
		return metering.KindFinish
	case *core.Resolve:
		return metering.KindResolve
	case *core.Release:
		return metering.KindRelease
	case *core.Disembargo:
		return metering.KindDisembargo
	case *core.Abort:
		return metering.KindAbort
	case *core.Unimplemented:
		return metering.KindUnimplemented
	}
	return metering.KindOther
}
