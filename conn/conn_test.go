package conn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/goleak"

	"github.com/vatactor/vatactor/interop"
	"github.com/vatactor/vatactor/supervisor"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleakOptions...)
}

// The actor system's own background goroutines outlive a test's system
// only until Shutdown returns, but a few of protoactor's timers are slower.
var goleakOptions = []goleak.Option{
	goleak.IgnoreAnyFunction("github.com/asynkron/protoactor-go/actor.(*deadLetterProcess).init.func1"),
	goleak.IgnoreAnyFunction("github.com/asynkron/protoactor-go/actor.NewDeadLetter.NewThrottle.func4.1"),
}

// harness drives one connection actor over an in-memory pipe: the test is
// the peer, writing hand-built messages and reading what the actor sends.
type harness struct {
	t    *testing.T
	sys  *actor.ActorSystem
	c    *Conn
	peer Transport
	in   chan *capnp.Message
}

// newHarness takes ownership of bootstrap.
func newHarness(t *testing.T, bootstrap capnp.Client) *harness {
	return newHarnessWith(t, Options{Bootstrap: bootstrap})
}

// newHarnessWith takes ownership of opts.Bootstrap.
func newHarnessWith(t *testing.T, opts Options) *harness {
	t.Helper()
	bootstrap := opts.Bootstrap
	sys := actor.NewActorSystem(actor.WithLoggerFactory(quietLogger))
	a, b := newPipe()
	h := &harness{t: t, sys: sys, peer: b, in: make(chan *capnp.Message, 64)}
	opts.Peer, opts.LingerTimeout = "test", 100*time.Millisecond
	h.c = Spawn(sys.Root, sys.Root, a, opts)
	go func() {
		defer close(h.in)
		for {
			f, err := b.RecvFrame()
			if err != nil {
				return
			}
			h.in <- f.Msg
		}
	}()
	t.Cleanup(func() {
		bootstrap.Release() // the connection holds its own reference
		h.c.Close()
		_ = b.Close()
		for range h.in {
		}
		sys.Shutdown()
	})
	return h
}

// send writes a message built by fill to the connection.
func (h *harness) send(fill func(m rpccp.Message) error) {
	h.t.Helper()
	msg, m := newMessage()
	if err := fill(m); err != nil {
		h.t.Fatal(err)
	}
	if err := h.peer.SendFrames([]Frame{{Msg: msg}}); err != nil {
		h.t.Fatal(err)
	}
}

// recv returns the next message the connection sent.
func (h *harness) recv() rpccp.Message {
	h.t.Helper()
	select {
	case msg, ok := <-h.in:
		if !ok {
			h.t.Fatal("connection closed its side")
		}
		m, err := rpccp.ReadRootMessage(msg)
		if err != nil {
			h.t.Fatal(err)
		}
		return m
	case <-time.After(5 * time.Second):
		h.t.Fatal("timed out waiting for a message from the connection")
	}
	return rpccp.Message{}
}

// expect reads the next message and checks its description's prefix.
func (h *harness) expect(prefix string) rpccp.Message {
	h.t.Helper()
	m := h.recv()
	if d := DescribeMessage(m); !strings.HasPrefix(d, prefix) {
		h.t.Fatalf("got %q, want a message starting %q", d, prefix)
	}
	return m
}

// bootstrapImport answers the connection's Bootstrap with the peer's
// export 0 and returns it resolved.
func (h *harness) bootstrapImport(ctx context.Context) interop.Echo {
	h.t.Helper()
	boot := h.bootstrapAnswer(ctx, func(d rpccp.CapDescriptor) { d.SetSenderHosted(0) })
	if err := boot.Resolve(ctx); err != nil {
		h.t.Fatal(err)
	}
	return boot
}

