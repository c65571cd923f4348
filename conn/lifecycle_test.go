package conn

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"

	"github.com/vatactor/vatactor/interop"
	"github.com/vatactor/vatactor/supervisor"
)

// These tests drive one connection over the in-memory pipe through the
// paths of its life that the socket tests of package actors reach only
// from afar: the drain with calls in flight both ways, the peer's end,
// cancellation, Resolve, Unimplemented and exported promises.

// returnEcho answers question q with an Echo results struct holding text.
func returnEcho(q uint32, text string) func(rpccp.Message) error {
	return func(m rpccp.Message) error {
		r, err := m.NewReturn()
		if err != nil {
			return err
		}
		r.SetAnswerId(q)
		p, err := r.NewResults()
		if err != nil {
			return err
		}
		res, err := interop.NewEcho_echo_Results(p.Segment())
		if err != nil {
			return err
		}
		if err := res.SetText(text); err != nil {
			return err
		}
		return p.SetContent(res.ToPtr())
	}
}

// phaseNamesOf lists the phases of r in order.
func phaseNamesOf(r Report) []string {
	var out []string
	for _, p := range r.Phases {
		out = append(out, string(p.Phase))
	}
	return out
}

// TestShutdownDrainsBothWays: Shutdown while one of our calls and one of
// the peer's are in flight: new calls are refused both ways as not
// processed, the ones in flight finish, then the epitaph goes out.
func TestShutdownDrainsBothWays(t *testing.T) {
	block := make(chan struct{})
	srv := &blockingEcho{release: block}
	h := newHarnessWith(t, Options{Bootstrap: capnp.Client(interop.Echo_ServerToClient(srv)), DrainTimeout: 5 * time.Second})
	ctx := context.Background()
	boot := h.bootstrapImport(ctx)
	defer boot.Release()

	// Ours in flight: q1, unanswered until the drain has begun.
	ours, rel := boot.Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText("mine") })
	defer rel()
	h.expect("call q1 → import 0")
	// The peer's in flight: an echo that runs until released.
	h.send(func(m rpccp.Message) error { b, err := m.NewBootstrap(); b.SetQuestionId(0); return err })
	h.expect("return q0 results caps=[sh0]")
	h.send(callImport(0, 1, "theirs"))
	waitFor(t, srv.started)

	done := make(chan Report, 1)
	go func() {
		rep, _ := h.c.Shutdown(ctx, supervisor.Epitaph{Code: supervisor.OK, Message: "bye"})
		done <- rep
	}()
	waitFor(t, func() bool { return h.c.Err() != nil }) // draining

	// A new call of ours is refused at once, never sent.
	late, rel2 := boot.Echo(ctx, nil)
	defer rel2()
	if _, err := late.Struct(); !errors.Is(err, ErrNotProcessed) {
		t.Fatalf("a call made while draining: %v, want ErrNotProcessed", err)
	}
	// A new call of the peer's is refused, carrying our epitaph.
	h.send(callImport(0, 2, "late"))
	if d := DescribeMessage(h.expect("return q2 exception disconnected")); !strings.Contains(d, "not processed") {
		t.Fatalf("refused call: %s", d)
	}
	// Our call in flight still gets its answer.
	h.send(returnEcho(1, "mine"))
	if res, err := ours.Struct(); err != nil {
		t.Fatalf("our call in flight: %v", err)
	} else if got, _ := res.Text(); got != "mine" {
		t.Fatalf("our call in flight: %q", got)
	}
	// The peer's call in flight finishes too.
	close(block)
	if d := DescribeMessage(h.recvNot("finish")); !strings.HasPrefix(d, "return q1") {
		t.Fatalf("got %q, want the Return of the peer's call", d)
	}
	for _, q := range []uint32{0, 1, 2} {
		h.send(finishMsgQ(q))
	}
	_ = h.peer.CloseWrite() // the peer is not one of ours: no OK epitaph, a FIN
	rep := <-done
	if want := "drain,stopQuestions,stopExports,releaseImports,sendEpitaph,closeWrite,linger,closeSocket"; strings.Join(phaseNamesOf(rep), ",") != want {
		t.Fatalf("phases %v", phaseNamesOf(rep))
	}
	if rep.Refused != 1 || rep.Abandoned != 0 || rep.Canceled != 0 || rep.Phases[0].CutShort {
		t.Fatalf("refused %d, abandoned %d, canceled %d, drain %v; want 1, 0, 0, not cut", rep.Refused, rep.Abandoned, rep.Canceled, rep.Phases[0])
	}
}

