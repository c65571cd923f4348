// Package metering names and makes vatactor's metrics, through the
// OpenTelemetry metric API.
//
// Calls are measured as the semantic conventions (v1.43) say:
// rpc.client.call.duration and rpc.server.call.duration, in seconds, with
// rpc.system.name=capnp, rpc.method (the method's name, or _OTHER when it
// is not known: a peer's ids never become a series of their own),
// rpc.response.status_code and, for a call that failed, error.type. Their
// buckets start at 10 µs, so that calls over loopback resolve.
//
// The rest are vatactor's, under the prefix "vatactor.": connections open
// and ended (by reason kind, whether the end was expected, and epitaph
// code), their lives and the steps of their ends, calls refused, time
// spent waiting on a flow window, messages and bytes each way, redials
// and escalations of supervised clients, and the sizes of a vat's tables.
// A clean hang-up counts as an expected end, never as an error.
//
// A connection checks once, when it starts, whether its provider records
// anything (Noop); with OpenTelemetry's no-op provider, or the global one
// before otel.SetMeterProvider, it measures nothing at all.
package metering

import (
	"context"
	"reflect"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/vatactor/vatactor/tracing"
)

// ScopeName is the instrumentation scope of every instrument vatactor
// makes (the same as its spans').
const ScopeName = tracing.ScopeName

// Prefix starts the name of every instrument outside the semantic
// conventions.
const Prefix = "vatactor."

// Names of the instruments.
const (
	ClientCallDuration = "rpc.client.call.duration" // histogram, s
	ServerCallDuration = "rpc.server.call.duration" // histogram, s

	ConnectionsOpen    = Prefix + "connection.open"           // up-down counter, {connection}, by role
	ConnectionsEnded   = Prefix + "connection.ended"          // counter, {connection}, by role, reason kind, expected, epitaph code
	ConnectionDuration = Prefix + "connection.duration"       // histogram, s, by role and expected
	PhaseDuration      = Prefix + "connection.phase.duration" // histogram, s, by shutdown step and whether it was skipped
	CallsRefused       = Prefix + "call.refused"              // counter, {call}, by why
	FlowWait           = Prefix + "flow.wait.duration"        // histogram, s: a call's wait for room in a flow window
	MessagesSent       = Prefix + "message.sent"              // observable counter, {message}, by message type
	MessagesReceived   = Prefix + "message.received"          // observable counter, {message}, by message type
	BytesSent          = Prefix + "message.sent.size"         // observable counter, By
	BytesReceived      = Prefix + "message.received.size"     // observable counter, By
	Redials            = Prefix + "client.redial"             // counter, {attempt}, by outcome
	Escalations        = Prefix + "client.escalation"         // counter, {escalation}
	TableSize          = Prefix + "table.size"                // observable gauge, {entry}, by vat and table
)

// Attributes of vatactor's own instruments (besides tracing's AttrRole,
// AttrReasonKind, AttrExpected and AttrEpitaphCode).
const (
	AttrMessageType = attribute.Key("capnp.message.type") // call, return, finish, …
	AttrPhase       = attribute.Key("capnp.phase")        // a step of a connection's end
	AttrRefused     = attribute.Key("capnp.refused")      // why (conn/core.RefusedWhy): draining, overloaded, budget
	AttrTable       = attribute.Key("capnp.table")        // questions, answers, exports, imports, embargoes
	AttrVat         = attribute.Key("capnp.vat")          // a vat's name (actors.Options.Name)
	AttrOutcome     = attribute.Key("capnp.redial.outcome")
)

// CallBuckets are the bucket boundaries of call durations and waits, in
// seconds: from 10 µs (a loopback call) to 10 s.
var CallBuckets = []float64{
	0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
	0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
}

// LifeBuckets are the bucket boundaries of connections' lives, in
// seconds: from 10 ms to a day.
var LifeBuckets = []float64{0.01, 0.1, 1, 10, 60, 300, 900, 3600, 4 * 3600, 24 * 3600}

