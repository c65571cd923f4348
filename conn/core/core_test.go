package core

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vatactor/vatactor/supervisor"
)

func TestScriptCallsBothWays(t *testing.T) {
	s := bootstrapped(t, Config{})
	s.note("the peer calls our bootstrap; we deliver it and return a capability")
	s.recv(&Call{QuestionID: 1, Target: Target{Kind: ImportedCap, ID: 0}, Method: echo})
	s.has("deliver a1 to local #1")
	s.in(&Returned{Answer: 1, Results: &Payload{Content: fields{0}, CapTable: []Cap{Local(7)}}})
	s.has("send return a1 results caps[senderHosted 1]")
	s.has("spawn export 1")
	s.recv(&Finish{QuestionID: 1})
	s.note("we call the peer's bootstrap with a capability of ours in the params")
	s.in(&LocalCall{Call: 2, Target: Cap{Kind: CapImport, ID: 0}, Method: echo, Params: Payload{Content: fields{0}, CapTable: []Cap{Local(7)}}})
	s.has("send call q0 export 0 @0xe0.0 caps[senderHosted 1]")
	s.recv(&Return{AnswerID: 0, Results: &Payload{Content: fields{}}})
	s.has("settle c2 results")
	s.has("send finish q0") // no capability in the answer: finished at once, as go-capnp does
	s.in(&LocalFinish{Call: 2})
	s.lacks("send finish")
	s.note("the peer releases our capability: both references it had")
	s.recv(&Release{ID: 1, Count: 2})
	s.has("stop export 1")
	s.in(&LocalRelease{Cap: Cap{Kind: CapImport, ID: 0}})
	s.has("send release export 0 ×1")
	if st := s.core.Stats(); st.Exports != 1 || st.Imports != 0 || st.Answers != 0 {
		t.Errorf("stats %v, want only the bootstrap export", st)
	}
	s.golden()
}

func TestScriptPipelining(t *testing.T) {
	s := bootstrapped(t, Config{})
	s.note("we pipeline on our own question before its Return")
	s.in(&LocalCall{Call: 2, Target: Cap{Kind: CapImport, ID: 0}, Method: getCap})
	s.in(&LocalCall{Call: 3, Target: Cap{Kind: CapQuestion, Call: 2, Transform: []uint16{0}}, Method: echo})
	s.has("send call q1 answer 0.0 @0xe0.0")
	s.note("the peer pipelines on its call to us while it runs: held, then delivered in order")
	s.recv(&Call{QuestionID: 5, Target: Target{Kind: ImportedCap, ID: 0}, Method: getCap})
	s.recv(&Call{QuestionID: 6, Target: Target{Kind: PromisedAnswer, ID: 5, Transform: []uint16{0}}, Method: echo})
	s.lacks("deliver a6")
	s.recv(&Call{QuestionID: 7, Target: Target{Kind: PromisedAnswer, ID: 5, Transform: []uint16{1}}, Method: echo})
	s.in(&Returned{Answer: 5, Results: &Payload{Content: fields{0, -1}, CapTable: []Cap{Local(9)}}})
	s.has("deliver a6 to local #9")
	s.has("send return a7 exception failed \"capnp: pipelined call on a field that is null\"")
	s.note("a pipelined call on a question that is not in flight is a protocol error")
	s.recv(&Call{QuestionID: 8, Target: Target{Kind: PromisedAnswer, ID: 99}, Method: echo})
	s.stopChildren()
	s.has("send abort failed")
	if r := s.core.Reason(); !errors.Is(r, ErrUnknownID) {
		t.Errorf("reason %v, want ErrUnknownID", r)
	}
	s.golden()
}

