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

// callStart is when a call starts, for its duration (zero: not
// measured); server: one of the peer's calls.
func (c *Conn) callStart(server bool) time.Time {
	m := c.meters
	if m == nil {
		return time.Time{}
	}
	h := m.ClientCallDuration
	if server {
		h = m.ServerCallDuration
	}
	if !h.Enabled(context.Background()) {
		return time.Time{}
	}
	return time.Now()
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
	for i, mc := range s.metered {
		s.c.recordCall(mc)
		s.metered[i] = meteredCall{}
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