// bootstrapAnswer asks for the peer's bootstrap capability and answers
// with the descriptor desc writes (not waiting for it to resolve).
func (h *harness) bootstrapAnswer(ctx context.Context, desc func(rpccp.CapDescriptor)) interop.Echo {
	h.t.Helper()
	boot := interop.Echo(h.c.Bootstrap(ctx))
	h.expect("bootstrap q0")
	h.send(func(m rpccp.Message) error {
		r, err := m.NewReturn()
		if err != nil {
			return err
		}
		r.SetAnswerId(0)
		p, _ := r.NewResults()
		caps, _ := p.NewCapTable(1)
		desc(caps.At(0))
		return p.SetContent(capnp.NewInterface(p.Segment(), 0).ToPtr())
	})
	return boot
}

func echoParams(call rpccp.Call, text string) error {
	p, err := call.NewParams()
	if err != nil {
		return err
	}
	args, err := interop.NewEcho_echo_Params(p.Segment())
	if err != nil {
		return err
	}
	if err := args.SetText(text); err != nil {
		return err
	}
	return p.SetContent(args.ToPtr())
}

// callImport: a Call of Echo.echo(text) on import id.
func callImport(id, qid uint32, text string) func(rpccp.Message) error {
	return echoCall(qid, 0, text, func(t rpccp.MessageTarget) error { t.SetImportedCap(id); return nil })
}

// callAnswer: a Call of Echo method (with echo's params) on the answer to
// question q, at the pointer fields path.
func callAnswer(q, qid uint32, method uint16, path ...uint16) func(rpccp.Message) error {
	return echoCall(qid, method, "x", func(t rpccp.MessageTarget) error {
		pa, err := t.NewPromisedAnswer()
		if err != nil {
			return err
		}
		pa.SetQuestionId(q)
		ops, err := pa.NewTransform(int32(len(path)))
		for i, p := range path {
			ops.At(i).SetGetPointerField(p)
		}
		return err
	})
}

// echoCall: a Call of Echo's method with echo's params on the target that
// setTarget writes.
func echoCall(qid uint32, method uint16, text string, setTarget func(rpccp.MessageTarget) error) func(rpccp.Message) error {
	return func(m rpccp.Message) error {
		call, err := m.NewCall()
		if err != nil {
			return err
		}
		call.SetQuestionId(qid)
		call.SetInterfaceId(interop.Echo_TypeID)
		call.SetMethodId(method)
		t, err := call.NewTarget()
		if err != nil {
			return err
		}
		if err := setTarget(t); err != nil {
			return err
		}
		return echoParams(call, text)
	}
}

func TestBootstrapCallFinish(t *testing.T) {
	h := newHarness(t, capnp.Client(interop.NewEchoServer().Client(interop.PlainServer)))
	h.send(func(m rpccp.Message) error {
		b, err := m.NewBootstrap()
		b.SetQuestionId(0)
		return err
	})
	h.expect("return q0 results caps=[sh0]")
	h.send(callImport(0, 1, "hi"))
	ret := h.expect("return q1 results caps=[]")
	r, _ := ret.Return()
	p, _ := r.Results()
	content, _ := p.Content()
	if got, _ := interop.Echo_echo_Results(content.Struct()).Text(); got != "hi" {
		t.Fatalf("echo returned %q", got)
	}
	if st := h.c.Stats(); st.Answers != 2 || st.Exports != 1 {
		t.Fatalf("stats before finish = %+v", st)
	}
	for _, q := range []uint32{0, 1} {
		h.send(func(m rpccp.Message) error {
			f, err := m.NewFinish()
			f.SetQuestionId(q)
			return err
		})
	}
	h.send(func(m rpccp.Message) error {
		r, err := m.NewRelease()
		r.SetId(0)
		r.SetReferenceCount(1)
		return err
	})
	waitFor(t, func() bool { return h.c.Stats().Idle() })
}

