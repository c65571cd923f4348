package metering_test

import (
	"context"
	"errors"
	"testing"

	"capnproto.org/go/capnp/v3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/vatactor/vatactor/metering"
	"github.com/vatactor/vatactor/tracing"
)

func TestNoopProvidersMakeNoInstruments(t *testing.T) {
	for _, mp := range []metric.MeterProvider{nil, noop.NewMeterProvider()} { // nil: the global one, not set
		if metering.For(mp) != nil {
			t.Errorf("%T: instruments made for a provider that records nothing", mp)
		}
	}
	mp := sdkmetric.NewMeterProvider()
	defer mp.Shutdown(context.Background())
	if in := metering.For(mp); in == nil || metering.For(mp) != in {
		t.Error("an SDK provider's instruments are made once")
	}
}

func attrsOf(opts []metric.RecordOption) attribute.Set {
	return metric.NewRecordConfig(opts).Attributes()
}

func TestCallAttributes(t *testing.T) {
	named := capnp.Method{InterfaceID: 0x1234, MethodID: 2, InterfaceName: "x.capnp:Svc", MethodName: "get"}
	set := attrsOf(metering.CallAttributes(named, nil))
	if v, _ := set.Value("rpc.method"); v.AsString() != "Svc.get" {
		t.Errorf("rpc.method = %q", v.AsString())
	}
	if v, _ := set.Value("rpc.response.status_code"); v.AsString() != "OK" {
		t.Errorf("status = %q", v.AsString())
	}
	if set.HasValue("error.type") {
		t.Error("error.type on a call that returned")
	}
	// A method the peer named by ids alone: one series, whatever the ids.
	a := metering.CallAttributes(capnp.Method{InterfaceID: 1, MethodID: 1}, errors.New("boom"))
	b := metering.CallAttributes(capnp.Method{InterfaceID: 2, MethodID: 9}, errors.New("boom"))
	if &a[0] != &b[0] {
		t.Error("unnamed methods make a series each")
	}
	set = attrsOf(a)
	if v, _ := set.Value("rpc.method"); v.AsString() != "_OTHER" {
		t.Errorf("rpc.method of an unnamed method = %q, want _OTHER", v.AsString())
	}
	if v, _ := set.Value("error.type"); v.AsString() != "FAILED" {
		t.Errorf("error.type = %q", v.AsString())
	}
	// Ids alone, of a method whose names this process knows (an incoming
	// call's): the names.
	tracing.RegisterMethods(capnp.Method{InterfaceID: 0x5678, MethodID: 1, InterfaceName: "y.capnp:Store", MethodName: "put"})
	for range 2 { // made, then found
		set = attrsOf(metering.CallAttributes(capnp.Method{InterfaceID: 0x5678, MethodID: 1}, nil))
		if v, _ := set.Value("rpc.method"); v.AsString() != "Store.put" {
			t.Errorf("rpc.method of a registered method named by ids = %q", v.AsString())
		}
	}
}

// TestMessageCounts: each connection counts its own messages; a
// collection sums the open connections' and the ended ones'.
func TestMessageCounts(t *testing.T) {
	r := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r))
	defer mp.Shutdown(context.Background())
	in := metering.For(mp)
	// Two connections, one of them ended: the totals are the sum.
	a, b := in.Messages.Open(), in.Messages.Open()
	a.Count(true, metering.KindCall, 100)
	b.Count(true, metering.KindCall, 50)
	b.Count(false, metering.KindReturn, 70)
	in.Messages.Close(b)
	in.Messages.Close(b) // twice: counted once
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
				k, _ := dp.Attributes.Value(metering.AttrMessageType)
				got[m.Name+" "+k.AsString()] = dp.Value
			}
		}
	}
	want := map[string]int64{
		metering.MessagesSent + " call":       2,
		metering.MessagesReceived + " return": 1,
		metering.BytesSent + " ":              150,
		metering.BytesReceived + " ":          70,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %d, want %d (all: %v)", k, got[k], v, got)
		}
	}
}