func finishMsgQ(q uint32) func(rpccp.Message) error {
	return func(m rpccp.Message) error {
		f, err := m.NewFinish()
		f.SetQuestionId(q)
		return err
	}
}

// TestDrainDeadlineAbandons: a peer's call still running at DrainTimeout
// is answered "abandoned … may have been partly processed" before the
// epitaph; ours still waiting fails with ErrOutcomeUnknown.
func TestDrainDeadlineAbandons(t *testing.T) {
	block := make(chan struct{})
	defer close(block)
	srv := &blockingEcho{release: block}
	h := newHarnessWith(t, Options{Bootstrap: capnp.Client(interop.Echo_ServerToClient(srv)), DrainTimeout: 50 * time.Millisecond})
	ctx := context.Background()
	boot := h.bootstrapImport(ctx)
	defer boot.Release()
	ours, rel := boot.Echo(ctx, nil)
	defer rel()
	h.expect("call q1")
	h.send(func(m rpccp.Message) error { b, err := m.NewBootstrap(); b.SetQuestionId(0); return err })
	h.expect("return q0")
	h.send(callImport(0, 1, "stuck"))
	waitFor(t, func() bool { return srv.started() })

	done := make(chan Report, 1)
	go func() { rep, _ := h.c.Shutdown(ctx, supervisor.Epitaph{Code: supervisor.OK}); done <- rep }()
	if d := DescribeMessage(h.expect("return q1 exception disconnected")); !strings.Contains(d, "abandoned") {
		t.Fatalf("got %s", d)
	}
	if _, err := ours.Struct(); !errors.Is(err, ErrOutcomeUnknown) {
		t.Fatalf("our call cut by the drain deadline: %v, want ErrOutcomeUnknown", err)
	}
	_ = h.peer.CloseWrite()
	rep := <-done
	if rep.Abandoned != 1 || rep.Canceled != 1 || !rep.Phases[0].CutShort {
		t.Fatalf("report: abandoned %d canceled %d, drain %v", rep.Abandoned, rep.Canceled, rep.Phases[0])
	}
}

// blockingEcho's echo blocks until release is closed.
type blockingEcho struct {
	recordingEcho
	release chan struct{}
}

func (b *blockingEcho) started() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.seen) > 0
}

func (b *blockingEcho) Echo(ctx context.Context, call interop.Echo_echo) error {
	b.mu.Lock()
	b.seen = append(b.seen, "x")
	b.mu.Unlock()
	select {
	case <-b.release:
	case <-ctx.Done():
	}
	return ctx.Err()
}

