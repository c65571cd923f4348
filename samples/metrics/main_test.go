package main

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// protoactor's dead-letter goroutines (see package actors' tests).
		goleak.IgnoreAnyFunction("github.com/asynkron/protoactor-go/actor.(*deadLetterProcess).init.func1"),
		goleak.IgnoreAnyFunction("github.com/asynkron/protoactor-go/actor.NewDeadLetter.NewThrottle.func4.1"))
}

// series finds the value of the one series whose name is name and whose
// labels include every one of labels ("key=\"value\"").
func series(t *testing.T, lines []string, name string, labels ...string) string {
	t.Helper()
	var found []string
	for _, l := range lines {
		if !strings.HasPrefix(l, name+"{") {
			continue
		}
		ok := true
		for _, lb := range labels {
			if !strings.Contains(l, lb) {
				ok = false
			}
		}
		if ok {
			found = append(found, l)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d series %s %v, want 1: %v", len(found), name, labels, found)
	}
	return found[0][strings.LastIndexByte(found[0], ' ')+1:]
}

// TestMetricsPage scrapes the sample's /metrics over real HTTP.
func TestMetricsPage(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	if err := s.Calls(ctx, 3); err != nil {
		t.Fatal(err)
	}
	lines, err := s.Scrape(ctx)
	if err != nil {
		t.Fatal(err)
	}
	echo := `rpc_method="Echo.echo"`
	for _, side := range []string{"rpc_client_call_duration_seconds", "rpc_server_call_duration_seconds"} {
		if v := series(t, lines, side+"_count", echo, `rpc_response_status_code="OK"`, `rpc_system_name="capnp"`); v != "3" {
			t.Errorf("%s echo OK count = %s, want 3", side, v)
		}
		if v := series(t, lines, side+"_count", `rpc_method="Echo.fail"`, `error_type="FAILED"`); v != "1" {
			t.Errorf("%s fail count = %s, want 1", side, v)
		}
		// Buckets fine enough for loopback calls: the first is 10 µs.
		series(t, lines, side+"_bucket", echo, `le="1e-05"`)
	}
	if v := series(t, lines, "vatactor_connection_ended_total", `capnp_conn_role="client"`, `capnp_conn_expected="true"`, `capnp_conn_reason_kind="LocalShutdown"`); v != "1" {
		t.Errorf("client ends = %s", v)
	}
	if v := series(t, lines, "vatactor_connection_ended_total", `capnp_conn_role="server"`, `capnp_conn_expected="true"`, `capnp_conn_reason_kind="PeerEpitaph"`); v != "1" {
		t.Errorf("server ends = %s", v)
	}
	for _, l := range lines {
		if strings.Contains(l, `capnp_conn_expected="false"`) {
			t.Errorf("a clean hang-up counted as unexpected: %s", l)
		}
	}
	for _, role := range []string{"client", "server"} {
		if v := series(t, lines, "vatactor_connection_open", `capnp_conn_role="`+role+`"`); v != "0" {
			t.Errorf("%s connections open = %s after the end", role, v)
		}
	}
	series(t, lines, "vatactor_table_size", `capnp_vat="server"`, `capnp_table="exports"`)
}

// TestRun: the command prints the page's address and its series.
func TestRun(t *testing.T) {
	var out bytes.Buffer
	if err := run("127.0.0.1:0", false, &out); err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^metrics on http://127\.0\.0\.1:\d+/metrics$`).Match(out.Bytes()) ||
		!strings.Contains(out.String(), "vatactor_connection_ended_total{") {
		t.Errorf("output:\n%s", out.String())
	}
}
