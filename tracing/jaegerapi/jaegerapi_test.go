package jaegerapi

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/vatactor/vatactor/tracing/spantree"
)

// What Jaeger's /api/traces answers for a call across two services
// (trimmed to the fields read).
const sample = `{"data":[{"traceID":"0af7651916cd43dd8448eb211c80319c","spans":[
 {"traceID":"0af7651916cd43dd8448eb211c80319c","spanID":"b7ad6b7169203331","operationName":"Echo.echo",
  "references":[],"startTime":1700000000000000,"duration":800,"processID":"p1",
  "tags":[{"key":"span.kind","type":"string","value":"client"},{"key":"rpc.response.status_code","type":"string","value":"OK"}]},
 {"traceID":"0af7651916cd43dd8448eb211c80319c","spanID":"00f067aa0ba902b7","operationName":"Echo.echo",
  "references":[{"refType":"CHILD_OF","traceID":"0af7651916cd43dd8448eb211c80319c","spanID":"b7ad6b7169203331"}],
  "startTime":1700000000000100,"duration":400,"processID":"p2",
  "tags":[{"key":"span.kind","type":"string","value":"server"},{"key":"rpc.response.status_code","type":"string","value":"OK"},
          {"key":"capnp.answer.id","type":"int64","value":3}]}],
 "processes":{"p1":{"serviceName":"client"},"p2":{"serviceName":"server"}}}]}`

func TestFindAndPrint(t *testing.T) {
	var asked string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked = r.URL.RequestURI()
		_, _ = w.Write([]byte(sample))
	}))
	defer srv.Close()
	traces, err := Find(context.Background(), srv.URL, "client", 5, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(asked, "/api/traces?") || !strings.Contains(asked, "service=client") || !strings.Contains(asked, "limit=5") {
		t.Errorf("asked %s", asked)
	}
	if len(traces) != 1 || len(traces[0].Spans) != 2 {
		t.Fatalf("traces %+v", traces)
	}
	tr := traces[0]
	server := tr.Spans[1]
	if server.Parent() != tr.Spans[0].SpanID || tr.Service(server) != "server" || server.Tag("capnp.answer.id") != "3" {
		t.Errorf("server span %+v", server)
	}
	got := spantree.Format(tr.ReadOnlySpans())
	want := "trace 0af7651916cd43dd8448eb211c80319c\n" +
		"  Echo.echo (client) [client] OK  800µs\n" +
		"  └─ Echo.echo (server) [server] OK  400µs\n"
	if got != want {
		t.Errorf("tree:\n%s\nwant:\n%s", got, want)
	}
}

func TestFindSaysWhatFailed(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no such service", http.StatusBadRequest)
	}))
	defer srv.Close()
	if _, err := Find(context.Background(), srv.URL, "x", 1, time.Hour); err == nil || !strings.Contains(err.Error(), "no such service") {
		t.Errorf("err = %v", err)
	}
}
