package otlp_test

import (
	"context"
	"strings"
	"testing"

	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/vatactor/vatactor/tracing/otlp"
)

func TestSetupNeedsAnEndpoint(t *testing.T) {
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
	if otlp.Configured() {
		t.Fatal("Configured with no endpoint")
	}
	if _, err := otlp.Setup(context.Background(), "svc"); err == nil || !strings.Contains(err.Error(), "OTEL_EXPORTER_OTLP_ENDPOINT") {
		t.Fatalf("Setup without endpoint: %v", err)
	}
}

func TestSetupProtocols(t *testing.T) {
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
	for _, proto := range []string{"", "http/protobuf", "grpc"} {
		t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", proto)
		tp, err := otlp.Setup(context.Background(), "svc")
		if err != nil {
			t.Fatalf("%q: %v", proto, err)
		}
		// Nothing was recorded: shutting down exports nothing.
		if err := tp.Shutdown(context.Background()); err != nil {
			t.Fatalf("%q: shutdown: %v", proto, err)
		}
	}
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")
	if _, err := otlp.Setup(context.Background(), "svc"); err == nil {
		t.Fatal("unknown protocol accepted")
	}
}

func TestResourceServiceName(t *testing.T) {
	t.Setenv("OTEL_SERVICE_NAME", "")
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test")
	r, err := otlp.Resource(context.Background(), "given")
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := r.Set().Value(semconv.ServiceNameKey); v.AsString() != "given" {
		t.Errorf("service.name = %q, want the given name", v.AsString())
	}
	if v, _ := r.Set().Value("deployment.environment.name"); v.AsString() != "test" {
		t.Errorf("OTEL_RESOURCE_ATTRIBUTES not applied: %v", r)
	}
	t.Setenv("OTEL_SERVICE_NAME", "from-env")
	r, _ = otlp.Resource(context.Background(), "given")
	if v, _ := r.Set().Value(semconv.ServiceNameKey); v.AsString() != "from-env" {
		t.Errorf("service.name = %q, want OTEL_SERVICE_NAME's", v.AsString())
	}
}
