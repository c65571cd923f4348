package metering

import (
	"sync"

	"capnproto.org/go/capnp/v3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/vatactor/vatactor/tracing"
)

// callKey: a named method by its ids (an unnamed one, whose ids may come
// from any peer, is all one: _OTHER), and a status.
type callKey struct {
	iface  uint64
	method uint16
	named  bool
	code   string
}

var callSets sync.Map // callKey → []metric.RecordOption

// CallAttributes are the attributes of the duration of a call of m that
// ended with err (nil: returned), made once per method name and status:
// rpc.system.name, rpc.method (_OTHER for a method whose names are not
// known), rpc.response.status_code and, when err is not nil, error.type.
// Pass them as h.Record(ctx, v, opts...): the slice is shared (do not
// modify it), so recording allocates nothing for it.
func CallAttributes(m capnp.Method, err error) []metric.RecordOption {
	k := callKey{code: tracing.StatusCode(err)}
	if m.InterfaceName != "" && m.MethodName != "" {
		k.iface, k.method, k.named = m.InterfaceID, m.MethodID, true
	}
	if o, ok := callSets.Load(k); ok {
		return o.([]metric.RecordOption)
	}
	name := "_OTHER"
	if k.named {
		name = tracing.SpanName(m) // as on the call's spans
	}
	attrs := []attribute.KeyValue{tracing.SystemName, semconv.RPCMethod(name), semconv.RPCResponseStatusCode(k.code)}
	if err != nil {
		attrs = append(attrs, semconv.ErrorTypeKey.String(k.code))
	}
	o, _ := callSets.LoadOrStore(k, []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(attrs...))})
	return o.([]metric.RecordOption)
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
