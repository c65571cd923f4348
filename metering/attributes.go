package metering

import (
	"maps"
	"sync"
	"sync/atomic"

	"capnproto.org/go/capnp/v3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/vatactor/vatactor/tracing"
)

// callKey: a method known by name, by its ids, and a status.
type callKey struct {
	iface  uint64
	method uint16
	code   string
}

// callSets holds the attributes of the methods known by name, copied on
// write: a call's lookup is one atomic load and a map read. Methods whose
// names are not known are not kept (their ids come from peers, any
// number of them): they share otherSets, one per status.
var (
	callSets   atomic.Pointer[map[callKey][]metric.RecordOption]
	callSetsMu sync.Mutex
	otherSets  sync.Map // status → []metric.RecordOption
)

// CallAttributes are the attributes of the duration of a call of m that
// ended with err (nil: returned), made once per method and status:
// rpc.system.name, rpc.method (_OTHER for a method whose names are not
// known, in m or to tracing.LookupMethod), rpc.response.status_code and,
// when err is not nil, error.type. Pass them as h.Record(ctx, v, opts...):
// the slice is shared (do not modify it), so recording allocates nothing
// for it.
func CallAttributes(m capnp.Method, err error) []metric.RecordOption {
	k := callKey{iface: m.InterfaceID, method: m.MethodID, code: tracing.StatusCode(err)}
	if sets := callSets.Load(); sets != nil {
		if o, ok := (*sets)[k]; ok {
			return o
		}
	}
	if m.InterfaceName == "" || m.MethodName == "" {
		m, _ = tracing.LookupMethod(m.InterfaceID, m.MethodID)
	}
	if m.InterfaceName == "" || m.MethodName == "" {
		if o, ok := otherSets.Load(k.code); ok {
			return o.([]metric.RecordOption)
		}
		o, _ := otherSets.LoadOrStore(k.code, callSet("_OTHER", k.code, err))
		return o.([]metric.RecordOption)
	}
	callSetsMu.Lock()
	defer callSetsMu.Unlock()
	old := callSets.Load()
	if old != nil {
		if o, ok := (*old)[k]; ok {
			return o
		}
	}
	sets := make(map[callKey][]metric.RecordOption, 1)
	if old != nil {
		maps.Copy(sets, *old)
	}
	o := callSet(tracing.SpanName(m), k.code, err) // the name as on the call's spans
	sets[k] = o
	callSets.Store(&sets)
	return o
}

func callSet(method, code string, err error) []metric.RecordOption {
	attrs := []attribute.KeyValue{tracing.SystemName, semconv.RPCMethod(method), semconv.RPCResponseStatusCode(code)}
	if err != nil {
		attrs = append(attrs, semconv.ErrorTypeKey.String(code))
	}
	return []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(attrs...))}
}

type keyed struct {
	key   attribute.Key
	value string
}

var oneSets sync.Map // keyed → metric.MeasurementOption

// With is the measurement option of one string attribute, made once per
// key and value: for attributes whose values are few (message types,
// phases, roles).
func With(key attribute.Key, value string) metric.MeasurementOption {
	k := keyed{key, value}
	if o, ok := oneSets.Load(k); ok {
		return o.(metric.MeasurementOption)
	}
	o, _ := oneSets.LoadOrStore(k, metric.WithAttributeSet(attribute.NewSet(key.String(value))))
	return o.(metric.MeasurementOption)
}