func TestScriptDrainWithCallsInFlight(t *testing.T) {
	s := bootstrapped(t, Config{})
	s.core.SetPeerOurs()
	s.recv(&Call{QuestionID: 1, Target: Target{Kind: ImportedCap, ID: 0}, Method: echo})
	s.in(&LocalCall{Call: 2, Target: Cap{Kind: CapImport, ID: 0}, Method: echo})
	s.note("shutdown with drain: calls in flight both ways finish, new ones are refused")
	s.in(&Shutdown{Epitaph: ok, Drain: true})
	s.has("arm drain deadline")
	s.recv(&Call{QuestionID: 2, Target: Target{Kind: ImportedCap, ID: 0}, Method: echo})
	s.has("send return a2 exception disconnected")
	s.has("epitaph OK: bye")
	s.in(&LocalCall{Call: 3, Target: Cap{Kind: CapImport, ID: 0}, Method: echo})
	s.has("settle c3 error disconnected")
	if err := settleErr(s.last, 3); !errors.Is(err, ErrNotProcessed) {
		t.Errorf("a call made during the drain: %v, want ErrNotProcessed", err)
	}
	s.in(&Returned{Answer: 1, Results: &Payload{Content: fields{}}})
	s.recv(&Return{AnswerID: 0, Results: &Payload{Content: fields{}}})
	s.note("nothing left in flight: the drain waits for the peer's Finish of a1 and a2 (at most FinishWait)")
	s.has("arm finish deadline")
	s.recv(&Finish{QuestionID: 2})
	s.lacks("drain done")
	s.recv(&Finish{QuestionID: 1})
	s.note("the peer has nothing left to send: the drain ends and the end goes on")
	s.has("event drain done: refused 1; left in flight: 0 questions, 0 answers")
	s.has("event stopQuestions started")
	r := s.closeGracefully()
	if r.Refused != 1 || r.Canceled != 0 || r.Abandoned != 0 || !r.EpitaphSent {
		t.Errorf("report %+v", r)
	}
	var names []string
	for _, p := range r.Phases {
		names = append(names, string(p.Phase))
	}
	if got := strings.Join(names, " "); got != "drain stopQuestions stopExports releaseImports sendEpitaph closeWrite linger closeSocket" {
		t.Errorf("phases %s", got)
	}
	s.golden()
}

func settleErr(out []Output, call CallID) error {
	for _, o := range out {
		if st, ok := o.(*Settle); ok && st.Call == call {
			return st.Err
		}
	}
	return nil
}

func TestScriptDrainFinishWait(t *testing.T) {
	s := bootstrapped(t, Config{FinishWait: 200 * time.Millisecond})
	s.recv(&Call{QuestionID: 1, Target: Target{Kind: ImportedCap, ID: 0}, Method: echo})
	s.in(&Returned{Answer: 1, Results: &Payload{Content: fields{}}})
	s.in(&Shutdown{Epitaph: ok, Drain: true})
	s.note("no call in flight, but a1 waits for its Finish")
	s.has("arm finish deadline")
	s.advance(199 * time.Millisecond)
	s.lacks("drain done")
	s.note("the peer keeps a1: the drain ends after FinishWait, not cut short")
	s.advance(time.Millisecond)
	s.has("event drain done: refused 0; left in flight: 0 questions, 0 answers; 1 returned without their Finish (finish wait over)")
	wantDrainTook(t, s.closeGracefully(), 200*time.Millisecond)
	s.golden()
}

func TestScriptDrainWaitsForReturnOfCanceledCall(t *testing.T) {
	s := bootstrapped(t, Config{FinishWait: 200 * time.Millisecond})
	s.in(&LocalCall{Call: 2, Target: Cap{Kind: CapImport, ID: 0}, Method: echo})
	s.in(&LocalCancel{Call: 2, Err: errors.New("context canceled")})
	s.has("send finish q0 releaseResultCaps")
	s.in(&Shutdown{Epitaph: ok, Drain: true})
	s.note("nothing in flight, but the peer still owes q0's Return")
	s.has("arm finish deadline")
	s.lacks("drain done")
	s.advance(100 * time.Millisecond)
	s.recv(&Return{AnswerID: 0, Results: &Payload{Content: fields{}}})
	s.note("the Return is in: the peer has nothing left to send")
	s.has("event drain done: refused 0; left in flight: 0 questions, 0 answers")
	wantDrainTook(t, s.closeGracefully(), 100*time.Millisecond)
	s.golden()
}