// Meter returns vatactor's meter from mp, or from the global provider
// when mp is nil.
func Meter(mp metric.MeterProvider) metric.Meter {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	return mp.Meter(ScopeName)
}

// Noop reports whether mp (nil: the global provider as it is now) is
// known to record nothing: OpenTelemetry's no-op provider, and the global
// one before otel.SetMeterProvider. Set the global provider before
// dialing or serving.
func Noop(mp metric.MeterProvider) bool {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	switch mp.(type) {
	case noop.MeterProvider, *noop.MeterProvider:
		return true
	}
	return reflect.TypeOf(mp).String() == "*global.meterProvider"
}

// Instruments are vatactor's synchronous instruments from one provider.
type Instruments struct {
	ClientCallDuration metric.Float64Histogram
	ServerCallDuration metric.Float64Histogram
	ConnectionsOpen    metric.Int64UpDownCounter
	ConnectionsEnded   metric.Int64Counter
	ConnectionDuration metric.Float64Histogram
	PhaseDuration      metric.Float64Histogram
	CallsRefused       metric.Int64Counter
	FlowWait           metric.Float64Histogram
	Redials            metric.Int64Counter
	Escalations        metric.Int64Counter

	// Messages counts the messages and bytes of every connection of the
	// provider, read at each collection (asynchronous counters): each
	// connection counts its own (Open), so that connections on different
	// cores do not contend for one counter, and the collection sums them.
	Messages MessageTotals
}

// MessageTotals are the message counts of a provider's connections: those
// still open and the sum of those that have ended.
type MessageTotals struct {
	mu    sync.Mutex
	open  map[*MessageCounts]struct{}
	ended [2][kinds]int64
	bytes [2]int64
}

// Open returns the counts of one new connection; Close them when it
// ends.
func (t *MessageTotals) Open() *MessageCounts {
	c := new(MessageCounts)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.open == nil {
		t.open = make(map[*MessageCounts]struct{})
	}
	t.open[c] = struct{}{}
	return c
}

// Close folds an ended connection's counts into the totals.
func (t *MessageTotals) Close(c *MessageCounts) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.open[c]; !ok {
		return
	}
	delete(t.open, c)
	for d := range 2 {
		for k := range kinds {
			t.ended[d][k] += c.messages[d][k].Load()
		}
		t.bytes[d] += c.bytes[d].Load()
	}
}

// sum is the totals now: the ended connections' and the open ones'.
func (t *MessageTotals) sum() (msgs [2][kinds]int64, bytes [2]int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	msgs, bytes = t.ended, t.bytes
	for c := range t.open {
		for d := range 2 {
			for k := range kinds {
				msgs[d][k] += c.messages[d][k].Load()
			}
			bytes[d] += c.bytes[d].Load()
		}
	}
	return msgs, bytes
}

// MessageKind is a message's type on the wire (AttrMessageType).
type MessageKind int

// The kinds of messages.
const (
	KindBootstrap MessageKind = iota
	KindCall
	KindReturn
	KindFinish
	KindResolve
	KindRelease
	KindDisembargo
	KindAbort
	KindUnimplemented
	KindOther
	kinds
)

var kindNames = [kinds]string{"bootstrap", "call", "return", "finish", "resolve", "release", "disembargo", "abort", "unimplemented", "other"}

func (k MessageKind) String() string { return kindNames[k] }

// MessageCounts are one connection's running totals of messages and
// bytes each way (its actor adds, a collection reads).
type MessageCounts struct {
	messages [2][kinds]atomic.Int64 // [sent?1:0][kind]
	bytes    [2]atomic.Int64
}

// Count adds one message of kind and n bytes, sent or received.
func (c *MessageCounts) Count(sent bool, kind MessageKind, n int64) {
	d := 0
	if sent {
		d = 1
	}
	c.messages[d][kind].Add(1)
	c.bytes[d].Add(n)
}

var made sync.Map // metric.MeterProvider → *Instruments

