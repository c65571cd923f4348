package conn

import (
	"context"
	"strings"
	"testing"

	"capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"

	"github.com/vatactor/vatactor/interop"
)

// The paths where capabilities travel back to the vat that hosts them:
// a peer's capability in our results, its calls on it forwarded back to
// it (Tribble rule), its pipelined answers passed to us, and ours passed
// to it.

// stashEcho is an Echo whose self() returns the capability it was given.
type stashEcho struct {
	recordingEcho
	cap interop.Echo
}

func (s *stashEcho) Self(_ context.Context, call interop.Echo_self) error {
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	return res.SetEcho(s.cap.AddRef())
}

// peerBootstrap sends the peer's Bootstrap (question qid) and checks that
// our export 0 comes back.
func (h *harness) peerBootstrap(qid uint32) {
	h.t.Helper()
	h.send(func(m rpccp.Message) error {
		b, err := m.NewBootstrap()
		b.SetQuestionId(qid)
		return err
	})
	h.expect("return q0 results caps=[sh0]")
}

// peerFinish sends the peer's Finish of question qid, keeping the
// capabilities of its results.
func (h *harness) peerFinish(qid uint32) {
	h.send(func(m rpccp.Message) error {
		f, err := m.NewFinish()
		f.SetQuestionId(qid)
		f.SetReleaseResultCaps(false)
		return err
	})
}

func echoText(t *testing.T, m rpccp.Message) string {
	t.Helper()
	r, _ := m.Return()
	p, _ := r.Results()
	content, _ := p.Content()
	text, err := interop.Echo_echo_Results(content.Struct()).Text()
	if err != nil {
		t.Fatal(err)
	}
	return text
}

// TestPeerCallsForwardedBackToIt: our results name the peer's own
// capability (receiverHosted); its call pipelined on them goes back on
// the wire to that capability with the params copied, and the Return it
// gets is copied into ours.
func TestPeerCallsForwardedBackToIt(t *testing.T) {
	srv := &stashEcho{}
	h := newHarness(t, capnp.Client(interop.Echo_ServerToClient(srv)))
	ctx := context.Background()
	boot := h.bootstrapImport(ctx) // import 0: the peer's export 0
	defer boot.Release()
	srv.cap = boot

	h.peerBootstrap(0)
	h.peerFinish(0)

	// q1: self() on our bootstrap returns the peer's capability.
	h.send(echoCall(1, 2, "tag", func(t rpccp.MessageTarget) error { t.SetImportedCap(0); return nil }))
	h.expect("return q1 results caps=[rh0]")

	// q2: echo("hi") pipelined on q1's field 0: back to the peer's export 0.
	h.send(func(m rpccp.Message) error {
		if err := callAnswer(1, 2, 0, 0)(m); err != nil {
			return err
		}
		c, _ := m.Call()
		return echoParams(c, "hi")
	})
	fwd := h.recvNot("finish")
	if d := DescribeMessage(fwd); !strings.HasPrefix(d, "call q1 → import 0 ") {
		t.Fatalf("got %q, want q2 forwarded to the peer's export 0", d)
	}
	c, _ := fwd.Call()
	p, _ := c.Params()
	content, _ := p.Content()
	if text, _ := interop.Echo_echo_Params(content.Struct()).Text(); text != "hi" {
		t.Fatalf("forwarded params say %q, want hi", text)
	}
	h.peerFinish(1)

	// The peer answers the forwarded call; its results come back as ours.
	h.send(returnEcho(1, "hi back"))
	got := h.recvNot("finish")
	if d := DescribeMessage(got); !strings.HasPrefix(d, "return q2 results") {
		t.Fatalf("got %q, want the Return of q2", d)
	}
	if text := echoText(t, got); text != "hi back" {
		t.Fatalf("forwarded results say %q, want %q", text, "hi back")
	}
	h.peerFinish(2)
}

