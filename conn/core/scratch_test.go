package core

import (
	"reflect"
	"testing"
)

// TestRestKeepsNothing: a core that works in lent storage holds none of
// it between turns, and what it gives back holds nothing of the turn: no
// output, and the records of a burst's 64 questions and 64 answers, free
// for reuse, wiped.
func TestRestKeepsNothing(t *testing.T) {
	s := bootstrapped(t, Config{})
	shared := s.core.Rest() // the core's own storage, made by New
	turn := func(in Input) {
		s.core.Lend(shared)
		s.in(in)
		shared = s.core.Rest()
		if shared == nil || !s.core.AtRest() {
			t.Fatalf("after %s the core keeps its storage", Describe(in))
		}
	}
	const burst = 64
	for i := uint32(1); i <= burst; i++ {
		turn(&Received{Msg: &Call{QuestionID: i, Target: Target{Kind: ImportedCap, ID: 0}, Method: echo, Params: Payload{Content: fields{}}}})
		turn(&LocalCall{Call: CallID(100 + i), Target: Cap{Kind: CapImport, ID: 0}, Method: echo, Params: Payload{Content: fields{}}})
	}
	for i := uint32(1); i <= burst; i++ {
		turn(&Returned{Answer: i, Results: &Payload{Content: fields{}}})
		turn(&Received{Msg: &Finish{QuestionID: i}})
		turn(&Received{Msg: &Return{AnswerID: i - 1, Results: &Payload{Content: fields{}}}})
		turn(&LocalFinish{Call: CallID(100 + i)})
		turn(&ChildStopped{Child: Child{Kind: QuestionChild, ID: i - 1, Call: CallID(100 + i)}}) // question ids start at 0 again
	}
	if st := s.core.Stats(); st.Questions != 0 || st.Answers != 0 {
		t.Fatalf("stats %v after the burst", st)
	}
	if len(shared.freeA) != burst || len(shared.freeQ) != burst {
		t.Errorf("the storage keeps %d answers and %d questions for reuse, want %d each", len(shared.freeA), len(shared.freeQ), burst)
	}
	for _, a := range shared.freeA {
		if !reflect.DeepEqual(*a, answer{held: a.held, wireDescs: a.wireDescs}) || !zeroed(a.held[:cap(a.held)]) || !zeroed(a.wireDescs[:cap(a.wireDescs)]) {
			t.Fatalf("a free answer keeps its last use: %+v", *a)
		}
	}
	for _, q := range shared.freeQ {
		if !reflect.DeepEqual(*q, question{pipelined: q.pipelined, settleCaps: q.settleCaps, resultsCaps: q.resultsCaps}) ||
			!zeroed(q.pipelined[:cap(q.pipelined)]) || !zeroed(q.settleCaps[:cap(q.settleCaps)]) || !zeroed(q.resultsCaps[:cap(q.resultsCaps)]) {
			t.Fatalf("a free question keeps its last use: %+v", *q)
		}
	}
	if !zeroed(shared.out[:cap(shared.out)]) {
		t.Error("the storage keeps the last turn's outputs")
	}
	o := reflect.ValueOf(shared.o)
	for i := range o.NumField() {
		buf := o.Field(i).FieldByName("buf")
		for j := range buf.Len() {
			if !buf.Index(j).IsZero() {
				t.Fatalf("the storage of %s outputs keeps one: %v", o.Type().Field(i).Name, buf.Index(j))
			}
		}
	}
	// Another core works in the same storage from where this one left it.
	other := bootstrapped(t, Config{})
	other.core.Rest()
	other.core.Lend(shared)
	other.recv(&Call{QuestionID: 5, Target: Target{Kind: ImportedCap, ID: 0}, Method: echo})
	other.has("deliver a5 to local #1")
	if len(shared.freeA) != burst-1 {
		t.Errorf("the other core made its answer anew (%d free), not from the storage", len(shared.freeA))
	}
}

func zeroed[T any](s []T) bool {
	for i := range s {
		if !reflect.ValueOf(&s[i]).Elem().IsZero() {
			return false
		}
	}
	return true
}