func TestScriptDrainFinishWaitForAReturn(t *testing.T) {
	s := bootstrapped(t, Config{FinishWait: 200 * time.Millisecond})
	s.in(&LocalCall{Call: 2, Target: Cap{Kind: CapImport, ID: 0}, Method: echo})
	s.in(&LocalCancel{Call: 2, Err: errors.New("context canceled")})
	s.in(&Shutdown{Epitaph: ok, Drain: true})
	s.note("the Return never comes: the drain ends after FinishWait, not cut short")
	s.advance(200 * time.Millisecond)
	s.has("event drain done: refused 0; left in flight: 0 questions, 0 answers; 1 finished without their Return (finish wait over)")
	wantDrainTook(t, s.closeGracefully(), 200*time.Millisecond)
	s.golden()
}

func TestScriptDrainDoesNotWaitForAnswersWithCaps(t *testing.T) {
	s := bootstrapped(t, Config{})
	s.recv(&Call{QuestionID: 1, Target: Target{Kind: ImportedCap, ID: 0}, Method: echo})
	s.in(&Returned{Answer: 1, Results: &Payload{Content: fields{0}, CapTable: []Cap{Local(7)}}})
	s.note("a1's results hold a capability: the peer may keep them while it uses it, so the drain ends at once")
	s.in(&Shutdown{Epitaph: ok, Drain: true})
	s.lacks("arm finish deadline")
	s.has("event drain done: refused 0; left in flight: 0 questions, 0 answers")
	s.closeGracefully()
	s.golden()
}

func TestScriptDrainCutShortAndStuckActor(t *testing.T) {
	s := bootstrapped(t, Config{DrainTimeout: time.Second, StopTimeout: 100 * time.Millisecond})
	s.recv(&Call{QuestionID: 1, Target: Target{Kind: ImportedCap, ID: 0}, Method: echo})
	s.in(&LocalCall{Call: 2, Target: Cap{Kind: CapImport, ID: 0}, Method: echo})
	s.in(&Shutdown{Epitaph: ok, Drain: true})
	s.note("nothing returns: the drain deadline cuts it short")
	s.advance(time.Second)
	s.has("drain done CUT SHORT")
	s.has("send return a1 exception disconnected \"capnp: call abandoned")
	s.has("settle c2 error disconnected")
	if err := settleErr(s.last, 2); !errors.Is(err, ErrOutcomeUnknown) {
		t.Errorf("a question cut short: %v, want ErrOutcomeUnknown", err)
	}
	s.note("the question actor never stops: StopTimeout moves on")
	s.advance(100 * time.Millisecond)
	s.has("question 0 did not stop in time")
	s.note("the Returned of the abandoned call comes late and is dropped")
	s.in(&Returned{Answer: 1, Results: &Payload{Content: fields{}}})
	s.note("hurry: every wait left is skipped")
	s.in(&Hurry{})
	s.has("export 0 did not stop in time")
	s.has("close socket")
	s.closeSocket()
	r := s.down()
	if r.StuckActors != 2 || r.Abandoned != 1 || r.Canceled != 1 {
		t.Errorf("report %+v", r)
	}
	s.golden()
}