// TestPeerPassesItsPipelinedAnswer: the peer names, in a call's params,
// the answer to one of its calls to us that has not returned
// (receiverAnswer); our callee gets a capability that becomes the
// results' capability once they are there.
func TestPeerPassesItsPipelinedAnswer(t *testing.T) {
	srv := interop.NewEchoServer()
	h := newHarness(t, capnp.Client(srv.Client(interop.PlainServer)))
	h.peerBootstrap(0)
	h.peerFinish(0)

	// q1: self("t") on our Echo; q2: callBack(ra q1.0, "x") before q1's
	// Return is read.
	h.send(echoCall(1, 2, "t: ", func(t rpccp.MessageTarget) error { t.SetImportedCap(0); return nil }))
	h.send(func(m rpccp.Message) error {
		call, err := m.NewCall()
		if err != nil {
			return err
		}
		call.SetQuestionId(2)
		call.SetInterfaceId(interop.Echo_TypeID)
		call.SetMethodId(5)
		tg, _ := call.NewTarget()
		tg.SetImportedCap(0)
		p, _ := call.NewParams()
		args, _ := interop.NewEcho_callBack_Params(p.Segment())
		_ = args.SetText("x")
		_ = capnp.Struct(args).SetPtr(0, capnp.NewInterface(p.Segment(), 0).ToPtr())
		caps, _ := p.NewCapTable(1)
		pa, _ := caps.At(0).NewReceiverAnswer()
		pa.SetQuestionId(1)
		ops, _ := pa.NewTransform(1)
		ops.At(0).SetGetPointerField(0)
		return p.SetContent(args.ToPtr())
	})
	// Our Echo calls back what q1 returned: our own Echo, prefixed "t: ",
	// called with Callback's method id on Echo's interface… is refused as
	// unimplemented, which the Return of q2 says.
	seen := map[string]bool{}
	for len(seen) < 2 {
		m := h.recv()
		d := DescribeMessage(m)
		switch {
		case strings.HasPrefix(d, "return q1 results"):
			seen["q1"] = true
		case strings.HasPrefix(d, "return q2"):
			seen["q2"] = true
			if !strings.Contains(d, "exception") {
				t.Fatalf("q2: %s, want the exception of a method its callback does not have", d)
			}
		default:
			t.Fatalf("unexpected %s", d)
		}
	}
	h.peerFinish(1)
	h.peerFinish(2)
}

// TestOurPipelinedAnswerInParams: a capability in the answer to one of
// our calls that has not returned, passed in another call's params,
// goes as receiverAnswer.
func TestOurPipelinedAnswerInParams(t *testing.T) {
	h := newHarness(t, capnp.Client{})
	ctx := context.Background()
	boot := h.bootstrapImport(ctx)
	defer boot.Release()

	f, release := boot.Self(ctx, func(p interop.Echo_self_Params) error { return p.SetTag("t") })
	defer release()
	if d := DescribeMessage(h.recvNot("finish")); !strings.HasPrefix(d, "call q1 → import 0 ") {
		t.Fatalf("got %q, want self()", d)
	}
	pipelined := capnp.Client(f.Echo())
	f2, release2 := boot.CallBack(ctx, func(p interop.Echo_callBack_Params) error {
		return p.SetCallback(interop.Callback(pipelined.AddRef()))
	})
	defer release2()
	m := h.expect("call q2 → import 0 0x96bc4f1951d41121/5 caps=[ra q1]")
	c, _ := m.Call()
	p, _ := c.Params()
	caps, _ := p.CapTable()
	pa, _ := caps.At(0).ReceiverAnswer()
	if tr, err := decodeTransform(pa); err != nil || len(tr) != 1 || tr[0] != 0 {
		t.Fatalf("receiverAnswer transform %v (%v), want field 0", tr, err)
	}

	h.send(returnEcho(2, "done"))
	if _, err := f2.Struct(); err != nil {
		t.Fatal(err)
	}
	h.send(func(m rpccp.Message) error {
		r, err := m.NewReturn()
		r.SetAnswerId(1)
		r.SetCanceled()
		return err
	})
	if _, err := f.Struct(); err == nil {
		t.Fatal("a canceled Return settled the call without an error")
	}
}

// TestResultsOutliveTheConnection: results the caller has not released
// stay whole when the connection's end stops the question's actor.
func TestResultsOutliveTheConnection(t *testing.T) {
	h := newHarness(t, capnp.Client{})
	ctx := context.Background()
	boot := h.bootstrapImport(ctx)
	defer boot.Release()
	f, release := boot.Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText("kept") })
	call := h.recvNot("finish")
	c, _ := call.Call()
	h.send(returnEcho(c.QuestionId(), "kept"))
	res, err := f.Struct()
	if err != nil {
		t.Fatal(err)
	}
	h.c.Close()
	<-h.c.Done()
	for range 3 { // what a freed message's buffer would be reused by
		msg, _ := newMessage()
		msg.Release()
	}
	if text, err := res.Text(); err != nil || text != "kept" {
		t.Fatalf("results read %q (%v) after the connection ended, want kept", text, err)
	}
	release()
}
