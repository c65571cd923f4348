package main

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vatactor/vatactor/tracing/jaegerapi"
)

// The end-to-end test needs a running Jaeger (bash scripts/jaeger.sh
// start), on the ports that script takes from the environment. Without
// one it is skipped, unless VATACTOR_REQUIRE_JAEGER is set, as .ci/run
// does.
var (
	jaegerAPI    = "http://127.0.0.1:" + envOr("JAEGER_API_PORT", "16686")
	jaegerHealth = "http://127.0.0.1:" + envOr("JAEGER_HEALTH_PORT", "13133") + "/status"
	jaegerOTLP   = "http://127.0.0.1:" + envOr("JAEGER_OTLP_HTTP_PORT", "4318")
)

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func requireJaeger(t *testing.T) {
	t.Helper()
	client := http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get(jaegerHealth)
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return
		}
		err = fmt.Errorf("health: %s", resp.Status)
	}
	if os.Getenv("VATACTOR_REQUIRE_JAEGER") == "" {
		t.Skipf("skipping: no Jaeger on 127.0.0.1 (%v); start one with `bash scripts/jaeger.sh start` (builds it from the Go module proxy)", err)
	}
	t.Fatalf("Jaeger required but not reachable: %v", err)
}

// TestJaegerEndToEnd runs the sample exporting over OTLP to a real Jaeger,
// finds its trace through the query API by service, and checks that the
// server's spans are children of the client's across the wire and that
// the shutdown steps are there, in order.
func TestJaegerEndToEnd(t *testing.T) {
	requireJaeger(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", jaegerOTLP)
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
	t.Setenv("OTEL_SERVICE_NAME", "") // the sample names its two services
	var out strings.Builder
	id, err := run(&out)
	t.Logf("sample output:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}
	tr := findTrace(t, "vatactor-client", id.String(), 30)

	service := tr.Service
	byID := map[string]jaegerapi.Span{}
	for _, s := range tr.Spans {
		byID[s.SpanID] = s
	}
	find := func(op, svc, kind string) []jaegerapi.Span {
		var found []jaegerapi.Span
		for _, s := range tr.Spans {
			if s.Operation == op && service(s) == svc && (kind == "" || s.Tag("span.kind") == kind) {
				found = append(found, s)
			}
		}
		return found
	}

	// Across the wire: every server span of a call is a child of a client
	// span of the same call in the other service.
	servers := 0
	for _, s := range tr.Spans {
		if s.Tag("span.kind") != "server" {
			continue
		}
		servers++
		p, ok := byID[s.Parent()]
		if !ok || p.Operation != s.Operation || p.Tag("span.kind") != "client" || service(p) == service(s) {
			t.Errorf("server span %s [%s] has parent %+v, want the client span of the same call in the other vat", s.Operation, service(s), p.Operation)
		}
	}
	if servers < 6 {
		t.Errorf("%d server spans in the trace, want at least 6 (bootstrap, echo, self, pipelined echo, callBack, Callback.call, fail)", servers)
	}
	if got := find("Echo.echo", "vatactor-server", "server"); len(got) != 2 {
		t.Errorf("%d Echo.echo server spans, want 2", len(got))
	}
	cb := find("Callback.call", "vatactor-client", "server")
	if len(cb) != 1 || service(byID[byID[cb[0].Parent()].Parent()]) != "vatactor-server" {
		t.Errorf("the callback's server span is not under the server's callBack: %+v", cb)
	}
	if f := find("Echo.fail", "vatactor-server", "server"); len(f) != 1 || f[0].Tag("rpc.response.status_code") != "OVERLOADED" || f[0].Tag("error.type") != "OVERLOADED" {
		t.Errorf("Echo.fail server span = %+v, want status and error.type OVERLOADED", f)
	}

	// The connection spans: the server's is a child of the client's.
	cc, sc := find("capnp.conn", "vatactor-client", ""), find("capnp.conn", "vatactor-server", "")
	if len(cc) != 1 || len(sc) != 1 || sc[0].Parent() != cc[0].SpanID {
		t.Fatalf("connection spans client %d server %d, or the server's is not the client's child", len(cc), len(sc))
	}
	// The shutdown steps, in order, under each side's shutdown span.
	want := []string{"drain", "stopQuestions", "stopExports", "releaseImports", "sendEpitaph", "closeWrite", "linger", "closeSocket"}
	for _, conn := range []jaegerapi.Span{cc[0], sc[0]} {
		var shutdown *jaegerapi.Span
		for _, s := range tr.Spans {
			if s.Operation == "shutdown" && s.Parent() == conn.SpanID {
				shutdown = &s
			}
		}
		if shutdown == nil {
			t.Fatalf("no shutdown span under %s's connection", service(conn))
		}
		var steps []jaegerapi.Span
		for _, s := range tr.Spans {
			if s.Parent() == shutdown.SpanID {
				steps = append(steps, s)
			}
		}
		slices.SortStableFunc(steps, func(a, b jaegerapi.Span) int { return cmp.Compare(a.StartTime, b.StartTime) })
		var names []string
		for _, s := range steps {
			names = append(names, s.Operation)
		}
		if !slices.Equal(names, want) {
			t.Errorf("%s shutdown steps = %v, want %v", service(conn), names, want)
		}
	}
}

// findTrace polls Jaeger's API for the trace with id among the service's
// traces until it holds at least spans spans and two polls in a row see
// the same number (Jaeger stores what it receives in batches).
func findTrace(t *testing.T, service, id string, spans int) jaegerapi.Trace {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	var last string
	seen := -1
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		traces, err := jaegerapi.Find(ctx, jaegerAPI, service, 50, time.Hour)
		cancel()
		if err == nil {
			for _, tr := range traces {
				if tr.TraceID != id {
					continue
				}
				if len(tr.Spans) >= spans && len(tr.Spans) == seen {
					return tr
				}
				seen = len(tr.Spans)
				last = fmt.Sprintf("trace has %d spans", len(tr.Spans))
			}
			if last == "" {
				last = fmt.Sprintf("%d traces of %s, none is %s", len(traces), service, id)
			}
		} else {
			last = err.Error()
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("trace %s not found in Jaeger: %s", id, last)
	return jaegerapi.Trace{}
}