// TestPeerEndsWithCallsInFlight: the peer's Abort, its epitaph, and its
// EOF while a call of ours waits: the reason says which, our call fails
// with the rule (not processed after one of ours drained, outcome
// unknown otherwise), and nothing but the FIN is written back.
func TestPeerEndsWithCallsInFlight(t *testing.T) {
	for _, tc := range []struct {
		name   string
		end    func(h *harness)
		reason func(supervisor.Reason) bool
		callIs error
	}{
		{"abort", func(h *harness) {
			h.send(func(m rpccp.Message) error {
				e, err := m.NewAbort()
				e.SetType(rpccp.Exception_Type_failed)
				_ = e.SetReason("go away")
				return err
			})
		}, func(r supervisor.Reason) bool { a, ok := r.(supervisor.PeerAbort); return ok && a.Reason == "go away" }, ErrOutcomeUnknown},
		{"eof", func(h *harness) { _ = h.peer.CloseWrite() },
			func(r supervisor.Reason) bool { e, ok := r.(supervisor.PeerEOF); return ok && !e.Idle }, ErrOutcomeUnknown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, capnp.Client{})
			ctx := context.Background()
			boot := h.bootstrapImport(ctx)
			defer boot.Release()
			f, rel := boot.Echo(ctx, nil)
			defer rel()
			h.expect("call q1")
			tc.end(h)
			if _, err := f.Struct(); !errors.Is(err, tc.callIs) {
				t.Fatalf("our call: %v, want %v", err, tc.callIs)
			}
			<-h.c.Done()
			if r := h.c.Err(); !tc.reason(r) {
				t.Fatalf("reason %v (%T)", r, r)
			}
			// Nothing after the peer's end but our FIN: no Abort, no Finish.
			for m := range h.in {
				rm, _ := rpccp.ReadRootMessage(m)
				t.Fatalf("sent after the peer's end: %s", DescribeMessage(rm))
			}
		})
	}
}

// TestCancelSendsFinish: a call whose context ends before its Return is
// finished at once (releaseResultCaps), and the late Return changes
// nothing.
func TestCancelSendsFinish(t *testing.T) {
	h := newHarness(t, capnp.Client{})
	boot := h.bootstrapImport(context.Background())
	defer boot.Release()
	ctx, cancel := context.WithCancel(context.Background())
	f, rel := boot.Echo(ctx, nil)
	defer rel()
	h.expect("call q1")
	cancel()
	h.expect("finish q1 releaseResultCaps=true")
	if _, err := f.Struct(); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled call: %v", err)
	}
	h.send(returnEcho(1, "late"))
	waitFor(t, func() bool { return h.c.Stats().Questions == 1 }) // the bootstrap's, held
	if h.c.Err() != nil {
		t.Fatalf("a Return after our Finish ended the connection: %v", h.c.Err())
	}
}

// TestResolvePromise: a promise the peer exported resolves to another of
// its capabilities (calls made before go to the promise, calls after to
// the resolution), to an exception, or arrives for a promise already
// released (ignored).
func TestResolvePromise(t *testing.T) {
	h := newHarness(t, capnp.Client{})
	ctx := context.Background()
	// The bootstrap answer is the peer's promise 5.
	boot := h.bootstrapAnswer(ctx, func(d rpccp.CapDescriptor) { d.SetSenderPromise(5) })
	waitFor(t, func() bool { return h.c.Stats().Imports == 1 }) // the Return is in
	f1, rel1 := boot.Echo(ctx, nil)
	h.expect("call q1 → import 5")
	h.send(func(m rpccp.Message) error {
		r, err := m.NewResolve()
		if err != nil {
			return err
		}
		r.SetPromiseId(5)
		d, _ := r.NewCap()
		d.SetSenderHosted(6)
		return nil
	})
	waitFor(t, func() bool { return h.c.Stats().Imports == 2 })
	f2, rel2 := boot.Echo(ctx, nil)
	// The promise, resolved, may be released (Release e5) before the
	// call on its resolution.
	released := false
	for {
		d := DescribeMessage(h.recv())
		if strings.HasPrefix(d, "release e5") {
			released = true
			continue
		}
		if !strings.HasPrefix(d, "call q2 → import 6") {
			t.Fatalf("got %s, want the call on the resolution", d)
		}
		break
	}
	h.send(returnEcho(1, "a"))
	h.send(returnEcho(2, "b"))
	for i, f := range []interop.Echo_echo_Results_Future{f1, f2} {
		if _, err := f.Struct(); err != nil {
			t.Fatalf("call %d: %v", i+1, err)
		}
	}
	// Once nothing holds the promise, we release it...
	rel1()
	rel2()
	boot.Release()
	for !released {
		released = strings.HasPrefix(DescribeMessage(h.recv()), "release e5")
	}
	// ...and a Resolve of it that crossed our Release is ignored (a
	// second Resolve of a promise still imported would break the
	// protocol: the core's tests).
	h.send(func(m rpccp.Message) error {
		r, err := m.NewResolve()
		if err != nil {
			return err
		}
		r.SetPromiseId(5)
		e, _ := r.NewException()
		e.SetType(rpccp.Exception_Type_failed)
		return e.SetReason("too late")
	})
	// A Bootstrap after it: its Return says the Resolve has been handled.
	h.send(func(m rpccp.Message) error {
		b, err := m.NewBootstrap()
		b.SetQuestionId(77)
		return err
	})
	for !strings.HasPrefix(DescribeMessage(h.recv()), "return q77") {
	}
	if h.c.Err() != nil {
		t.Fatalf("a late Resolve ended the connection: %v", h.c.Err())
	}
}

