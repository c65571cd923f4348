package metering

import (
	"sync"

	"capnproto.org/go/capnp/v3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/vatactor/vatactor/tracing"
)

type callKey struct{ method, code string }

var callSets sync.Map // callKey → metric.MeasurementOption

// CallAttributes are the attributes of the duration of a call of m that
// ended with err (nil: returned), made once per method name and status:
// rpc.system.name, rpc.method (_OTHER for a method whose names are not
// known), rpc.response.status_code and, when err is not nil, error.type.
func CallAttributes(m capnp.Method, err error) metric.MeasurementOption {
	k := callKey{method: "_OTHER", code: tracing.StatusCode(err)}
	if m.InterfaceName != "" && m.MethodName != "" {
		k.method = m.String()
	}
	if o, ok := callSets.Load(k); ok {
		return o.(metric.MeasurementOption)
	}
	attrs := []attribute.KeyValue{tracing.SystemName, semconv.RPCMethod(k.method), semconv.RPCResponseStatusCode(k.code)}
	if err != nil {
		attrs = append(attrs, semconv.ErrorTypeKey.String(k.code))
	}
	o, _ := callSets.LoadOrStore(k, metric.WithAttributeSet(attribute.NewSet(attrs...)))
	return o.(metric.MeasurementOption)
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
