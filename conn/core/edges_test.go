package core

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// The scripts of this file walk the less travelled paths: calls on
// capabilities of every kind, capabilities of every kind passed both
// ways, and each malformed Resolve and Disembargo a peer can send.

// deliveredCaps returns the capability table of the call delivered as
// answer a in the last step.
func (s *script) deliveredCaps(a uint32) []Cap {
	s.t.Helper()
	for _, o := range s.last {
		if d, ok := o.(*Deliver); ok && d.Answer == a {
			return d.Params.CapTable
		}
	}
	s.t.Fatalf("no delivery of a%d in the last step:\n%s", a, s.log.String())
	return nil
}

// TestScriptCallTargets: a local call on each kind of capability: one
// that cannot be called fails at once, one in a returned answer goes to
// the capability there, one in an answer still running waits for it.
func TestScriptCallTargets(t *testing.T) {
	s := bootstrapped(t, Config{})
	s.note("nothing to call: a null capability, a broken one, a released import, a kind we do not know")
	s.in(&LocalCall{Call: 2, Target: Cap{}, Method: echo})
	s.has("settle c2 error capnp: call on a null capability")
	s.in(&LocalCall{Call: 3, Target: Cap{Kind: CapBroken, Err: newError(ExcFailed, "gone")}, Method: echo})
	s.has("settle c3 error capnp: gone")
	s.in(&LocalCall{Call: 4, Target: Cap{Kind: CapImport, ID: 77}, Method: echo})
	s.has("call on a released capability (import 77)")
	s.in(&LocalCall{Call: 5, Target: Cap{Kind: 99}, Method: echo})
	s.has("call on a capability of unknown kind 99")

	s.note("a pipelined call on a question of ours we have finished")
	s.in(&LocalCall{Call: 6, Target: Cap{Kind: CapImport, ID: 0}, Method: getCap})
	s.in(&LocalFinish{Call: 6})
	s.in(&LocalCall{Call: 7, Target: Cap{Kind: CapQuestion, Call: 6, Transform: []uint16{0}}, Method: echo})
	s.has("settle c7 error capnp: pipelined call on an answer that was already finished")

	s.note("a call on a question of ours that has returned goes to the capability in its results")
	s.in(&LocalCall{Call: 8, Target: Cap{Kind: CapImport, ID: 0}, Method: getCap})
	s.recv(&Return{AnswerID: 1, Results: &Payload{Content: fields{0, -1}, Caps: []CapDescriptor{{Kind: SenderHosted, ID: 5}}}})
	s.in(&LocalCall{Call: 9, Target: Cap{Kind: CapQuestion, Call: 8, Transform: []uint16{0}}, Method: echo})
	s.has("send call q2 export 5 @0xe0.0")
	s.in(&LocalCall{Call: 10, Target: Cap{Kind: CapQuestion, Call: 8, Transform: []uint16{1}}, Method: echo})
	s.has("settle c10 error")

	s.note("the peer passes us a capability in one of our answers still running (receiverAnswer)")
	s.recv(&Call{QuestionID: 3, Target: Target{Kind: ImportedCap, ID: 0}, Method: getCap})
	s.recv(&Call{QuestionID: 4, Target: Target{Kind: ImportedCap, ID: 0}, Method: echo,
		Params: Payload{Content: fields{0}, Caps: []CapDescriptor{{Kind: ReceiverAnswer, ID: 3, Transform: []uint16{0}}}}})
	inAnswer := s.deliveredCaps(4)[0]
	if inAnswer.Kind != CapAnswer {
		t.Fatalf("receiverAnswer decoded as %v, want a capability in answer 3", inAnswer)
	}
	s.note("we call it and pass it on before the answer returns: the call waits, the peer gets a promise")
	s.in(&LocalCall{Call: 11, Target: inAnswer, Method: echo})
	s.lacks("settle c11")
	s.in(&LocalCall{Call: 12, Target: Cap{Kind: CapImport, ID: 0}, Method: echo, Params: Payload{Content: fields{0}, CapTable: []Cap{inAnswer}}})
	s.has("caps[senderPromise")
	s.in(&Returned{Answer: 3, Results: &Payload{Content: fields{0}, CapTable: []Cap{Local(7)}}})
	s.has("redirect c11 to local #7")
	s.has("send resolve")
	s.note("once it has returned, a call goes straight to local #7 and passing it passes local #7")
	s.in(&LocalCall{Call: 13, Target: inAnswer, Method: echo})
	s.has("redirect c13 to local #7")
	s.in(&LocalCall{Call: 14, Target: Cap{Kind: CapImport, ID: 0}, Method: echo, Params: Payload{Content: fields{0}, CapTable: []Cap{inAnswer}}})
	s.has("caps[senderHosted")
	s.note("the call delivered holds what it was passed: after the peer's Finish, still local #7")
	s.recv(&Finish{QuestionID: 3})
	s.in(&LocalCall{Call: 15, Target: inAnswer, Method: echo})
	s.has("redirect c15 to local #7")
	s.golden()
}

