package actors

import (
	"context"
	"sync"

	"go.opentelemetry.io/otel/metric"

	"github.com/vatactor/vatactor/conn"
	"github.com/vatactor/vatactor/metering"
)

// vatMeters are the metrics of a vat beyond its connections': the sizes
// of its connections' tables (an observable gauge read at each
// collection), and its supervised clients' redials and escalations.
type vatMeters struct {
	in  *metering.Instruments // nil: the provider records nothing
	reg metric.Registration

	mu   sync.Mutex
	live map[*conn.Conn]struct{} // connections not yet down
}

// startMeters makes the vat's metrics from mp (nil: the global provider).
func (v *Vat) startMeters(mp metric.MeterProvider) {
	m := &v.meters
	if m.in = metering.For(mp); m.in == nil {
		return
	}
	m.live = map[*conn.Conn]struct{}{}
	g, err := metering.Meter(mp).Int64ObservableGauge(metering.TableSize, metric.WithUnit("{entry}"),
		metric.WithDescription("Entries of the tables of a vat's live connections."))
	if err != nil {
		return
	}
	tables := []struct {
		name string
		of   func(conn.Stats) int
	}{
		{"questions", func(s conn.Stats) int { return s.Questions }},
		{"answers", func(s conn.Stats) int { return s.Answers }},
		{"exports", func(s conn.Stats) int { return s.Exports }},
		{"imports", func(s conn.Stats) int { return s.Imports }},
		{"embargoes", func(s conn.Stats) int { return s.Embargoes }},
	}
	sets := make([]metric.ObserveOption, len(tables))
	for i, t := range tables {
		sets[i] = metric.WithAttributes(metering.AttrVat.String(v.opts.Name), metering.AttrTable.String(t.name))
	}
	m.reg, _ = metering.Meter(mp).RegisterCallback(func(_ context.Context, o metric.Observer) error {
		var sum [5]int
		m.mu.Lock()
		for c := range m.live {
			st := c.Stats()
			for i, t := range tables {
				sum[i] += t.of(st)
			}
		}
		m.mu.Unlock()
		for i := range tables {
			o.ObserveInt64(g, int64(sum[i]), sets[i])
		}
		return nil
	}, g)
}

// stopMeters stops observing the vat's tables.
func (v *Vat) stopMeters() {
	if v.meters.reg != nil {
		_ = v.meters.reg.Unregister()
	}
}

// connUp and connDown keep the set of connections the gauge reads.
func (v *Vat) connUp(c *conn.Conn) {
	if m := &v.meters; m.in != nil {
		m.mu.Lock()
		m.live[c] = struct{}{}
		m.mu.Unlock()
	}
}

func (v *Vat) connDown(c *conn.Conn) {
	if m := &v.meters; m.in != nil {
		m.mu.Lock()
		delete(m.live, c)
		m.mu.Unlock()
	}
}

// meterRedial counts a supervised client's dial (its outcome) or its
// escalation.
func (v *Vat) meterRedial(outcome string) {
	m := v.meters.in
	if m == nil {
		return
	}
	if outcome == "escalated" {
		m.Escalations.Add(context.Background(), 1)
		return
	}
	m.Redials.Add(context.Background(), 1, metering.With(metering.AttrOutcome, outcome))
}
