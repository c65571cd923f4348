package core

import (
	"cmp"
	"slices"
	"time"
)

// Inspection is what the core knows of a connection at one moment, for a
// live view of it (a debug page): its phase, every table entry with its
// state and how long it has been there, and how much of each budget the
// peer uses. Entries are in id order.
type Inspection struct {
	Phase     string    // the lifecycle phase: open, draining, stopQuestions, stopExports, lingering, closed
	Start     time.Time // when the connection started
	Questions []QuestionInspection
	Answers   []AnswerInspection
	Exports   []ExportInspection
	Imports   []ImportInspection
	Embargoes int
	Budget    Budget
}

// QuestionInspection is one of our questions.
type QuestionInspection struct {
	ID        uint32
	Call      CallID // the local call it answers (0: the peer's call forwarded back, or a probe)
	Method    Method
	Bootstrap bool
	Probe     bool   // a keep-alive probe
	State     string // waiting, returned, finishing
	Since     time.Time
	Pipelined int // calls sent on its answer before its Return
}

// AnswerInspection is one of the peer's questions.
type AnswerInspection struct {
	ID        uint32
	Method    Method
	Bootstrap bool
	State     string // running, returned (its Finish to come), finished (results still named)
	Since     time.Time
	Held      int // calls on its results waiting for its Return
}

// ExportInspection is one capability exported to the peer.
type ExportInspection struct {
	ID       uint32
	Refs     uint32 // references the peer holds
	Promise  bool
	Resolved bool
	Held     int // the peer's calls on the promise waiting for it to resolve
}

// ImportInspection is one capability of the peer's that we hold.
type ImportInspection struct {
	ID        uint32
	Refs      uint32 // references the peer gave us
	LocalRefs int    // references held on our side
	Promise   bool
	Resolved  bool
	Broken    bool
}

// Budget is what the peer holds of each limit (Config and Limits), next
// to the limit.
type Budget struct {
	Running, MaxAnswers         int   // calls of the peer's running
	CallBytes, MaxCallBytes     int64 // their bytes
	HeldAnswers, MaxHeldAnswers int   // calls of the peer's held until their Finish
	AnswerBytes, MaxAnswerBytes int64 // Returns held until their Finish
	Imports, MaxImports         int
	Exports, MaxExports         int
}

// Inspect returns what the core knows of the connection now.
func (c *Core) Inspect() Inspection {
	in := Inspection{Phase: c.life.phase.String(), Start: c.life.start, Embargoes: c.embargoes.Len()}
	c.questions.Each(func(id uint32, q *question) {
		in.Questions = append(in.Questions, QuestionInspection{ID: id, Call: q.call, Method: q.method, Bootstrap: q.bootstrap,
			Probe: q.probe, State: q.state.String(), Since: q.since, Pipelined: len(q.pipelined)})
	})
	for id, a := range c.answers.All() {
		st := "running"
		switch {
		case a.finished:
			st = "finished"
		case a.returned:
			st = "returned"
		}
		in.Answers = append(in.Answers, AnswerInspection{ID: id, Method: a.method, Bootstrap: a.bootstrap, State: st,
			Since: a.since, Held: len(a.held)})
	}
	c.exports.Each(func(id uint32, e *export) {
		in.Exports = append(in.Exports, ExportInspection{ID: id, Refs: e.wireRefs, Promise: e.promise, Resolved: e.resolved, Held: len(e.held)})
	})
	for id, im := range c.imports {
		in.Imports = append(in.Imports, ImportInspection{ID: id, Refs: im.wireRefs, LocalRefs: im.localRefs, Promise: im.promise,
			Resolved: im.resolved != nil, Broken: im.broken != nil})
	}
	slices.SortFunc(in.Questions, func(a, b QuestionInspection) int { return cmp.Compare(a.ID, b.ID) })
	slices.SortFunc(in.Answers, func(a, b AnswerInspection) int { return cmp.Compare(a.ID, b.ID) })
	slices.SortFunc(in.Exports, func(a, b ExportInspection) int { return cmp.Compare(a.ID, b.ID) })
	slices.SortFunc(in.Imports, func(a, b ImportInspection) int { return cmp.Compare(a.ID, b.ID) })
	lim := c.cfg.Limits
	in.Budget = Budget{
		Running: c.running, MaxAnswers: c.cfg.MaxAnswers,
		CallBytes: c.callBytes, MaxCallBytes: lim.MaxCallBytes,
		HeldAnswers: c.answers.Len(), MaxHeldAnswers: lim.MaxHeldAnswers,
		AnswerBytes: c.answerBytes, MaxAnswerBytes: lim.MaxAnswerBytes,
		Imports: len(c.imports), MaxImports: lim.MaxImports,
		Exports: c.exports.Len(), MaxExports: c.cfg.MaxExports,
	}
	return in
}
