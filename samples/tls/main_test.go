package main

import (
	"bytes"
	"context"
	"errors"
	"io"
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

// TestMutualTLS: a call over mutual TLS, a graceful end that reads as EOF
// on both sides (close_notify, then the FIN: no reset), and a client
// without a certificate refused before any RPC.
func TestMutualTLS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Each client has a capability of its own, and its calls' context says
	// who it is.
	for _, name := range []string{"alice", "bob"} {
		want := "hello over mutual TLS (capability for " + name + ", called by " + name + ")"
		if got := res.Echo[name]; got != want {
			t.Errorf("%s: echo %q, want %q", name, got, want)
		}
	}
	for side, rep := range map[string]struct {
		expected bool
		end      error
	}{"client": {res.Client.Reason.Expected(), res.ClientEnd}, "server": {res.Server.Reason.Expected(), res.ServerEnd}} {
		if !rep.expected {
			t.Errorf("%s: the end was not an expected one", side)
		}
		if !errors.Is(rep.end, io.EOF) {
			t.Errorf("%s: reading ended with %v, want EOF (close_notify and FIN)", side, rep.end)
		}
	}
	if res.Refused == nil || !strings.Contains(res.Refused.Error(), "certificate required") {
		t.Errorf("a client without a certificate: %v", res.Refused)
	}
}

func TestRun(t *testing.T) {
	var out bytes.Buffer
	if err := run(&out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), `alice: "hello over mutual TLS (capability for alice, called by alice)"`) {
		t.Errorf("output:\n%s", out.String())
	}
}