// TestResolveToException: calls on a promise that resolves to an
// exception fail with it.
func TestResolveToException(t *testing.T) {
	h := newHarness(t, capnp.Client{})
	ctx := context.Background()
	boot := h.bootstrapAnswer(ctx, func(d rpccp.CapDescriptor) { d.SetSenderPromise(3) })
	defer boot.Release()
	h.send(func(m rpccp.Message) error {
		r, err := m.NewResolve()
		if err != nil {
			return err
		}
		r.SetPromiseId(3)
		e, _ := r.NewException()
		e.SetType(rpccp.Exception_Type_overloaded)
		return e.SetReason("no capacity")
	})
	waitFor(t, func() bool {
		f, rel := boot.Echo(ctx, nil)
		defer rel()
		select {
		case <-f.Done():
			_, err := f.Struct()
			return exc.TypeOf(err) == exc.Overloaded
		case <-time.After(20 * time.Millisecond):
			return false
		}
	})
}

// TestUnimplementedFailsQuestion: the peer answers our call with
// Unimplemented: the call fails "unimplemented", the question is gone,
// the connection goes on.
func TestUnimplementedFailsQuestion(t *testing.T) {
	h := newHarness(t, capnp.Client{})
	ctx := context.Background()
	boot := h.bootstrapImport(ctx)
	defer boot.Release()
	f, rel := boot.Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText("x") })
	call := h.expect("call q1")
	h.send(func(m rpccp.Message) error { return m.SetUnimplemented(call) })
	if _, err := f.Struct(); exc.TypeOf(err) != exc.Unimplemented {
		t.Fatalf("got %v, want unimplemented", err)
	}
	rel()
	waitFor(t, func() bool { return h.c.Stats().Questions == 1 }) // the bootstrap's, held
	if h.c.Err() != nil {
		t.Fatalf("connection ended: %v", h.c.Err())
	}
}

// TestExportedPromiseResolves: a promise we pass to the peer is exported
// as senderPromise; when it resolves, a Resolve names what it became.
func TestExportedPromiseResolves(t *testing.T) {
	h := newHarness(t, capnp.Client{})
	ctx := context.Background()
	boot := h.bootstrapImport(ctx)
	defer boot.Release()
	promise, resolver := capnp.NewLocalPromise[capnp.Client]()
	f, rel := boot.CallBack(ctx, func(p interop.Echo_callBack_Params) error {
		return p.SetCallback(interop.Callback(promise.AddRef()))
	})
	defer rel()
	h.expect("call q1 → import 0 0x96bc4f1951d41121/5 caps=[sp0]")
	target := interop.Echo_ServerToClient(&recordingEcho{})
	resolver.Fulfill(capnp.Client(target))
	if d := DescribeMessage(h.recvNot("finish", "release")); !strings.HasPrefix(d, "resolve p0 → sh") {
		t.Fatalf("got %s, want a Resolve of p0 to an export", d)
	}
	promise.Release()
	h.send(returnEcho(1, ""))
	if _, err := f.Struct(); err != nil {
		t.Fatal(err)
	}
}