// TestScriptCapsPassed: capabilities of each kind in a local call's
// params, as they go on the wire, and each kind of descriptor in a
// peer's call, as it is delivered.
func TestScriptCapsPassed(t *testing.T) {
	s := bootstrapped(t, Config{})
	s.in(&LocalCall{Call: 2, Target: Cap{Kind: CapImport, ID: 0}, Method: getCap})
	s.in(&LocalCall{Call: 3, Target: Cap{Kind: CapImport, ID: 0}, Method: getCap})
	s.in(&LocalFinish{Call: 3})
	s.note("ours: null, a released import, a question in flight (receiverAnswer), a finished one, a broken capability, a kind we do not know")
	s.in(&LocalCall{Call: 4, Target: Cap{Kind: CapImport, ID: 0}, Method: echo, Params: Payload{Content: fields{0, 1, 2, 3, 4}, CapTable: []Cap{
		{}, {Kind: CapImport, ID: 66}, {Kind: CapQuestion, Call: 2, Transform: []uint16{1}}, {Kind: CapQuestion, Call: 3}, {Kind: CapBroken, Err: newError(ExcFailed, "broken")},
	}}})
	s.has("caps[none, senderHosted 1, receiverAnswer 0.1, senderHosted 2, senderHosted 3]")
	s.in(&LocalCall{Call: 5, Target: Cap{Kind: CapImport, ID: 0}, Method: echo, Params: Payload{Content: fields{0}, CapTable: []Cap{{Kind: 99}}}})
	s.has("settle c5 error capnp: capability of unknown kind 99")

	s.note("the peer's: null, our own export, an unknown export, a three-party capability")
	s.recv(&Call{QuestionID: 1, Target: Target{Kind: ImportedCap, ID: 0}, Method: echo,
		Params: Payload{Content: fields{0, 1, 2}, Caps: []CapDescriptor{{Kind: NoCap}, {Kind: ReceiverHosted, ID: 0}, {Kind: ThirdPartyHosted}}}})
	got := s.deliveredCaps(1)
	if got[0].Kind != CapNone || got[1].String() != "local #1" || got[2].Kind != CapBroken || !strings.Contains(got[2].Err.Error(), "three-party") {
		t.Errorf("delivered %v", got)
	}
	s.note("a receiverAnswer of an answer returned is the capability in its results")
	s.recv(&Call{QuestionID: 2, Target: Target{Kind: ImportedCap, ID: 0}, Method: getCap})
	s.in(&Returned{Answer: 2, Results: &Payload{Content: fields{0, 1}, CapTable: []Cap{Local(8)}}})
	s.recv(&Call{QuestionID: 3, Target: Target{Kind: ImportedCap, ID: 0}, Method: echo,
		Params: Payload{Content: fields{0, 1}, Caps: []CapDescriptor{{Kind: ReceiverAnswer, ID: 2, Transform: []uint16{0}}, {Kind: ReceiverAnswer, ID: 2, Transform: []uint16{1}}}}})
	got = s.deliveredCaps(3)
	if got[0].String() != "local #8" || got[1].Kind != CapBroken {
		t.Errorf("delivered %v, want local #8 and a broken capability (field 1 is null)", got)
	}
	s.note("a receiverHosted capability we do not export breaks the protocol")
	s.recv(&Call{QuestionID: 4, Target: Target{Kind: ImportedCap, ID: 0}, Method: echo,
		Params: Payload{Content: fields{0}, Caps: []CapDescriptor{{Kind: ReceiverHosted, ID: 42}}}})
	s.stopChildren()
	s.has("send abort failed")
	if r := s.core.Reason(); !errors.Is(r, ErrUnknownID) {
		t.Errorf("reason %v, want ErrUnknownID", r)
	}
	s.golden()
}

