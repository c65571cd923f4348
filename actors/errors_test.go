package actors_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"

	"github.com/vatactor/vatactor/actors"
	"github.com/vatactor/vatactor/conn"
	"github.com/vatactor/vatactor/interop"
	"github.com/vatactor/vatactor/supervisor"
)

// What a failed call says, by how it failed (README: "What a failed call
// says"): a remote exception, or exactly one of ErrNotProcessed and
// ErrOutcomeUnknown, with the connection's reason when it has ended, and
// an exception type its text agrees with.
type callError struct {
	notProcessed, outcomeUnknown bool
	reason                       supervisor.Reason // nil: the connection had not ended
	typ                          exc.Type
}

func classify(err error) callError {
	var ce callError
	ce.notProcessed = errors.Is(err, conn.ErrNotProcessed)
	ce.outcomeUnknown = errors.Is(err, conn.ErrOutcomeUnknown)
	var r supervisor.Reason
	if errors.As(err, &r) {
		ce.reason = r
	}
	ce.typ = exc.TypeOf(err)
	return ce
}

// checkOneOf: exactly one of the two sentinels, the type disconnected and
// said in the text.
func checkOneOf(t *testing.T, what string, err error, wantNotProcessed bool) callError {
	t.Helper()
	ce := classify(err)
	if err == nil {
		t.Fatalf("%s: no error", what)
	}
	if ce.notProcessed == ce.outcomeUnknown {
		t.Errorf("%s: %v: not processed %v, outcome unknown %v: want exactly one", what, err, ce.notProcessed, ce.outcomeUnknown)
	}
	if ce.notProcessed != wantNotProcessed {
		t.Errorf("%s: %v: not processed = %v, want %v", what, err, ce.notProcessed, wantNotProcessed)
	}
	return ce
}

