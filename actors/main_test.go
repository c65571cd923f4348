package actors_test

import (
	"testing"

	"go.opentelemetry.io/otel"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// Every test of this package runs with a recording tracer provider
	// (spans are made and dropped), so every Call on the wire carries a
	// sidecar with its trace context: the interop tests against go-capnp
	// and the C++ reference prove those peers unaffected. Package conn's
	// tests run with the default, non-recording provider.
	otel.SetTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample())))
	// And with a recording meter provider (read by no one): every
	// connection measures its calls, messages and end.
	otel.SetMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader())))
	goleak.VerifyTestMain(m, notLeaks...)
}

// notLeaks are goroutines that are not ours and end by themselves, or
// not at all for reasons outside this project.
var notLeaks = []goleak.Option{
	goleak.IgnoreAnyFunction("github.com/asynkron/protoactor-go/actor.(*deadLetterProcess).init.func1"),
	// protoactor's dead-letter log throttle: a goroutine that ends by itself within a second.
	goleak.IgnoreAnyFunction("github.com/asynkron/protoactor-go/actor.NewDeadLetter.NewThrottle.func4.1"),
	// toxiproxy's (the fault suite's proxy): a link cut by a toxic can
	// leave a stub blocked on its output, or the link's reader on the
	// stub's input, until the process ends.
	goleak.IgnoreTopFunction("github.com/Shopify/toxiproxy/v2/toxics.(*NoopToxic).Pipe"),
	goleak.IgnoreTopFunction("github.com/Shopify/toxiproxy/v2/stream.(*ChanWriter).Write"),
}