func TestProtocolErrorsAbort(t *testing.T) {
	cases := []struct {
		name string
		msg  func(rpccp.Message) error
		want error
	}{
		{"finish of unknown question", func(m rpccp.Message) error {
			f, err := m.NewFinish()
			f.SetQuestionId(42)
			return err
		}, ErrUnknownID},
		{"call on unknown export", callImport(9, 1, "x"), ErrUnknownID},
		{"return for unknown question", func(m rpccp.Message) error {
			r, err := m.NewReturn()
			r.SetAnswerId(5)
			r.SetCanceled()
			return err
		}, ErrUnknownID},
		{"release of unknown export", func(m rpccp.Message) error {
			r, err := m.NewRelease()
			r.SetId(3)
			r.SetReferenceCount(1)
			return err
		}, ErrUnknownID},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, capnp.Client{})
			h.send(tc.msg)
			m := h.expect("abort failed")
			e, _ := m.Abort()
			reason, _ := e.Reason()
			if !strings.Contains(reason, tc.want.Error()) {
				t.Fatalf("abort reason %q does not name %q", reason, tc.want)
			}
			<-h.c.Done()
			var pe supervisor.ProtocolError
			if err := h.c.Err(); !errors.As(err, &pe) || !errors.Is(err, tc.want) {
				t.Fatalf("reason = %v, want ProtocolError wrapping %v", err, tc.want)
			}
		})
	}
}

func TestDuplicateQuestionAborts(t *testing.T) {
	srv := interop.NewEchoServer()
	h := newHarness(t, capnp.Client(srv.Client(interop.PlainServer)))
	h.send(func(m rpccp.Message) error {
		b, err := m.NewBootstrap()
		b.SetQuestionId(0)
		return err
	})
	h.expect("return q0")
	h.send(func(m rpccp.Message) error {
		b, err := m.NewBootstrap()
		b.SetQuestionId(0) // still in flight: no Finish yet
		return err
	})
	h.expect("abort failed")
	<-h.c.Done()
	if !errors.Is(h.c.Err(), ErrDuplicateID) {
		t.Fatalf("reason = %v, want ErrDuplicateID", h.c.Err())
	}
}

func TestUnknownMessageGetsUnimplemented(t *testing.T) {
	h := newHarness(t, capnp.Client{})
	h.send(func(m rpccp.Message) error {
		_, err := m.NewProvide()
		return err
	})
	h.expect("unimplemented (provide)")
	if h.c.Err() != nil {
		t.Fatalf("connection ended: %v", h.c.Err())
	}
}

// recordingEcho is an Echo whose echo calls are recorded in order.
type recordingEcho struct {
	mu   sync.Mutex
	seen []string
}

func (r *recordingEcho) record() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.seen...)
}

func (r *recordingEcho) Echo(ctx context.Context, call interop.Echo_echo) error {
	text, _ := call.Args().Text()
	r.mu.Lock()
	r.seen = append(r.seen, text)
	r.mu.Unlock()
	return nil
}
func (r *recordingEcho) Fail(context.Context, interop.Echo_fail) error                 { return nil }
func (r *recordingEcho) Self(context.Context, interop.Echo_self) error                 { return nil }
func (r *recordingEcho) NewCounter(context.Context, interop.Echo_newCounter) error     { return nil }
func (r *recordingEcho) LiveCounters(context.Context, interop.Echo_liveCounters) error { return nil }
func (r *recordingEcho) CallBack(context.Context, interop.Echo_callBack) error         { return nil }
func (r *recordingEcho) Wait(context.Context, interop.Echo_wait) error                 { return nil }

