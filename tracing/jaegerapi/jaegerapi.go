// Package jaegerapi reads traces back from the HTTP API of a Jaeger query
// service (/api/traces), for tests and tools that check what vatactor
// sent: find a service's traces, walk their spans, or turn them into
// OpenTelemetry spans to print with package spantree.
package jaegerapi

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkresource "go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// Trace is one trace as the API returns it.
type Trace struct {
	TraceID   string             `json:"traceID"`
	Spans     []Span             `json:"spans"`
	Processes map[string]Process `json:"processes"`
}

// Span is one span of a Trace. Times are in microseconds.
type Span struct {
	TraceID    string      `json:"traceID"`
	SpanID     string      `json:"spanID"`
	Operation  string      `json:"operationName"`
	References []Reference `json:"references"`
	StartTime  int64       `json:"startTime"`
	Duration   int64       `json:"duration"`
	ProcessID  string      `json:"processID"`
	Tags       []Tag       `json:"tags"`
}

// Reference links a span to another: CHILD_OF its parent.
type Reference struct {
	RefType string `json:"refType"`
	TraceID string `json:"traceID"`
	SpanID  string `json:"spanID"`
}

// Process is the service a span came from.
type Process struct {
	ServiceName string `json:"serviceName"`
	Tags        []Tag  `json:"tags"`
}

// Tag is an attribute of a span.
type Tag struct {
	Key   string `json:"key"`
	Type  string `json:"type"` // string, bool, int64, float64
	Value any    `json:"value"`
}

// Parent is the id of the span's parent ("" for a root).
func (s Span) Parent() string {
	for _, r := range s.References {
		if r.RefType == "CHILD_OF" {
			return r.SpanID
		}
	}
	return ""
}

// Tag is the value of the span's tag k, as text ("" when it has none).
func (s Span) Tag(k string) string {
	for _, t := range s.Tags {
		if t.Key == k {
			return fmt.Sprint(t.Value)
		}
	}
	return ""
}

// Service is the name of the service span s came from.
func (t Trace) Service(s Span) string { return t.Processes[s.ProcessID].ServiceName }

// Find returns the traces that have spans of service, the newest first,
// at most limit, started within lookback, from the Jaeger query service at
// api (for example http://127.0.0.1:16686).
func Find(ctx context.Context, api, service string, limit int, lookback time.Duration) ([]Trace, error) {
	q := url.Values{"service": {service}, "limit": {strconv.Itoa(limit)},
		"start": {strconv.FormatInt(time.Now().Add(-lookback).UnixMicro(), 10)}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, api+"/api/traces?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("jaeger: GET %s: %s: %s", req.URL, resp.Status, body)
	}
	var got struct {
		Data []Trace `json:"data"`
	}
	if err := json.Unmarshal(body, &got); err != nil {
		return nil, fmt.Errorf("jaeger: %s: %w", req.URL, err)
	}
	// Newest first: by the earliest span of each trace.
	start := func(t Trace) int64 {
		var min int64
		for i, s := range t.Spans {
			if i == 0 || s.StartTime < min {
				min = s.StartTime
			}
		}
		return min
	}
	traces := got.Data
	for i := 1; i < len(traces); i++ {
		for j := i; j > 0 && start(traces[j]) > start(traces[j-1]); j-- {
			traces[j], traces[j-1] = traces[j-1], traces[j]
		}
	}
	return traces, nil
}

// ReadOnlySpans turns the trace's spans into OpenTelemetry spans (name,
// kind, service, times, attributes, status), as spantree.Format prints
// them. Spans whose ids do not parse are left out.
func (t Trace) ReadOnlySpans() []sdktrace.ReadOnlySpan {
	stubs := make(tracetest.SpanStubs, 0, len(t.Spans))
	for _, s := range t.Spans {
		tid, err1 := traceID(s.TraceID)
		sid, err2 := spanID(s.SpanID)
		if err1 != nil || err2 != nil {
			continue
		}
		st := tracetest.SpanStub{
			Name:        s.Operation,
			SpanContext: trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled}),
			StartTime:   time.UnixMicro(s.StartTime),
			EndTime:     time.UnixMicro(s.StartTime + s.Duration),
			Resource:    sdkresource.NewSchemaless(semconv.ServiceName(t.Service(s))),
		}
		if p, err := spanID(s.Parent()); err == nil {
			st.Parent = trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: p, TraceFlags: trace.FlagsSampled})
		}
		for _, tag := range s.Tags {
			switch tag.Key {
			case "span.kind":
				st.SpanKind = trace.ValidateSpanKind(trace.SpanKind(kinds[fmt.Sprint(tag.Value)]))
			case "otel.status_code":
				if tag.Value == "ERROR" {
					st.Status.Code = codes.Error
				}
			case "otel.status_description":
				st.Status.Description = fmt.Sprint(tag.Value)
			default:
				st.Attributes = append(st.Attributes, attributeOf(tag))
			}
		}
		stubs = append(stubs, st)
	}
	return stubs.Snapshots()
}

var kinds = map[string]int{"internal": 1, "server": 2, "client": 3, "producer": 4, "consumer": 5}

func attributeOf(t Tag) attribute.KeyValue {
	k := attribute.Key(t.Key)
	switch v := t.Value.(type) {
	case bool:
		return k.Bool(v)
	case float64: // JSON numbers
		if t.Type == "int64" {
			return k.Int64(int64(v))
		}
		return k.Float64(v)
	}
	return k.String(fmt.Sprint(t.Value))
}

func traceID(s string) (trace.TraceID, error) {
	var id trace.TraceID
	b, err := hex.DecodeString(fmt.Sprintf("%032s", s))
	if err != nil || len(b) != len(id) {
		return id, fmt.Errorf("trace id %q", s)
	}
	copy(id[:], b)
	return id, nil
}

func spanID(s string) (trace.SpanID, error) {
	var id trace.SpanID
	b, err := hex.DecodeString(fmt.Sprintf("%016s", s))
	if err != nil || len(b) != len(id) || s == "" {
		return id, fmt.Errorf("span id %q", s)
	}
	copy(id[:], b)
	return id, nil
}