func TestScriptCancel(t *testing.T) {
	s := bootstrapped(t, Config{})
	s.in(&LocalCall{Call: 2, Target: Cap{Kind: CapImport, ID: 0}, Method: echo})
	s.in(&LocalCancel{Call: 2, Err: errors.New("context canceled")})
	s.has("send finish q0 releaseResultCaps")
	s.has("settle c2 error context canceled")
	s.note("the Return comes after our Finish: nothing of it is imported")
	s.recv(&Return{AnswerID: 0, Results: &Payload{Content: fields{0}, Caps: []CapDescriptor{{Kind: SenderHosted, ID: 4}}}})
	s.lacks("settle")
	s.has("stop question 0")
	if st := s.core.Stats(); st.Imports != 1 || st.Questions != 0 {
		t.Errorf("stats %v", st)
	}
	s.note("the peer cancels one of its calls: the callee is told, its Return still goes")
	s.recv(&Call{QuestionID: 3, Target: Target{Kind: ImportedCap, ID: 0}, Method: echo})
	s.recv(&Finish{QuestionID: 3, ReleaseResultCaps: true})
	s.has("cancel a3")
	s.in(&Returned{Answer: 3, Err: errors.New("canceled")})
	s.has("send return a3 exception")
	if st := s.core.Stats(); st.Answers != 0 {
		t.Errorf("stats %v", st)
	}
	s.golden()
}

func TestScriptResolveAndEmbargo(t *testing.T) {
	s := bootstrapped(t, Config{})
	s.note("the peer gives us a promise (import 3); we call it")
	s.in(&LocalCall{Call: 2, Target: Cap{Kind: CapImport, ID: 0}, Method: getCap})
	s.recv(&Return{AnswerID: 0, Results: &Payload{Content: fields{0}, Caps: []CapDescriptor{{Kind: SenderPromise, ID: 3}}}})
	s.in(&LocalFinish{Call: 2})
	s.in(&LocalCall{Call: 3, Target: Cap{Kind: CapImport, ID: 3}, Method: echo})
	s.has("send call q0 export 3")
	s.note("it resolves to our own bootstrap: our call is on its way back to us, so later calls wait")
	s.recv(&Resolve{PromiseID: 3, Cap: &CapDescriptor{Kind: ReceiverHosted, ID: 0}})
	s.has("send disembargo export 3 senderLoopback 0")
	s.in(&LocalCall{Call: 4, Target: Cap{Kind: CapImport, ID: 3}, Method: echo})
	s.in(&LocalCall{Call: 5, Target: Cap{Kind: CapImport, ID: 3}, Method: echo})
	s.lacks("redirect")
	s.note("the peer reflects our first call back, then the disembargo")
	s.recv(&Call{QuestionID: 9, Target: Target{Kind: ImportedCap, ID: 0}, Method: echo})
	s.has("deliver a9 to local #1")
	s.recv(&Disembargo{Target: Target{Kind: ImportedCap, ID: 0}, Context: ReceiverLoopback, EmbargoID: 0})
	out := s.last
	var order []string
	for _, o := range out {
		if r, ok := o.(*Redirect); ok {
			order = append(order, Describe(r))
		}
	}
	if len(order) != 2 || !strings.Contains(order[0], "c4") || !strings.Contains(order[1], "c5") {
		t.Errorf("held calls let through as %v, want c4 then c5", order)
	}
	s.has("import 3 resolved to local #1")
	s.note("a call made now goes straight to our capability")
	s.in(&LocalCall{Call: 6, Target: Cap{Kind: CapImport, ID: 3}, Method: echo})
	s.has("redirect c6 to local #1")
	s.note("a second resolve of the same promise breaks the protocol")
	s.recv(&Resolve{PromiseID: 3, Cap: &CapDescriptor{Kind: ReceiverHosted, ID: 0}})
	if !errors.Is(s.core.Reason(), ErrDuplicateID) {
		t.Errorf("reason %v", s.core.Reason())
	}
	s.golden()
}