// TestScriptBadPeerMessages: each malformed Resolve, Disembargo and
// capability descriptor a peer can send ends the connection with a
// protocol error that says what was wrong.
func TestScriptBadPeerMessages(t *testing.T) {
	for _, tc := range []struct {
		name string
		msg  Message
		want error
		says string
	}{
		{"resolve-not-a-promise", &Resolve{PromiseID: 0, Cap: &CapDescriptor{Kind: SenderHosted, ID: 4}}, ErrMalformed, "not a promise"},
		{"resolve-to-bad-descriptor", &Resolve{PromiseID: 0, Cap: &CapDescriptor{Kind: 77}}, ErrMalformed, "unknown kind 77"},
		{"receiver-answer-not-in-flight", &Call{QuestionID: 1, Target: Target{Kind: ImportedCap, ID: 0}, Method: echo,
			Params: Payload{Content: fields{0}, Caps: []CapDescriptor{{Kind: ReceiverAnswer, ID: 9}}}}, ErrUnknownID, "not in flight"},
		{"disembargo-unknown-export", &Disembargo{Target: Target{Kind: ImportedCap, ID: 55}, Context: SenderLoopback}, ErrUnknownID, "which we do not export"},
		{"disembargo-answer-not-returned", &Disembargo{Target: Target{Kind: PromisedAnswer, ID: 12}, Context: SenderLoopback}, ErrUnknownID, "has not returned"},
		{"disembargo-bad-target", &Disembargo{Target: Target{Kind: 9}, Context: SenderLoopback}, ErrMalformed, "unknown kind"},
		{"disembargo-of-an-export-not-resolved", &Disembargo{Target: Target{Kind: ImportedCap, ID: 0}, Context: SenderLoopback}, ErrMalformed, "which has not resolved"},
		{"disembargo-no-such-embargo", &Disembargo{Target: Target{Kind: ImportedCap, ID: 0}, Context: ReceiverLoopback, EmbargoID: 31}, ErrUnknownID, "not up"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := bootstrapped(t, Config{})
			s.recv(tc.msg)
			s.has(tc.says)
			s.stopChildren()
			s.has("send abort failed")
			if r := s.core.Reason(); !errors.Is(r, tc.want) {
				t.Errorf("reason %v, want %v", r, tc.want)
			}
			s.golden()
		})
	}
}