// dialEcho dials a client vat to addr and returns Echo and the connection.
func dialEcho(t *testing.T, addr string) (interop.Echo, *conn.Conn) {
	t.Helper()
	client := actors.Spawn(actors.Options{Name: "client"})
	t.Cleanup(client.Stop)
	boot, cn, err := client.Dial(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(boot.Release)
	return interop.Echo(boot), cn
}

func TestErrorModel(t *testing.T) {
	ctx := context.Background()

	t.Run("call after the connection ended", func(t *testing.T) {
		server, addr := serveEcho(t, actors.Options{})
		e, cn := dialEcho(t, addr.String())
		if _, err := server.Shutdown(ctx, supervisor.Epitaph{Code: supervisor.Unavailable, Message: "moving"}); err != nil {
			t.Fatal(err)
		}
		<-cn.Done()
		_, err := echoText(ctx, e, "late")
		ce := checkOneOf(t, "after the end", err, true)
		var pe supervisor.PeerEpitaph
		if !errors.As(err, &pe) || pe.Epitaph.Message != "moving" {
			t.Errorf("%v: the connection's reason is not in it", err)
		}
		if ce.typ != exc.Disconnected || !strings.Contains(err.Error(), "disconnected") {
			t.Errorf("%v: type %v", err, ce.typ)
		}
	})

	t.Run("call refused while the peer drains", func(t *testing.T) {
		server, addr := serveEcho(t, actors.Options{})
		e, _ := dialEcho(t, addr.String())
		f, release := startWait(ctx, e, 400) // keeps the drain going
		defer release()
		for len(server.Conns()) == 0 || server.Conns()[0].Stats().Answers < 2 {
			time.Sleep(time.Millisecond)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			_, _ = server.Shutdown(ctx, supervisor.Epitaph{Code: supervisor.Unavailable, Message: "draining"})
		}()
		var err error
		for range 200 { // until the drain refuses
			if _, err = echoText(ctx, e, "during"); err != nil {
				break
			}
			time.Sleep(time.Millisecond)
		}
		ce := checkOneOf(t, "during the drain", err, true)
		if ce.typ != exc.Disconnected {
			t.Errorf("%v: type %v", err, ce.typ)
		}
		if _, err := f.Struct(); err != nil {
			t.Errorf("the call in flight was not drained: %v", err)
		}
		<-done
	})

	t.Run("call abandoned at the peer's drain deadline", func(t *testing.T) {
		server, addr := serveEcho(t, actors.Options{Conn: conn.Options{DrainTimeout: 50 * time.Millisecond}})
		e, _ := dialEcho(t, addr.String())
		f, release := startWait(ctx, e, 10_000)
		defer release()
		for len(server.Conns()) == 0 || server.Conns()[0].Stats().Answers < 2 {
			time.Sleep(time.Millisecond)
		}
		_, _ = server.Shutdown(ctx, supervisor.Epitaph{Code: supervisor.Unavailable, Message: "going"})
		_, err := f.Struct()
		// The peer's own word: a remote disconnected exception saying it
		// may have been partly processed.
		if err == nil || exc.TypeOf(err) != exc.Disconnected || !strings.Contains(err.Error(), "abandoned") || errors.Is(err, conn.ErrNotProcessed) {
			t.Errorf("abandoned call: %v (type %v)", err, exc.TypeOf(err))
		}
	})

	t.Run("peer gone with a call in flight", func(t *testing.T) {
		server := actors.Spawn(actors.Options{Name: "server", Bootstrap: capnp.Client(interop.NewEchoServer().Client(actors.NewServer))})
		defer server.Stop()
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		accepted := make(chan net.Conn, 1)
		go func() {
			nc, err := l.Accept()
			if err == nil {
				accepted <- nc
				_, _ = server.Serve(nc)
			}
		}()
		e, cn := dialEcho(t, l.Addr().String())
		nc := <-accepted
		f, release := startWait(ctx, e, 10_000)
		defer release()
		for server.Conns()[0].Stats().Answers < 2 {
			time.Sleep(time.Millisecond)
		}
		_ = nc.Close() // the server's socket goes, as when its process dies
		_, err = f.Struct()
		ce := checkOneOf(t, "peer gone", err, false)
		if ce.reason == nil || ce.typ != exc.Disconnected {
			t.Errorf("%v: reason %v, type %v", err, ce.reason, ce.typ)
		}
		<-cn.Done()
	})

	t.Run("the caller's deadline", func(t *testing.T) {
		_, addr := serveEcho(t, actors.Options{})
		e, _ := dialEcho(t, addr.String())
		dctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		f, release := startWait(dctx, e, 10_000)
		defer release()
		_, err := f.Struct()
		checkOneOf(t, "deadline", err, false)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%v: not context.DeadlineExceeded", err)
		}
	})

	t.Run("overloaded", func(t *testing.T) {
		_, addr := serveEcho(t, actors.Options{Conn: conn.Options{MaxAnswers: 1}})
		e, _ := dialEcho(t, addr.String())
		f1, r1 := startWait(ctx, e, 300)
		defer r1()
		time.Sleep(50 * time.Millisecond)
		f2, r2 := startWait(ctx, e, 300)
		defer r2()
		_, err := f2.Struct()
		if exc.TypeOf(err) != exc.Overloaded || !strings.Contains(err.Error(), "too many calls") {
			t.Errorf("overloaded: %v (type %v)", err, exc.TypeOf(err))
		}
		if _, err := f1.Struct(); err != nil {
			t.Error(err)
		}
	})
}

// deadlineEcho records the context its wait() runs with.
type deadlineEcho struct {
	*interop.EchoServer
	seen chan deadlineSeen
}

type deadlineSeen struct {
	deadline time.Time
	ok       bool
	err      error
}

func (d *deadlineEcho) Wait(ctx context.Context, call interop.Echo_wait) error {
	dl, ok := ctx.Deadline()
	<-ctx.Done()
	d.seen <- deadlineSeen{dl, ok, ctx.Err()}
	return ctx.Err()
}

// TestDeadlinePropagation: the caller's deadline travels with the call:
// the callee's context has it and ends by then; the caller's error says
// context.DeadlineExceeded and ErrOutcomeUnknown.
func TestDeadlinePropagation(t *testing.T) {
	impl := &deadlineEcho{EchoServer: interop.NewEchoServer(), seen: make(chan deadlineSeen, 1)}
	_, a := serveEcho(t, actors.Options{Bootstrap: actors.NewServer(interop.Echo_Methods(nil, impl), impl)})
	e, _ := dialEcho(t, a.String())
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	f, release := startWait(ctx, e, 60_000)
	defer release()
	_, err := f.Struct()
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, conn.ErrOutcomeUnknown) {
		t.Errorf("caller: %v, want context.DeadlineExceeded and ErrOutcomeUnknown", err)
	}
	seen := <-impl.seen
	if !seen.ok || seen.deadline.Before(start) || seen.deadline.After(start.Add(time.Second)) {
		t.Errorf("callee's deadline %v (%v), want about 200 ms after %v", seen.deadline, seen.ok, start)
	}
	// Its own timer or the caller's Finish ends it, whichever comes first
	// (as in gRPC).
	if !errors.Is(seen.err, context.DeadlineExceeded) && !errors.Is(seen.err, context.Canceled) {
		t.Errorf("callee's context ended with %v", seen.err)
	}
}