func TestScriptResolveLoop(t *testing.T) {
	s := bootstrapped(t, Config{})
	s.in(&LocalCall{Call: 2, Target: Cap{Kind: CapImport, ID: 0}, Method: getCap})
	s.recv(&Return{AnswerID: 0, Results: &Payload{Content: fields{0, 1, 2}, Caps: []CapDescriptor{
		{Kind: SenderPromise, ID: 7}, {Kind: SenderPromise, ID: 8}, {Kind: SenderPromise, ID: 9}}}})
	s.recv(&Resolve{PromiseID: 7, Cap: &CapDescriptor{Kind: SenderPromise, ID: 8}})
	s.has("import 7 resolved to import 8")
	s.note("a loop through another promise breaks the promise, not the connection (two vats can make one)")
	s.recv(&Resolve{PromiseID: 8, Cap: &CapDescriptor{Kind: SenderPromise, ID: 7}})
	s.has("import 8 resolved to broken")
	s.in(&LocalCall{Call: 3, Target: Cap{Kind: CapImport, ID: 7}, Method: echo})
	if err := settleErr(s.last, 3); !errors.Is(err, ErrResolveLoop) {
		t.Errorf("a call on the loop: %v, want ErrResolveLoop", err)
	}
	if s.core.Reason() != nil {
		t.Fatalf("reason %v, want the connection open", s.core.Reason())
	}
	s.note("a promise resolved to itself is the peer's doing alone: a protocol error")
	s.recv(&Resolve{PromiseID: 9, Cap: &CapDescriptor{Kind: SenderPromise, ID: 9}})
	if !errors.Is(s.core.Reason(), ErrResolveLoop) {
		t.Fatalf("reason %v, want ErrResolveLoop", s.core.Reason())
	}
	s.stopChildren()
	s.has("send abort failed \"promise resolution loop: promise 9 resolved to itself\"")
	s.golden()
}

func TestScriptDisembargoReflected(t *testing.T) {
	s := bootstrapped(t, Config{})
	s.note("we export a promise (local promise #5) to the peer")
	s.recv(&Call{QuestionID: 1, Target: Target{Kind: ImportedCap, ID: 0}, Method: getCap})
	s.in(&Returned{Answer: 1, Results: &Payload{Content: fields{0}, CapTable: []Cap{LocalPromise(5)}}})
	s.has("senderPromise 1")
	s.recv(&Finish{QuestionID: 1})
	s.note("the peer calls it: the call waits in the core until the promise resolves, to the peer's own bootstrap (import 0)")
	s.recv(&Call{QuestionID: 2, Target: Target{Kind: ImportedCap, ID: 1}, Method: echo})
	s.lacks("deliver")
	s.in(&LocalResolved{Ref: 5, To: Cap{Kind: CapImport, ID: 0}})
	s.has("send call q0 export 0")
	s.has("send resolve promise 1 to receiverHosted 0")
	s.note("a call the peer made before it saw the Resolve goes back on the wire, then its disembargo is reflected after it")
	s.recv(&Call{QuestionID: 3, Target: Target{Kind: ImportedCap, ID: 1}, Method: echo})
	s.has("send call q1 export 0")
	s.recv(&Disembargo{Target: Target{Kind: ImportedCap, ID: 1}, Context: SenderLoopback, EmbargoID: 4})
	s.has("send disembargo export 0 receiverLoopback 4")
	s.note("the forwarded calls' answers go back as the peer's answers")
	s.recv(&Return{AnswerID: 0, Results: &Payload{Content: fields{}}})
	s.has("send finish q0")
	s.has("send return a2 results")
	s.recv(&Return{AnswerID: 1, Results: &Payload{Content: fields{}}})
	s.has("send return a3 results")
	s.note("a disembargo of a capability that does not point back to the peer breaks the protocol")
	s.recv(&Disembargo{Target: Target{Kind: ImportedCap, ID: 0}, Context: SenderLoopback, EmbargoID: 5})
	if !errors.Is(s.core.Reason(), ErrMalformed) {
		t.Errorf("reason %v", s.core.Reason())
	}
	s.golden()
}

