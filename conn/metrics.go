package conn

import (
	"context"
	"sync"
	"sync/atomic"
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

// meteredCall is a call's duration, measured and not yet recorded: the
// connection records its answers' durations after the turn has written
// their Returns, and a question's after its caller has been woken, so
// that recording is off the call's path.
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

// recordCalls records the durations the turn measured.
func (s *state) recordCalls() {
	recordAll(s.c, s.metered)
	s.metered = s.metered[:0]
}

// recordAll records mcs and clears them (they hold errors).
func recordAll(c *Conn, mcs []meteredCall) {
	for i, mc := range mcs {
		c.recordCall(mc)
		mcs[i] = meteredCall{}
	}
}

// settledCalls holds the durations of calls to the peer, measured by
// their question actors once they have woken the caller. The caller runs
// when that actor's goroutine parks (it waits in the P's next slot), so
// whatever that goroutine does after the Resolve sits between a Return
// and the caller's next call: recording there cost a sequential caller
// a few percent of its calls/s. The connection actor records them
// instead (recordSettled), at the end of a turn that wrote: the peer is
// working on what was written meanwhile, off any caller's path.
type settledCalls struct {
	mu    sync.Mutex
	calls []meteredCall
	n     atomic.Int32 // len(calls), read without the lock
}

func (p *settledCalls) add(mc meteredCall) {
	p.mu.Lock()
	p.calls = append(p.calls, mc)
	p.n.Store(int32(len(p.calls)))
	p.mu.Unlock()
}

// swap takes the calls held, giving spare (emptied) storage for the next.
func (p *settledCalls) swap(spare []meteredCall) []meteredCall {
	p.mu.Lock()
	held := p.calls
	p.calls = spare[:0]
	p.n.Store(0)
	p.mu.Unlock()
	return held
}

// settledFlushDelay is how long durations measured by question actors
// wait for a turn that writes (an idle connection has none) before a
// timer has them recorded.
const settledFlushDelay = 5 * time.Millisecond

// settledFlush: the timer of settledFlushDelay fired.
type settledFlush struct{}

// recordSettled records the settled calls' durations after a turn that
// wrote, or when now is set (the timer fired, or the actor's last turn);
// otherwise it makes sure the timer runs.
func (s *state) recordSettled(wrote, now bool) {
	c := s.c
	if c.settled.n.Load() == 0 {
		return
	}
	if !wrote && !now {
		if !s.settledArmed {
			s.settledArmed = true
			if s.settledTimer == nil {
				s.settledTimer = time.AfterFunc(settledFlushDelay, func() { c.postInternal(settledFlush{}) })
			} else {
				s.settledTimer.Reset(settledFlushDelay)
			}
		}
		return
	}
	held := c.settled.swap(s.settledSpare)
	recordAll(c, held)
	s.settledSpare = held[:0]
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