// TestDeadlineIgnoredByOtherPeers: a call with a deadline to go-capnp and
// to the C++ reference works: the sidecar that carries it is invisible
// to them.
func TestDeadlineIgnoredByOtherPeers(t *testing.T) {
	call := func(t *testing.T, addr string) {
		e, _ := dialEcho(t, addr)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if got, err := echoText(ctx, e, "with a deadline"); err != nil || got != "with a deadline" {
			t.Errorf("%q %v", got, err)
		}
	}
	t.Run("go-capnp", func(t *testing.T) {
		addr, served := startGoCapnpServer(t)
		call(t, addr)
		if rc := <-served; rc != nil {
			rc.Close()
		}
	})
	t.Run("C++", func(t *testing.T) {
		addr, _ := startCxxServer(t, cxxPeer(t))
		call(t, addr)
	})
}

// TestAnswersNeverReleased: code written for go-capnp that never releases
// its answers keeps working: an answer with no capability is finished as
// soon as it arrives, so neither side holds it (the server here holds at
// most 100 answers of a peer).
func TestAnswersNeverReleased(t *testing.T) {
	server, addr := serveEcho(t, actors.Options{Conn: conn.Options{Limits: conn.Limits{MaxHeldAnswers: 100}}})
	e, cn := dialEcho(t, addr.String())
	ctx := context.Background()
	for i := range 1000 {
		f, _ := e.Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText("never released") }) // no release, as go-capnp code does
		if _, err := f.Struct(); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	waitFor := func(what string, ok func() bool) {
		for range 500 {
			if ok() {
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
		t.Errorf("%s", what)
	}
	waitFor("the client still holds the questions", func() bool { return cn.Stats().Questions <= 1 }) // the bootstrap's
	waitFor("the server still holds the answers", func() bool { return server.Conns()[0].Stats().Answers <= 1 })
}

// slowSelf answers self() after 300 ms with an Echo that counts the
// echo() calls it runs.
type slowSelf struct {
	*interop.EchoServer
	ran *atomic.Int32
}

func (s *slowSelf) Self(ctx context.Context, call interop.Echo_self) error {
	time.Sleep(300 * time.Millisecond)
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	return res.SetEcho(interop.Echo_ServerToClient(&countingEcho{EchoServer: interop.NewEchoServer(), ran: s.ran}))
}

type countingEcho struct {
	*interop.EchoServer
	ran *atomic.Int32
}

func (c *countingEcho) Echo(ctx context.Context, call interop.Echo_echo) error {
	c.ran.Add(1)
	return c.EchoServer.Echo(ctx, call)
}

// TestDeadlinePassedWhileHeld: a call pipelined on an answer that comes
// after the call's deadline waits at the server and, its deadline gone
// when its target resolves, is refused there without running; one
// without a deadline, pipelined the same way, runs.
func TestDeadlinePassedWhileHeld(t *testing.T) {
	ran := new(atomic.Int32)
	impl := &slowSelf{EchoServer: interop.NewEchoServer(), ran: ran}
	_, a := serveEcho(t, actors.Options{Bootstrap: actors.NewServer(interop.Echo_Methods(nil, impl), impl)})
	e, _ := dialEcho(t, a.String())
	ctx := context.Background()
	self, release := e.Self(ctx, func(p interop.Echo_self_Params) error { return p.SetTag("") })
	defer release()
	child := self.Echo()
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if _, err := echoText(short, child, "too late"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the call with a deadline: %v, want context.DeadlineExceeded", err)
	}
	if got, err := echoText(ctx, child, "in time"); err != nil || got != "in time" {
		t.Fatalf("the call without one: %q %v", got, err)
	}
	if n := ran.Load(); n != 1 {
		t.Errorf("echo() ran %d times, want once: the call whose deadline passed while it was held ran", n)
	}
}