func TestScriptResultsEmbargo(t *testing.T) {
	s := bootstrapped(t, Config{})
	s.note("we pipeline on our question; its results turn out to be our own capability")
	s.in(&LocalCall{Call: 2, Target: Cap{Kind: CapImport, ID: 0}, Method: getCap})
	s.in(&LocalCall{Call: 3, Target: Cap{Kind: CapQuestion, Call: 2, Transform: []uint16{0}}, Method: echo})
	s.recv(&Return{AnswerID: 0, Results: &Payload{Content: fields{0}, Caps: []CapDescriptor{{Kind: ReceiverHosted, ID: 0}}}})
	s.has("send disembargo answer 0.0 senderLoopback 0")
	s.in(&LocalCall{Call: 4, Target: Cap{Kind: CapQuestion, Call: 2, Transform: []uint16{0}}, Method: echo})
	s.lacks("redirect")
	s.in(&LocalFinish{Call: 2})
	s.lacks("send finish")
	s.recv(&Call{QuestionID: 7, Target: Target{Kind: ImportedCap, ID: 0}, Method: echo})
	s.recv(&Disembargo{Target: Target{Kind: ImportedCap, ID: 0}, Context: ReceiverLoopback, EmbargoID: 0})
	s.has("redirect c4 to local #1")
	s.note("the caller was given the embargoed capability as the question's: its Finish waits for that too")
	s.lacks("send finish")
	s.in(&LocalRelease{Cap: Cap{Kind: CapQuestion, Call: 2, Transform: []uint16{0}}})
	s.has("send finish q0")
	s.golden()
}

func TestScriptUnimplemented(t *testing.T) {
	s := bootstrapped(t, Config{Limits: Limits{MaxUnimplementedEcho: 100}})
	s.recv(&Unknown{Kind: 42, Size: 64})
	s.has("send unimplemented (unknown message kind 42 (64 bytes))")
	s.in(&LocalCall{Call: 2, Target: Cap{Kind: CapImport, ID: 0}, Method: echo})
	s.recv(&Unimplemented{Message: &Call{QuestionID: 0, Target: Target{Kind: ImportedCap, ID: 0}, Method: echo}})
	s.has("settle c2 error capnp: the peer does not implement")
	s.recv(&Unknown{Kind: 43, Size: 1000})
	var be *BudgetError
	if !errors.As(s.core.Reason(), &be) || be.Budget != "MaxUnimplementedEcho" {
		t.Errorf("reason %v", s.core.Reason())
	}
	s.golden()
}

func TestScriptLimits(t *testing.T) {
	t.Run("held-answers", func(t *testing.T) {
		s := bootstrapped(t, Config{Limits: Limits{MaxHeldAnswers: 2}})
		s.recv(&Call{QuestionID: 1, Target: Target{Kind: ImportedCap, ID: 0}, Method: echo})
		s.recv(&Call{QuestionID: 2, Target: Target{Kind: ImportedCap, ID: 0}, Method: echo})
		s.recv(&Call{QuestionID: 3, Target: Target{Kind: ImportedCap, ID: 0}, Method: echo})
		var be *BudgetError
		if !errors.As(s.core.Reason(), &be) || be.Budget != "MaxHeldAnswers" {
			t.Errorf("reason %v", s.core.Reason())
		}
		s.golden()
	})
	t.Run("overloaded", func(t *testing.T) {
		s := bootstrapped(t, Config{MaxAnswers: 1})
		s.recv(&Call{QuestionID: 1, Target: Target{Kind: ImportedCap, ID: 0}, Method: echo})
		s.recv(&Call{QuestionID: 2, Target: Target{Kind: ImportedCap, ID: 0}, Method: echo})
		s.has("send return a2 exception overloaded")
		s.golden()
	})
	t.Run("caps-per-message", func(t *testing.T) {
		s := bootstrapped(t, Config{Limits: Limits{MaxCapsPerMessage: 2}})
		caps := []CapDescriptor{{Kind: SenderHosted, ID: 1}, {Kind: SenderHosted, ID: 2}, {Kind: SenderHosted, ID: 3}}
		s.recv(&Call{QuestionID: 1, Target: Target{Kind: ImportedCap, ID: 0}, Method: echo, Params: Payload{Caps: caps}})
		if st := s.core.Stats(); st.Imports > 1 {
			t.Errorf("imported %d", st.Imports)
		}
		var be *BudgetError
		if !errors.As(s.core.Reason(), &be) || be.Budget != "MaxCapsPerMessage" {
			t.Errorf("reason %v", s.core.Reason())
		}
		s.golden()
	})
	t.Run("imports", func(t *testing.T) {
		s := bootstrapped(t, Config{Limits: Limits{MaxImports: 2}})
		caps := []CapDescriptor{{Kind: SenderHosted, ID: 1}, {Kind: SenderHosted, ID: 2}}
		s.recv(&Call{QuestionID: 1, Target: Target{Kind: ImportedCap, ID: 0}, Method: echo, Params: Payload{Caps: caps}})
		var be *BudgetError
		if !errors.As(s.core.Reason(), &be) || be.Budget != "MaxImports" {
			t.Errorf("reason %v", s.core.Reason())
		}
		s.golden()
	})
	t.Run("reason-length", func(t *testing.T) {
		s := bootstrapped(t, Config{Limits: Limits{MaxReasonLength: 8}})
		s.recv(&Abort{Exception: Exception{Type: ExcFailed, Reason: strings.Repeat("x", 100)}})
		var pa supervisor.PeerAbort
		if !errors.As(s.core.Reason(), &pa) || pa.Reason != "xxxxxxxx… (100 bytes, cut)" {
			t.Errorf("reason %v", s.core.Reason())
		}
		s.golden()
	})
}

