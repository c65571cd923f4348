package inspect_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"

	"github.com/vatactor/vatactor/actors"
	"github.com/vatactor/vatactor/conn"
	"github.com/vatactor/vatactor/inspect"
	"github.com/vatactor/vatactor/interop"
	"github.com/vatactor/vatactor/supervisor"
)

// fixture is a server vat serving Echo over loopback TCP, its live view
// on an HTTP server, and a client vat.
type fixture struct {
	server, client *actors.Vat
	addr           string
	web            *httptest.Server
	impl           *interop.EchoServer
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	impl := interop.NewEchoServer()
	f := &fixture{impl: impl,
		server: actors.Spawn(actors.Options{Name: "server", Bootstrap: capnp.Client(impl.Client(actors.NewServer))}),
		client: actors.Spawn(actors.Options{Name: "client"})}
	t.Cleanup(f.client.Stop)
	t.Cleanup(f.server.Stop)
	a, err := f.server.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = a.String()
	mux := http.NewServeMux()
	mux.Handle("/debug/vat/", http.StripPrefix("/debug/vat", inspect.Handler(f.server)))
	f.web = httptest.NewServer(mux)
	t.Cleanup(f.web.Close)
	return f
}

// dial connects the client and starts a wait() call that stays in flight
// until release is called.
func (f *fixture) dial(t *testing.T) (cn *conn.Conn, release func()) {
	t.Helper()
	ctx := context.Background()
	boot, cn, err := f.client.Dial(ctx, "tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	e := interop.Echo(boot)
	call, rel := e.Wait(ctx, func(p interop.Echo_wait_Params) error { p.SetMs(60_000); return nil })
	deadline := time.Now().Add(10 * time.Second)
	for f.impl.Waiting() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the wait() call never started")
		}
		time.Sleep(time.Millisecond)
	}
	return cn, func() {
		rel()
		_, _ = call.Struct()
		boot.Release()
	}
}

func get(t *testing.T, u string, into any) int {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if s, ok := into.(*string); ok {
		*s = string(b)
	} else if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, into); err != nil {
			t.Fatalf("%s: %v\n%s", u, err, b)
		}
	}
	return resp.StatusCode
}

// TestJSONAndPages: the snapshot as JSON and as pages, with a call in
// flight, and after the connection has ended.
func TestJSONAndPages(t *testing.T) {
	f := newFixture(t)
	base := f.web.URL + "/debug/vat/"
	var empty actors.Snapshot
	if get(t, base+"?format=json", &empty); empty.Name != "server" || len(empty.Conns) != 0 {
		t.Fatalf("before any connection: %+v", empty)
	}
	cn, release := f.dial(t)
	var snap actors.Snapshot
	get(t, base+"?format=json", &snap)
	if len(snap.Conns) != 1 {
		t.Fatalf("%d connections, want 1", len(snap.Conns))
	}
	c := snap.Conns[0]
	if c.Role != "server" || c.State != "open" || c.ID == "" || !strings.HasPrefix(c.Peer, "127.0.0.1:") || c.Peer == f.addr {
		t.Errorf("connection %+v", c)
	}
	var one conn.Snapshot
	if code := get(t, base+"conn?format=json&id="+url.QueryEscape(c.ID), &one); code != http.StatusOK {
		t.Fatalf("connection page: %d", code)
	}
	var wait *conn.AnswerSnapshot
	for i, a := range one.Answers {
		if a.Method == "Echo.wait" {
			wait = &one.Answers[i]
		}
	}
	if wait == nil || wait.State != "running" || wait.Age <= 0 {
		t.Errorf("answers %+v: want Echo.wait running", one.Answers)
	}
	if one.Budget.Running < 1 || one.Budget.MaxAnswers != conn.DefaultMaxAnswers || len(one.Exports) == 0 {
		t.Errorf("budget %+v, exports %+v", one.Budget, one.Exports)
	}
	var page string
	get(t, base+"conn?id="+url.QueryEscape(c.ID), &page)
	for _, want := range []string{"Echo.wait", "running", c.Peer, `id="budget"`} {
		if !strings.Contains(page, want) {
			t.Errorf("the connection page does not show %q:\n%s", want, page)
		}
	}
	get(t, base, &page)
	if !strings.Contains(page, c.Peer) || !strings.Contains(page, "conn?id=") {
		t.Errorf("the list does not show the connection:\n%s", page)
	}

	release()
	if _, err := cn.Shutdown(context.Background(), supervisor.Epitaph{Code: supervisor.OK}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for get(t, base+"?format=json", &snap); len(snap.Conns) > 0; get(t, base+"?format=json", &snap) {
		if time.Now().After(deadline) {
			t.Fatalf("the ended connection is still listed: %+v", snap.Conns)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if code := get(t, base+"conn?format=json&id="+url.QueryEscape(c.ID), &one); code != http.StatusNotFound {
		t.Errorf("an ended connection's JSON: %d, want 404", code)
	}
	get(t, base+"conn?id="+url.QueryEscape(c.ID), &page)
	if !strings.Contains(page, "has ended") {
		t.Errorf("an ended connection's page:\n%s", page)
	}
}
