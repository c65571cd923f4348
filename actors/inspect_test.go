package actors_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"

	"github.com/vatactor/vatactor/conn"
	"github.com/vatactor/vatactor/interop"
	"github.com/vatactor/vatactor/supervisor"
)

// TestInspect: both sides' snapshots with a call in flight and one
// pipelined on an answer not yet returned, then after the end.
func TestInspect(t *testing.T) {
	p := newPair(t, conn.Options{}, conn.Options{})
	ctx := context.Background()
	f, release := startWait(ctx, p.echo, 60_000)
	// self() may return before the wait on its answer is made, which then
	// goes to the returned capability, not pipelined: made again then.
	var (
		self                      interop.Echo_self_Results_Future
		piped                     interop.Echo_wait_Results_Future
		releaseSelf, releasePiped capnp.ReleaseFunc
	)
	for attempt := 1; ; attempt++ {
		self, releaseSelf = p.echo.Self(ctx, func(p interop.Echo_self_Params) error { return p.SetTag("t:") })
		piped, releasePiped = startWait(ctx, self.Echo(), 60_000)
		snap, err := p.clientConn.Inspect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if count(snap.Questions, func(q conn.QuestionSnapshot) bool { return q.Method == "Echo.wait" && q.Pipelined }) == 1 {
			break
		}
		releasePiped()
		releaseSelf()
		_, _ = piped.Struct() // cancelled: its question leaves the table
		if attempt == 10 {
			t.Fatal("self() returned before the wait on its answer was made, 10 times")
		}
	}

	var client, server conn.Snapshot
	deadline := time.Now().Add(10 * time.Second)
	for {
		var err error
		if client, err = p.clientConn.Inspect(ctx); err != nil {
			t.Fatal(err)
		}
		if server, err = p.serverConn.Inspect(ctx); err != nil {
			t.Fatal(err)
		}
		// Both waits running and self() answered (its Echo exported).
		if count(server.Answers, func(a conn.AnswerSnapshot) bool { return a.Method == "Echo.wait" && a.State == "running" }) == 2 &&
			server.Budget.Running == 2 && len(server.Exports) >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server never ran both waits with self() answered: %+v, %+v", server.Answers, server.Budget)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if client.State != "open" || client.Role != "client" || server.Role != "server" || client.ID == "" || server.ID == "" {
		t.Errorf("client %s %s %s, server %s %s", client.ID, client.State, client.Role, server.ID, server.Role)
	}
	waits := slices.DeleteFunc(slices.Clone(client.Questions), func(q conn.QuestionSnapshot) bool { return q.Method != "Echo.wait" })
	if len(waits) != 2 || waits[0].Pipelined == waits[1].Pipelined || waits[0].State != "waiting" || waits[0].Age <= 0 {
		t.Errorf("the client's waits: %+v, want two waiting, one of them pipelined", waits)
	}
	if count(client.Questions, func(q conn.QuestionSnapshot) bool { return q.Method == "Echo.self" }) != 1 {
		t.Errorf("the client's questions: %+v, want Echo.self", client.Questions)
	}
	if len(server.Exports) < 2 || len(client.Imports) < 1 || client.Imports[0].LocalRefs < 1 {
		t.Errorf("exports %+v, imports %+v", server.Exports, client.Imports)
	}
	if b := server.Budget; b.Running != 2 || b.MaxAnswers != conn.DefaultMaxAnswers || b.CallBytes <= 0 || b.HeldAnswers < 3 {
		t.Errorf("the server's budget: %+v", b)
	}
	if server.Flow.MaxSendQueue <= 0 {
		t.Errorf("flow: %+v", server.Flow)
	}

	releasePiped()
	releaseSelf()
	release()
	_, _ = f.Struct()
	_, _ = piped.Struct()
	if _, err := p.clientConn.Shutdown(ctx, supervisor.Epitaph{Code: supervisor.OK}); err != nil {
		t.Fatal(err)
	}
	ended, err := p.clientConn.Inspect(ctx)
	if err != nil || ended.State != "closed" || ended.Reason == "" || len(ended.Questions) != 0 {
		t.Errorf("after the end: %+v (%v)", ended, err)
	}
}

func count[T any](s []T, f func(T) bool) int {
	n := 0
	for _, v := range s {
		if f(v) {
			n++
		}
	}
	return n
}