func TestScriptPeerEnds(t *testing.T) {
	t.Run("eof-busy", func(t *testing.T) {
		s := bootstrapped(t, Config{})
		s.in(&LocalCall{Call: 2, Target: Cap{Kind: CapImport, ID: 0}, Method: echo})
		s.in(&ReadEnded{EOF: true})
		s.has("settle c2 error disconnected")
		r := s.closeGracefully()
		if _, ok := r.Reason.(supervisor.PeerEOF); !ok || r.Reason.Expected() {
			t.Errorf("reason %v, want a busy PeerEOF", r.Reason)
		}
		for _, m := range s.sentAll() {
			if _, ok := m.(*Abort); ok {
				t.Errorf("sent %v after the peer's EOF", m)
			}
			if _, ok := m.(*Release); ok {
				t.Errorf("sent %v after the peer's EOF", m)
			}
		}
		s.golden()
	})
	t.Run("epitaph-not-processed", func(t *testing.T) {
		s := bootstrapped(t, Config{})
		s.core.SetPeerOurs()
		s.in(&LocalCall{Call: 2, Target: Cap{Kind: CapImport, ID: 0}, Method: echo})
		ep := supervisor.Epitaph{Code: supervisor.OK, Message: "done"}
		s.recv(&Abort{Exception: Exception{Type: ExcDisconnected, Reason: "bye", Epitaph: &ep}})
		if err := settleErr(s.last, 2); !errors.Is(err, ErrNotProcessed) {
			t.Errorf("a call the peer left unanswered before its epitaph: %v, want ErrNotProcessed", err)
		}
		r := s.closeGracefully()
		if !r.Reason.Expected() {
			t.Errorf("reason %v", r.Reason)
		}
		s.golden()
	})
	t.Run("abort", func(t *testing.T) {
		s := bootstrapped(t, Config{})
		s.recv(&Abort{Exception: Exception{Type: ExcFailed, Reason: "boom"}})
		s.closeGracefully()
		for _, m := range s.sentAll() {
			if _, ok := m.(*Abort); ok {
				t.Errorf("answered an Abort with %v", m)
			}
		}
		s.golden()
	})
	t.Run("transport", func(t *testing.T) {
		s := bootstrapped(t, Config{})
		s.in(&ReadEnded{Err: errors.New("connection reset by peer")})
		s.stopChildren()
		s.has("close socket (hard)")
		s.golden()
	})
}