// TestEmbargoOnReturnToLocalCapability: we pipeline a call on an answer,
// the answer turns out to be our own capability; calls made after the
// Return must wait until the pipelined call, reflected back by the peer,
// has been delivered (Disembargo round trip).
func TestEmbargoOnReturnToLocalCapability(t *testing.T) {
	h := newHarness(t, capnp.Client{})
	ctx := context.Background()

	// Bootstrap: the peer's Echo is its export 0.
	boot := h.bootstrapImport(ctx)
	defer boot.Release()

	// q1: callBack(local); the peer will answer with our own capability.
	local := &recordingEcho{}
	localClient := interop.Echo_ServerToClient(local)
	defer localClient.Release()
	f, release := boot.CallBack(ctx, func(p interop.Echo_callBack_Params) error {
		return p.SetCallback(interop.Callback(capnp.Client(localClient.AddRef())))
	})
	defer release()
	h.expect("call q1 → import 0 0x96bc4f1951d41121/5 caps=[sh0]")

	// q2: pipelined on field 0 of q1's answer, before it arrives.
	pipelined := interop.Echo(f.Field(0, nil).Client())
	f2, release2 := pipelined.Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText("first") })
	defer release2()
	h.expect("call q2 → answer q1.0")

	// The peer answers q1 with receiverHosted(0): our own capability.
	h.send(func(m rpccp.Message) error {
		r, err := m.NewReturn()
		if err != nil {
			return err
		}
		r.SetAnswerId(1)
		r.SetReleaseParamCaps(false) // it still holds our capability
		p, _ := r.NewResults()
		st, _ := capnp.NewStruct(p.Segment(), capnp.ObjectSize{PointerCount: 1})
		_ = st.SetPtr(0, capnp.NewInterface(p.Segment(), 0).ToPtr())
		caps, _ := p.NewCapTable(1)
		caps.At(0).SetReceiverHosted(0)
		return p.SetContent(st.ToPtr())
	})
	h.expect("disembargo senderLoopback 0 → answer q1.0")
	<-f.Done()

	// A call made now must wait behind the reflected "first".
	f3, release3 := pipelined.Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText("second") })
	defer release3()
	time.Sleep(50 * time.Millisecond)
	if got := local.record(); len(got) != 0 {
		t.Fatalf("local capability called %v before the reflected call arrived", got)
	}

	// The peer reflects q2 back to our export 0, then echoes the Disembargo.
	h.send(callImport(0, 5, "first"))
	h.expect("return q5")
	waitFor(t, func() bool { return len(local.record()) == 1 })
	time.Sleep(50 * time.Millisecond)
	if got := local.record(); len(got) != 1 {
		t.Fatalf("embargoed call delivered before the Disembargo came back: %v", got)
	}
	h.send(func(m rpccp.Message) error {
		d, err := m.NewDisembargo()
		if err != nil {
			return err
		}
		t, _ := d.NewTarget()
		t.SetImportedCap(0)
		d.Context().SetReceiverLoopback(0)
		return nil
	})
	if _, err := f3.Struct(); err != nil {
		t.Fatal(err)
	}
	if got := local.record(); strings.Join(got, ",") != "first,second" {
		t.Fatalf("delivery order %v, want first,second", got)
	}
	// The peer answers q2 (its forwarded call) so that nothing is left over.
	h.send(func(m rpccp.Message) error {
		r, err := m.NewReturn()
		if err != nil {
			return err
		}
		r.SetAnswerId(2)
		_, err = r.NewResults()
		return err
	})
	if _, err := f2.Struct(); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func quietLogger(*actor.ActorSystem) *slog.Logger { return slog.New(slog.DiscardHandler) }

// TestPostWhileEnding: callers posting to a connection while it ends —
// its actor takes the connection's write lock to record the end — never
// deadlock (post once took the read lock twice, and a writer waiting
// between the two held both up for ever).
func TestPostWhileEnding(t *testing.T) {
	for range 20 {
		h := newHarness(t, capnp.Client{})
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-h.c.Done():
						return
					default:
					}
					_, _ = h.c.Inspect(context.Background()) // posts, or is refused once closed
				}
			}()
		}
		done := make(chan struct{})
		go func() { h.c.Close(); wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			// A deadlock: the test's cleanups would wait on it for ever.
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			fmt.Fprintf(os.Stderr, "--- FAIL: TestPostWhileEnding: callers posting to an ending connection are stuck:\n%s", buf[:n])
			os.Exit(1)
		}
	}
}
