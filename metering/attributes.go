package metering

import (
	"sync"

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

var (
	callSets  sync.Map // callKey → []metric.RecordOption, for methods known by name
	otherSets sync.Map // status → []metric.RecordOption, for all the others
)

// CallAttributes are the attributes of the duration of a call of m that
// ended with err (nil: returned), made once per method and status:
// rpc.system.name, rpc.method (_OTHER for a method whose names are not
// known, in m or to tracing.LookupMethod), rpc.response.status_code and,
// when err is not nil, error.type. A method is found by its ids, so one
// given by ids alone (an incoming call's) costs one lookup; one whose
// names are unknown is not kept (its ids come from a peer, any number of
// them). Pass them as h.Record(ctx, v, opts...): the slice is shared (do
// not modify it), so recording allocates nothing for it.
func CallAttributes(m capnp.Method, err error) []metric.RecordOption {
	k := callKey{iface: m.InterfaceID, method: m.MethodID, code: tracing.StatusCode(err)}
	if o, ok := callSets.Load(k); ok {
		return o.([]metric.RecordOption)
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
	o, _ := callSets.LoadOrStore(k, callSet(tracing.SpanName(m), k.code, err)) // the name as on the call's spans
	return o.([]metric.RecordOption)
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