// sentAll returns every message of the transcript's steps so far that
// came after the peer ended (the whole script's sends since the last
// input that was the peer's end are what matter; here: all after it).
func (s *script) sentAll() []Message {
	var ms []Message
	lines := strings.Split(s.log.String(), "\n")
	after := false
	for _, l := range lines {
		if strings.HasPrefix(l, "> read ended") || strings.HasPrefix(l, "> recv abort") {
			after = true
			continue
		}
		if after && strings.HasPrefix(l, "< send ") {
			ms = append(ms, parsedSend(l))
		}
	}
	return ms
}

// parsedSend stands for a sent message in sentAll, by its description.
func parsedSend(l string) Message {
	d := strings.TrimPrefix(l, "< send ")
	switch {
	case strings.HasPrefix(d, "abort"):
		return &Abort{Exception: Exception{Reason: d}}
	case strings.HasPrefix(d, "release"):
		return &Release{}
	}
	return &Unknown{}
}

func TestScriptStoppedFromOutside(t *testing.T) {
	s := bootstrapped(t, Config{})
	s.core.SetPeerOurs()
	s.in(&Stopped{})
	s.has("drain done skipped: connection actor stopped")
	r := s.closeGracefully()
	var ls supervisor.LocalShutdown
	if !errors.As(r.Reason, &ls) || ls.Epitaph.Code != supervisor.Canceled {
		t.Errorf("reason %v", r.Reason)
	}
	s.golden()
}

func TestScriptIdleTimeout(t *testing.T) {
	s := newScript(t, Config{IdleTimeout: time.Minute, Bootstrap: Local(1)})
	s.recv(&Bootstrap{QuestionID: 0})
	s.has("event busy")
	s.recv(&Finish{QuestionID: 0})
	s.note("the peer holds our bootstrap: busy; it releases it: idle, the deadline is armed again")
	s.recv(&Release{ID: 0, Count: 1})
	s.has("event idle")
	s.advance(time.Minute)
	s.has("ending: closed locally (epitaph OK: idle timeout)")
	s.closeGracefully()
	s.golden()
}

func TestScriptKeepAlive(t *testing.T) {
	s := newScript(t, Config{KeepAlive: KeepAlive{Interval: 10 * time.Second, Timeout: 5 * time.Second}, Bootstrap: Local(1)})
	s.note("ten seconds of silence: a probe, a Bootstrap finished at once")
	s.advance(10 * time.Second)
	s.has("send bootstrap q0")
	s.has("send finish q0 releaseResultCaps")
	s.lacks("event busy") // the probe is the core's own: the tables stay idle
	s.note("the peer answers it: alive, and the probe is gone")
	s.recv(&Return{AnswerID: 0, Canceled: true})
	s.advance(5 * time.Second)
	s.lacks("ending")
	if st := s.core.Stats(); !st.Idle() {
		t.Errorf("tables after the probe's Return: %v", st)
	}
	s.note("the peer's messages are signs of life: no probe while they come")
	s.advance(4 * time.Second)
	s.recv(&Bootstrap{QuestionID: 0})
	s.recv(&Finish{QuestionID: 0})
	s.advance(6 * time.Second) // ten since the last probe, six since the peer spoke
	s.lacks("send bootstrap")
	s.note("then nothing at all: the next probe goes unanswered and the connection ends")
	s.advance(4 * time.Second)
	s.has("send bootstrap q0")
	s.advance(5 * time.Second)
	s.has("ending: transport: peer unresponsive")
	s.stopChildren()
	s.has("close socket (hard)")
	s.golden()
}

// wantDrainTook checks that a graceful end's drain took took and was not
// cut short.
func wantDrainTook(t *testing.T, r Report, took time.Duration) {
	t.Helper()
	if d := r.Phases[0]; d.Phase != PhaseDrain || d.CutShort || d.Took != took {
		t.Errorf("drain %+v, want %v, not cut short", d, took)
	}
}