// TestScriptDisembargoPaths: a Disembargo on a returned answer is
// reflected along it; one of a kind we do not implement is echoed back
// as Unimplemented.
func TestScriptDisembargoPaths(t *testing.T) {
	s := bootstrapped(t, Config{})
	s.note("our answer returned a capability of the peer's: the disembargo goes back to it")
	s.in(&LocalCall{Call: 2, Target: Cap{Kind: CapImport, ID: 0}, Method: getCap})
	s.recv(&Return{AnswerID: 0, Results: &Payload{Content: fields{0}, Caps: []CapDescriptor{{Kind: SenderHosted, ID: 6}}}})
	s.recv(&Call{QuestionID: 1, Target: Target{Kind: ImportedCap, ID: 0}, Method: getCap})
	s.in(&Returned{Answer: 1, Results: &Payload{Content: fields{0, -1}, CapTable: []Cap{{Kind: CapImport, ID: 6}}}})
	s.recv(&Disembargo{Target: Target{Kind: PromisedAnswer, ID: 1, Transform: []uint16{0}}, Context: SenderLoopback, EmbargoID: 4})
	s.has("send disembargo export 6 receiverLoopback 4")
	s.note("a pipelined question of ours in the answer: the disembargo goes to our question")
	s.in(&LocalCall{Call: 3, Target: Cap{Kind: CapImport, ID: 0}, Method: getCap})
	s.recv(&Call{QuestionID: 2, Target: Target{Kind: ImportedCap, ID: 0}, Method: getCap})
	s.in(&Returned{Answer: 2, Results: &Payload{Content: fields{0}, CapTable: []Cap{{Kind: CapQuestion, Call: 3, Transform: []uint16{0}}}}})
	s.recv(&Disembargo{Target: Target{Kind: PromisedAnswer, ID: 2, Transform: []uint16{0}}, Context: SenderLoopback, EmbargoID: 5})
	s.has("send disembargo answer 1.0 receiverLoopback 5")
	s.note("a field of the answer that holds no capability")
	s.recv(&Disembargo{Target: Target{Kind: PromisedAnswer, ID: 1, Transform: []uint16{1}}, Context: SenderLoopback, EmbargoID: 6})
	s.stopChildren()
	s.has("send abort failed")
	if r := s.core.Reason(); !errors.Is(r, ErrMalformed) {
		t.Errorf("reason %v, want ErrMalformed", r)
	}
	s.golden()

	u := bootstrapped(t, Config{})
	u.recv(&Disembargo{Target: Target{Kind: ImportedCap, ID: 0}, Context: OtherContext})
	u.has("send unimplemented")
	u.lacks("abort")
}

// TestScriptResolveBroken: a promise the peer resolves to an exception
// breaks the import: calls on it fail with the peer's reason; a Resolve
// of a promise we have released is dropped.
func TestScriptResolveBroken(t *testing.T) {
	s := bootstrapped(t, Config{})
	s.in(&LocalCall{Call: 2, Target: Cap{Kind: CapImport, ID: 0}, Method: getCap})
	s.recv(&Return{AnswerID: 0, Results: &Payload{Content: fields{0, 1, 2}, Caps: []CapDescriptor{{Kind: SenderPromise, ID: 3}, {Kind: SenderPromise, ID: 4}, {Kind: SenderPromise, ID: 5}}}})
	s.in(&LocalFinish{Call: 2})
	s.note("promise 3 breaks with the peer's reason, promise 4 with none")
	s.recv(&Resolve{PromiseID: 3, Exception: &Exception{Type: ExcFailed, Reason: "no such thing"}})
	s.has("import 3 resolved to broken")
	s.recv(&Resolve{PromiseID: 4})
	s.has("resolved to nothing")
	s.in(&LocalCall{Call: 3, Target: Cap{Kind: CapImport, ID: 3}, Method: echo})
	s.has("settle c3 error remote: no such thing")
	s.note("we release import 5; its Resolve, crossing our Release, is dropped, and what it names released")
	s.in(&LocalRelease{Cap: Cap{Kind: CapImport, ID: 5}})
	s.has("send release export 5 ×1")
	s.recv(&Resolve{PromiseID: 5, Cap: &CapDescriptor{Kind: SenderHosted, ID: 10}})
	s.has("send release export 10 ×1")
	s.lacks("abort")
	s.golden()
}