// recvNot returns the next message whose description starts with none of
// skip.
func (h *harness) recvNot(skip ...string) rpccp.Message {
	h.t.Helper()
	for {
		m := h.recv()
		d := DescribeMessage(m)
		ok := true
		for _, s := range skip {
			if strings.HasPrefix(d, s) {
				ok = false
			}
		}
		if ok {
			return m
		}
	}
}

// TestPeerEOFDuringOurEnd: the peer half-closes while our end is under
// way (between stopQuestions and stopExports): the epitaph that would
// come next is not written into its socket (nothing is, after its EOF),
// and the report keeps what the peer did.
func TestPeerEOFDuringOurEnd(t *testing.T) {
	var h *harness
	var once sync.Once
	opts := Options{Bootstrap: capnp.Client(interop.Echo_ServerToClient(&recordingEcho{}))}
	opts.OnEvent = func(e Event) {
		if pd, ok := e.(PhaseDone); ok && pd.Phase.Phase == PhaseStopQuestions {
			once.Do(func() {
				_ = h.peer.CloseWrite()
				// Until the reader has read the EOF and posted it (the
				// actor, busy here, handles it next).
				for deadline := time.Now().Add(5 * time.Second); h.c.mailbox.UserMessageCount() == 0 && time.Now().Before(deadline); {
					time.Sleep(time.Millisecond)
				}
			})
		}
	}
	h = newHarnessWith(t, opts)
	// The peer fetches our bootstrap: an export the end must stop.
	h.send(func(m rpccp.Message) error {
		bs, err := m.NewBootstrap()
		bs.SetQuestionId(0)
		return err
	})
	h.expect("return q0 results")
	r, err := h.c.Shutdown(context.Background(), supervisor.Epitaph{Code: supervisor.Unavailable, Message: "going away"})
	if err != nil {
		t.Fatal(err)
	}
	aborts := 0
	for m := range h.in {
		rm, _ := rpccp.ReadRootMessage(m)
		if rm.Which() == rpccp.Message_Which_abort {
			aborts++
		}
	}
	if _, ok := r.Peer.(supervisor.PeerEOF); !ok {
		t.Errorf("report's peer end %v, want PeerEOF", r.Peer)
	}
	// The EOF was read while the end ran: the epitaph goes only if the
	// end decided on it before it learned of the EOF (the reader and the
	// actor run side by side: rarely, under -race, it does), and then
	// the report says so; never an epitaph after the EOF was known.
	if aborts > 0 && !r.EpitaphSent {
		t.Errorf("an Abort went into a socket whose peer's EOF the end already knew")
	}
	if r.EpitaphSent {
		t.Logf("the epitaph went before the end learned of the EOF")
	}
}

// TestProtoactorStopAfterACall: a call's question actor stops as its
// Return is read, and its Terminated, reaching an idle connection actor,
// waits for the actor's next turn; protoactor stopping the connection
// (which waits for every child's Terminated) is not held up by it.
func TestProtoactorStopAfterACall(t *testing.T) {
	h := newHarness(t, capnp.Client{})
	ctx := context.Background()
	boot := h.bootstrapImport(ctx)
	defer boot.Release()
	f, rel := boot.Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText("hi") })
	h.expect("call q1")
	h.send(returnEcho(1, "hi"))
	if _, err := f.Struct(); err != nil {
		t.Fatal(err)
	}
	rel()
	waitFor(t, func() bool { return h.c.Stats().Questions == 1 }) // the bootstrap's, held
	time.Sleep(20 * time.Millisecond)                             // the question's actor finishes stopping
	h.sys.Root.Stop(h.c.PID())
	select {
	case <-h.c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("protoactor's Stop of the connection did not end it")
	}
	var ls supervisor.LocalShutdown
	if err := h.c.Err(); !errors.As(err, &ls) || ls.Epitaph.Code != supervisor.Canceled {
		t.Fatalf("reason: %v", err)
	}
}