// For returns the instruments of mp (nil: the global provider), made once
// per provider; nil when Noop(mp).
func For(mp metric.MeterProvider) *Instruments {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	if Noop(mp) {
		return nil
	}
	if in, ok := made.Load(mp); ok {
		return in.(*Instruments)
	}
	in, _ := made.LoadOrStore(mp, newInstruments(Meter(mp)))
	return in.(*Instruments)
}

func newInstruments(m metric.Meter) *Instruments {
	in := &Instruments{}
	// An instrument the SDK refuses is still a usable no-op one; the
	// error goes to otel's error handler.
	in.ClientCallDuration, _ = m.Float64Histogram(ClientCallDuration, metric.WithUnit("s"),
		metric.WithDescription("Duration of outgoing Cap'n Proto calls."), metric.WithExplicitBucketBoundaries(CallBuckets...))
	in.ServerCallDuration, _ = m.Float64Histogram(ServerCallDuration, metric.WithUnit("s"),
		metric.WithDescription("Duration of incoming Cap'n Proto calls."), metric.WithExplicitBucketBoundaries(CallBuckets...))
	in.ConnectionsOpen, _ = m.Int64UpDownCounter(ConnectionsOpen, metric.WithUnit("{connection}"),
		metric.WithDescription("Connections open now."))
	in.ConnectionsEnded, _ = m.Int64Counter(ConnectionsEnded, metric.WithUnit("{connection}"),
		metric.WithDescription("Connections ended, by why: a clean hang-up is expected."))
	in.ConnectionDuration, _ = m.Float64Histogram(ConnectionDuration, metric.WithUnit("s"),
		metric.WithDescription("Lives of ended connections."), metric.WithExplicitBucketBoundaries(LifeBuckets...))
	in.PhaseDuration, _ = m.Float64Histogram(PhaseDuration, metric.WithUnit("s"),
		metric.WithDescription("Durations of the steps of connections' ends."), metric.WithExplicitBucketBoundaries(CallBuckets...))
	in.CallsRefused, _ = m.Int64Counter(CallsRefused, metric.WithUnit("{call}"),
		metric.WithDescription("The peer's calls refused without running."))
	in.FlowWait, _ = m.Float64Histogram(FlowWait, metric.WithUnit("s"),
		metric.WithDescription("Time calls waited for room in a flow window."), metric.WithExplicitBucketBoundaries(CallBuckets...))
	observeMessages(m, &in.Messages)
	in.Redials, _ = m.Int64Counter(Redials, metric.WithUnit("{attempt}"), metric.WithDescription("Dial attempts of supervised clients, by outcome."))
	in.Escalations, _ = m.Int64Counter(Escalations, metric.WithUnit("{escalation}"),
		metric.WithDescription("Supervised clients that gave up (restart intensity exceeded)."))
	return in
}

// observeMessages reports t's totals at each collection.
func observeMessages(m metric.Meter, t *MessageTotals) {
	var msgs [2]metric.Int64ObservableCounter
	var bytes [2]metric.Int64ObservableCounter
	msgs[0], _ = m.Int64ObservableCounter(MessagesReceived, metric.WithUnit("{message}"), metric.WithDescription("RPC messages received."))
	msgs[1], _ = m.Int64ObservableCounter(MessagesSent, metric.WithUnit("{message}"), metric.WithDescription("RPC messages sent."))
	bytes[0], _ = m.Int64ObservableCounter(BytesReceived, metric.WithUnit("By"), metric.WithDescription("Bytes of RPC messages received."))
	bytes[1], _ = m.Int64ObservableCounter(BytesSent, metric.WithUnit("By"), metric.WithDescription("Bytes of RPC messages sent."))
	var sets [kinds]metric.ObserveOption
	for k := range kinds {
		sets[k] = metric.WithAttributeSet(attribute.NewSet(AttrMessageType.String(kindNames[k])))
	}
	_, _ = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		counts, totals := t.sum()
		for d := range 2 {
			for k := range kinds {
				if n := counts[d][k]; n > 0 {
					o.ObserveInt64(msgs[d], n, sets[k])
				}
			}
			o.ObserveInt64(bytes[d], totals[d])
		}
		return nil
	}, msgs[0], msgs[1], bytes[0], bytes[1])
}