// TestInspect: the inspection and the tables agree with what the script
// did: a question of ours pipelined on, a peer's call running with a call
// held on its results (both running: admitted), our bootstrap exported,
// the peer's imported.
func TestInspect(t *testing.T) {
	s := bootstrapped(t, Config{MaxAnswers: 10})
	s.in(&LocalCall{Call: 2, Target: Cap{Kind: CapImport, ID: 0}, Method: getCap})
	s.in(&LocalCall{Call: 3, Target: Cap{Kind: CapQuestion, Call: 2, Transform: []uint16{0}}, Method: echo})
	s.advance(time.Second)
	s.recv(&Call{QuestionID: 4, Target: Target{Kind: ImportedCap, ID: 0}, Method: getCap, Params: Payload{Content: fields{}, Size: 100}})
	s.recv(&Call{QuestionID: 5, Target: Target{Kind: PromisedAnswer, ID: 4, Transform: []uint16{0}}, Method: echo})
	in := s.core.Inspect()
	if in.Phase != "open" || !in.Start.Equal(epoch) {
		t.Errorf("phase %q start %v", in.Phase, in.Start)
	}
	if len(in.Questions) != 2 || in.Questions[0].Call != 2 || in.Questions[0].Pipelined != 1 || in.Questions[0].State != "waiting" || !in.Questions[0].Since.Equal(epoch) {
		t.Errorf("questions %+v", in.Questions)
	}
	if len(in.Answers) != 2 || in.Answers[0].ID != 4 || in.Answers[0].State != "running" || in.Answers[0].Held != 1 || !in.Answers[0].Since.Equal(epoch.Add(time.Second)) {
		t.Errorf("answers %+v", in.Answers)
	}
	if len(in.Exports) != 1 || in.Exports[0].Refs != 1 || len(in.Imports) != 1 || in.Imports[0].Refs != 1 {
		t.Errorf("exports %+v imports %+v", in.Exports, in.Imports)
	}
	if b := in.Budget; b.Running != 2 || b.MaxAnswers != 10 || b.HeldAnswers != 2 || b.CallBytes != 100 || b.Imports != 1 || b.Exports != 1 {
		t.Errorf("budget %+v", b)
	}
	tb := s.core.Tables()
	if len(tb.Questions) != 2 || len(tb.Answers) != 2 || tb.Exports[0] != 1 || tb.Imports[0] != 1 || tb.Embargoes != 0 {
		t.Errorf("tables %+v", tb)
	}
	s.in(&Returned{Answer: 4, Results: &Payload{Content: fields{0}, CapTable: []Cap{Local(3)}}})
	s.recv(&Finish{QuestionID: 4})
	s.recv(&Return{AnswerID: 1, Results: &Payload{Content: fields{}}})
	in = s.core.Inspect()
	if len(in.Answers) != 1 || in.Answers[0].ID != 5 || len(in.Questions) != 1 || in.Questions[0].ID != 0 {
		t.Errorf("after the Returns: answers %+v questions %+v", in.Answers, in.Questions)
	}
}

// TestCopy: a copy of each kind of message equals it and outlives the
// core's storage.
func TestCopy(t *testing.T) {
	for _, m := range []Message{
		&Bootstrap{QuestionID: 1},
		&Call{QuestionID: 2, Method: echo},
		&Return{AnswerID: 3, Canceled: true},
		&Finish{QuestionID: 4},
		&Resolve{PromiseID: 5},
		&Release{ID: 6, Count: 2},
		&Disembargo{EmbargoID: 7, Context: SenderLoopback},
		&Abort{Exception: Exception{Reason: "x"}},
		&Unimplemented{Message: &Finish{QuestionID: 8}},
		&Unknown{Kind: 99, Size: 8},
	} {
		c := Copy(m)
		if c == m || c.String() != m.String() {
			t.Errorf("Copy(%v) = %v (same pointer: %v)", m, c, c == m)
		}
	}
	if u := Copy(&Unimplemented{Message: &Finish{QuestionID: 8}}).(*Unimplemented); u.Message.(*Finish).QuestionID != 8 {
		t.Errorf("the echoed message was not copied: %v", u)
	}
}
