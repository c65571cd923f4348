package core

import (
	"cmp"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/vatactor/vatactor/internal/idtable"
	"github.com/vatactor/vatactor/supervisor"
)

// phase is where a connection is in its life.
type phase uint8

const (
	// phaseOpen: serving calls both ways. Next: phaseDraining (Shutdown),
	// phaseStopQuestions (a close without drain, the peer's end, a
	// protocol or transport error, Stopped).
	phaseOpen phase = iota
	// phaseDraining: new calls are refused both ways; calls in flight
	// finish, then the peer's Finishes of answers returned without a
	// capability and its Returns of questions we finished first come in
	// (for at most FinishWait). Next:
	// phaseStopQuestions (nothing left in flight or to finish, the finish
	// or drain deadline, Hurry, the peer's end, a close without drain).
	phaseDraining
	// phaseStopQuestions: the question actors are told to stop one at a
	// time, newest first, each waited for at most StopTimeout. Next:
	// phaseStopExports.
	phaseStopQuestions
	// phaseStopExports: the same for the export actors. Next:
	// phaseLingering, after releaseImports and sendEpitaph.
	phaseStopExports
	// phaseLingering: everything is queued; the runner flushes,
	// half-closes, lingers and closes the socket (CloseSocket). Next:
	// phaseClosed (SocketClosed).
	phaseLingering
	// phaseClosed: the socket is closed and Down emitted. Final.
	phaseClosed
)

var phaseNames = [...]string{"open", "draining", "stopQuestions", "stopExports", "lingering", "closed"}

func (p phase) String() string { return phaseNames[p] }

// closing reports whether the end has begun: the tables are being
// emptied and nothing new is admitted.
func (p phase) closing() bool { return p >= phaseStopQuestions }

// Phase names one step of a connection's end; the core's function and the
// span of each step have the same name.
type Phase string

// The steps of a connection's end, in order.
const (
	PhaseDrain          Phase = "drain"
	PhaseStopQuestions  Phase = "stopQuestions"
	PhaseStopExports    Phase = "stopExports"
	PhaseReleaseImports Phase = "releaseImports"
	PhaseSendEpitaph    Phase = "sendEpitaph"
	PhaseCloseWrite     Phase = "closeWrite"
	PhaseLinger         Phase = "linger"
	PhaseCloseSocket    Phase = "closeSocket"
)

// PhaseReport is what one step of a connection's end did.
type PhaseReport struct {
	Phase    Phase
	Start    time.Time
	Took     time.Duration
	CutShort bool   // its deadline (or Hurry) ended it
	Skipped  bool   // not needed: the peer had gone, or nothing to do
	Note     string // what it did, in a few words
}

func (p PhaseReport) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-14s %8v", p.Phase, p.Took.Round(time.Microsecond))
	if p.CutShort {
		b.WriteString(" CUT SHORT")
	}
	if p.Skipped {
		b.WriteString(" skipped")
	}
	if p.Note != "" {
		b.WriteString(" " + p.Note)
	}
	return b.String()
}

// Report is what a connection's end did.
type Report struct {
	Reason      supervisor.Reason // the first reason recorded
	Peer        supervisor.Reason // what the peer did to end its side meanwhile, or nil
	Stats       Stats             // the table counts when the end began
	Phases      []PhaseReport
	Refused     int // the peer's calls refused while draining
	Canceled    int // our questions still waiting when the end began
	Abandoned   int // the peer's calls still running when the end began
	StuckActors int // actors that did not stop within StopTimeout
	EpitaphSent bool
}

// An Event is a lifecycle event of the connection.
type Event interface{ event() }

// Events.
type (
	// Ending: the connection's reason is set (the first one wins); its end
	// has begun or is about to.
	Ending struct{ Reason supervisor.Reason }
	// Busy: a table has become non-empty.
	Busy struct{ Stats Stats }
	// Idle: all tables have become empty.
	Idle struct{}
	// PhaseStarted: a step of the end has begun (its span starts now).
	PhaseStarted struct {
		Phase Phase
		At    time.Time
	}
	// PhaseDone: a step of the end has finished.
	PhaseDone struct{ Report PhaseReport }
	// ActorStopped: a child actor has stopped during the end, or was
	// given up on after StopTimeout (TimedOut).
	ActorStopped struct {
		Child    Child
		TimedOut bool
	}
	// EpitaphSent: our epitaph is queued as the last message.
	EpitaphSent struct{ Epitaph supervisor.Epitaph }
	// EpitaphReceived: the peer's last message was an epitaph.
	EpitaphReceived struct{ Epitaph supervisor.Epitaph }
	// Down: the connection has ended; Report is complete.
	Down struct{ Report Report }
	// Refused: one of the peer's calls was answered without running.
	Refused struct{ Why RefusedWhy }
)

// RefusedWhy says why a call was refused without running.
type RefusedWhy string

// Why calls are refused.
const (
	RefusedDraining   RefusedWhy = "draining"   // the connection is shutting down
	RefusedOverloaded RefusedWhy = "overloaded" // more than MaxAnswers calls in flight
	RefusedBudget     RefusedWhy = "budget"     // more than MaxCallBytes of calls in flight
)

func (*Ending) event()          {}
func (*Busy) event()            {}
func (*Idle) event()            {}
func (*PhaseStarted) event()    {}
func (*PhaseDone) event()       {}
func (*ActorStopped) event()    {}
func (*EpitaphSent) event()     {}
func (*EpitaphReceived) event() {}
func (*Down) event()            {}
func (*Refused) event()         {}

// lifecycle is the connection's end in progress.
type lifecycle struct {
	phase            phase
	peerOurs         bool // the peer reads epitaphs (it sent our sidecar)
	peerGone         bool // the peer ended or the socket failed: write nothing but FIN
	hard             bool // skip the flush and the linger
	hurried          bool // no more waits
	finishWait       bool // the drain waits for the peer's Finishes (FinishDeadline armed)
	idle             bool
	probing          bool // a probe waits for a sign of life
	start            time.Time
	peerNotProcessed *supervisor.Epitaph // the peer's epitaph: what it left unanswered it never processed
	epitaph          supervisor.Epitaph  // ours
	abortWith        error               // a protocol error, sent instead of the epitaph
	reason           supervisor.Reason
	report           *Report // made on first use (rep): a connection far from its end holds none
	drainStart       time.Time
	gens             [MaxDeadline + 1]uint64 // per Deadline: the generation armed last
	heard            time.Time               // when the last message arrived (KeepAlive)
	probes           int                     // probe questions in the table (not counted in Stats)
	wait             *stopWait
}

// stopWait is stopQuestions' or stopExports' way through its actors, one
// at a time, newest first: each is told to stop, and its ChildStopped (or
// StopTimeout, or Hurry) moves on to the next.
type stopWait struct {
	phase   Phase
	start   time.Time
	note    string
	queue   []Child
	current *Child
	stopped int
}

// rep is the report of the connection's end, made on first use.
func (c *Core) rep() *Report {
	if c.life.report == nil {
		c.life.report = new(Report)
	}
	return c.life.report
}

// SetPeerOurs records that the peer reads epitaphs (it sent a sidecar
// saying so).
func (c *Core) SetPeerOurs() { c.life.peerOurs = true }

// Reason returns why the connection ended (or is ending), or nil.
func (c *Core) Reason() supervisor.Reason { return c.life.reason }

// Closed reports whether the connection has ended (Down emitted).
func (c *Core) Closed() bool { return c.life.phase == phaseClosed }

// receive handles one message from the peer. A violation ends the
// connection with a ProtocolError and an Abort that names it.
func (c *Core) receive(m Message) {
	var err error
	switch m := m.(type) {
	case *Bootstrap:
		err = c.receiveBootstrap(*m)
	case *Call:
		err = c.receiveCall(*m)
	case *Return:
		err = c.receiveReturn(*m)
	case *Finish:
		err = c.receiveFinish(*m)
	case *Resolve:
		err = c.receiveResolve(*m)
	case *Release:
		err = c.receiveRelease(*m)
	case *Disembargo:
		err = c.receiveDisembargo(*m)
	case *Abort:
		c.receiveAbort(*m)
	case *Unimplemented:
		err = c.receiveUnimplemented(*m)
	case *Unknown:
		if lim := c.cfg.Limits.MaxUnimplementedEcho; m.Size > lim {
			err = budgetErrorf("MaxUnimplementedEcho", int64(lim), "a message we do not implement (kind %d) of %d bytes", m.Kind, m.Size)
		} else {
			c.send(put(&c.o.unimpl, Unimplemented{Message: m}))
		}
	default:
		err = protocolErrorf(ErrMalformed, "message of unknown type %T", m)
	}
	if err != nil {
		c.protocolError(err)
	}
}

// receiveAbort: the peer's last message. With an epitaph it is a
// PeerEpitaph, otherwise a PeerAbort. It is never answered with an Abort.
func (c *Core) receiveAbort(m Abort) {
	if ep := m.Exception.Epitaph; ep != nil {
		e := *ep
		e.Message = clip(e.Message, c.cfg.Limits.MaxReasonLength)
		c.emit(put(&c.o.emit, Emit{Event: &EpitaphReceived{Epitaph: e}}))
		c.peerEnded(supervisor.PeerEpitaph{Epitaph: e})
		return
	}
	c.peerEnded(supervisor.PeerAbort{Type: m.Exception.Type.String(), Reason: clip(m.Exception.Reason, c.cfg.Limits.MaxReasonLength),
		Idle: c.callsIdle()})
}

// receiveUnimplemented: the peer did not implement a message we sent.
// A Bootstrap or Call fails with an unimplemented exception and is over
// (the peer never knew the question: no Return comes, no Finish goes); a
// Resolve's capability is dropped; anything else is logged.
func (c *Core) receiveUnimplemented(m Unimplemented) error {
	var qid uint32
	switch inner := m.Message.(type) {
	case *Call:
		qid = inner.QuestionID
	case *Bootstrap:
		qid = inner.QuestionID
	case *Resolve:
		if d := inner.Cap; d != nil && (d.Kind == SenderHosted || d.Kind == SenderPromise) {
			_ = c.releaseExport(d.ID, 1)
		}
		return nil
	default:
		c.logf(slog.LevelInfo, "capnp: the peer does not implement a message we sent", "msg", describe(m.Message))
		return nil
	}
	q := c.questions.Get(qid)
	if q == nil || q.returned() {
		return nil
	}
	err := newError(ExcUnimplemented, "the peer does not implement %s", describe(m.Message))
	_ = c.releaseParamCaps(q, true) // it never held them
	q.state = questionDone
	if q.forward != nil {
		c.answerReturn(q.forward, nil, err)
	}
	c.settle(q, nil, err)
	c.retireQuestion(q)
	return nil
}

func describe(m Message) string {
	if m == nil {
		return "(nothing)"
	}
	return m.String()
}

// record sets the connection's reason: the first one wins; what the peer
// does after ours is kept in the report.
func (c *Core) record(reason supervisor.Reason) {
	if c.life.reason != nil {
		if c.rep().Peer == nil && isPeerReason(reason) {
			c.rep().Peer = reason
		}
		return
	}
	c.life.reason = reason
	c.rep().Reason = reason
	c.rep().Stats = c.Stats()
	c.emit(put(&c.o.emit, Emit{Event: put(&c.o.ending, Ending{Reason: reason})}))
	if reason.Expected() {
		c.logf(slog.LevelDebug, "capnp: connection ending", "reason", reason)
	} else {
		c.logf(slog.LevelInfo, "capnp: connection failing", "reason", reason)
	}
}

func isPeerReason(r supervisor.Reason) bool {
	switch r.(type) {
	case supervisor.PeerEOF, supervisor.PeerEpitaph, supervisor.PeerAbort:
		return true
	}
	return false
}

// shutdown starts our end: with a drain or without. Both are idempotent;
// a close without drain during a drain ends the drain.
func (c *Core) shutdown(ep supervisor.Epitaph, drain bool) {
	switch c.life.phase {
	case phaseOpen:
		c.life.epitaph = ep
		c.record(supervisor.LocalShutdown{Epitaph: ep})
		if drain {
			c.drain()
			return
		}
		c.skipped(PhaseDrain, "closed without drain")
		c.close(false)
	case phaseDraining:
		if !drain {
			c.endDrain(true, "closed during drain")
		}
	}
}

// stopped: the actor is being stopped from outside.
func (c *Core) stopped() {
	ep := supervisor.Epitaph{Code: supervisor.Canceled, Message: "connection actor stopped"}
	c.record(supervisor.LocalShutdown{Epitaph: ep})
	if c.life.phase == phaseDraining {
		c.endDrain(true, "connection actor stopped")
		return
	}
	c.life.epitaph = ep
	c.skipped(PhaseDrain, "connection actor stopped")
	c.close(false)
}

// drain refuses new calls both ways and lets those in flight finish, for
// at most DrainTimeout; it ends when nothing is left in flight.
func (c *Core) drain() {
	c.life.phase = phaseDraining
	c.life.drainStart = c.now
	c.phaseStarted(PhaseDrain)
	c.arm(DrainDeadline, c.cfg.DrainTimeout)
}

// callsIdle reports whether the peer's end loses us nothing: no call in
// flight either way and none of its capabilities held (what makes its EOF
// or hang-up expected). The peer's references to our exports end with it:
// that is how a peer that hangs up lets go of them.
func (c *Core) callsIdle() bool {
	q, a := c.inFlight()
	return q+a == 0 && len(c.imports) == 0
}

// inFlight counts our questions waiting for their Return and the peer's
// calls not answered yet.
func (c *Core) inFlight() (questions, answers int) {
	c.questions.Each(func(_ uint32, q *question) {
		if q.state == questionWaiting {
			questions++
		}
	})
	for _, a := range c.answers.All() {
		if !a.returned {
			answers++
		}
	}
	return questions, answers
}

// unfinished counts what the peer still owes us a frame for, once
// nothing is in flight: the peer's answers that have returned without a
// capability and wait for its Finish (those a peer finishes as soon as it
// has the Return: go-capnp, C++'s dropped responses, our early Finish),
// and our questions whose Finish went before their Return (a cancel, a
// caller done with a pipeline): the peer sends that Return all the same.
// Ending the drain before either comes would have the peer write to a
// socket we may be closing (a proxy that turns our FIN into a close
// resets it). An answer whose results hold capabilities is the peer's to
// keep for as long as it uses them (a bootstrap capability, typically):
// the drain does not wait for it.
func (c *Core) unfinished() (finishes, returns int) {
	for _, a := range c.answers.All() {
		if a.returned && !a.finished && (a.results == nil || len(a.results.CapTable) == 0) {
			finishes++
		}
	}
	c.questions.Each(func(_ uint32, q *question) {
		if q.state == questionFinishing {
			returns++
		}
	})
	return finishes, returns
}

// drained: nothing is left in flight. The drain ends once the peer has
// finished the answers that returned and returned the questions we
// finished, or FinishWait (within the drain's deadline) after the last
// call, whichever is first.
func (c *Core) drained() {
	if f, r := c.unfinished(); f+r == 0 {
		c.endDrain(false, "")
		return
	}
	if c.life.finishWait {
		return
	}
	c.life.finishWait = true
	c.arm(FinishDeadline, min(c.cfg.FinishWait, c.life.drainStart.Add(c.cfg.DrainTimeout).Sub(c.now)))
}

// endDrain ends the drain, cut short or not, and goes on closing.
func (c *Core) endDrain(cut bool, why string) {
	q, a := c.inFlight()
	note := fmt.Sprintf("refused %d; left in flight: %d questions, %d answers", c.rep().Refused, q, a)
	f, r := c.unfinished()
	if f > 0 {
		note += fmt.Sprintf("; %d returned without their Finish", f)
	}
	if r > 0 {
		note += fmt.Sprintf("; %d finished without their Return", r)
	}
	if why != "" {
		note += " (" + why + ")"
	}
	c.phaseDone(PhaseReport{Phase: PhaseDrain, Start: c.life.drainStart, Took: c.now.Sub(c.life.drainStart),
		CutShort: cut && q+a > 0, Note: note})
	c.close(false)
}

// readEnded: the reader stopped.
func (c *Core) readEnded(m ReadEnded) {
	switch {
	case m.EOF:
		c.peerEnded(supervisor.PeerEOF{Idle: c.callsIdle()})
	case m.Malformed:
		c.protocolError(m.Err)
	default:
		c.transportFailed(m.Err)
	}
}

// peerEnded: the peer sent EOF, an epitaph or an Abort. From now on
// nothing is written to it but our FIN.
func (c *Core) peerEnded(reason supervisor.Reason) {
	c.life.peerGone = true
	if e, ok := reason.(supervisor.PeerEpitaph); ok && c.life.peerOurs {
		c.life.peerNotProcessed = &e.Epitaph
	}
	c.record(reason)
	switch c.life.phase {
	case phaseOpen:
		c.skipped(PhaseDrain, "the peer ended the connection")
		c.close(false)
	case phaseDraining:
		c.endDrain(true, "the peer ended the connection")
	}
}

// protocolError: the peer broke the protocol. It gets an Abort that names
// the problem, instead of our epitaph.
func (c *Core) protocolError(err error) {
	if c.life.phase.closing() {
		return
	}
	if c.life.abortWith == nil && !c.life.peerGone {
		c.life.abortWith = err
	}
	c.record(supervisor.ProtocolError{Err: err})
	if c.life.phase == phaseDraining {
		c.endDrain(true, "protocol error")
		return
	}
	c.skipped(PhaseDrain, "protocol error")
	c.close(false)
}

// transportFailed: the socket failed; nothing more can be written.
func (c *Core) transportFailed(err error) {
	if c.life.phase.closing() {
		return
	}
	c.life.peerGone = true
	c.life.hard = true
	c.record(supervisor.TransportError{Err: err})
	if c.life.phase == phaseDraining {
		c.endDrain(true, "the socket failed: "+err.Error())
		return
	}
	c.close(true)
}

// close begins the end from stopQuestions: nothing new is admitted, the
// peer's calls still running are abandoned, and the question actors are
// told to stop.
func (c *Core) close(hard bool) {
	c.life.phase = phaseStopQuestions
	c.life.hard = c.life.hard || hard
	c.emit(put(&c.o.closing, Closing{Err: c.errDisconnected()}))
	c.abandonAnswers()
	c.failHeldOnPromises()
	c.stopQuestions()
}

// errDisconnected is what local calls get once the connection is ending.
func (c *Core) errDisconnected() error {
	return notProcessed("%w: %w", ErrClosed, c.reasonErr())
}

// reasonErr is the connection's reason as an error for %w (ErrClosed
// before there is one).
func (c *Core) reasonErr() error {
	if c.life.reason == nil {
		return ErrClosed
	}
	return c.life.reason
}

// abandonAnswers ends the peer's calls still running. Each is answered
// with a disconnected exception that says it may have been partly
// processed (unless the peer has gone or broke the protocol), so that
// every call the peer sent before our epitaph gets a Return. Held
// answers are dropped.
func (c *Core) abandonAnswers() {
	ids := make([]uint32, 0, c.answers.Len())
	for id := range c.answers.All() {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		a := c.answers.At(id)
		if a == nil {
			continue // dropped meanwhile: a held call on it failed
		}
		if !a.returned {
			a.returned = true
			c.running--
			c.callBytes -= a.callBytes
			c.rep().Abandoned++
			if a.delivered {
				c.emit(put(&c.o.cancel, CancelAnswer{Answer: a.id}))
			}
			if !c.life.peerGone && c.life.abortWith == nil {
				c.send(put(&c.o.ret, Return{AnswerID: a.id, Exception: exceptionOf(errAbandoned)}))
			}
			held := a.held
			a.held = nil
			for _, h := range held {
				c.fail(h.caller, errAbandoned)
			}
		}
		a.releaseResults = false
		c.dropAnswer(a)
	}
}

// failHeldOnPromises fails the calls waiting for our promises to
// resolve: the connection that would carry them on is ending.
func (c *Core) failHeldOnPromises() {
	c.exports.Each(func(_ uint32, e *export) {
		held := e.held
		e.held = nil
		for _, cl := range held {
			c.fail(cl, c.errDisconnected())
		}
	})
}

// stopQuestions ends our questions: those still waiting settle with a
// disconnected error saying whether the peer processed them, Finish goes
// out for each (unless the peer has gone), and the question actors stop,
// newest first.
func (c *Core) stopQuestions() {
	w := c.beginStopWait(PhaseStopQuestions)
	var qs []*question
	c.questions.Each(func(_ uint32, q *question) { qs = append(qs, q) })
	slices.SortFunc(qs, func(a, b *question) int { return cmp.Compare(b.seq, a.seq) })
	canceled := 0
	lost := c.questionLost()
	for _, q := range qs {
		returned := q.returned()
		if !returned && !q.probe {
			canceled++
			c.settle(q, nil, lost)
		}
		for _, e := range q.embargoes {
			c.failEmbargo(e)
		}
		if !q.finishSent() && !c.life.peerGone {
			c.sendFinish(q, !returned)
		}
		if q.results != nil {
			c.releaseCaps(q.results.CapTable)
			q.results = nil
		}
		if q.call != 0 {
			w.queue = append(w.queue, Child{Kind: QuestionChild, ID: q.id, Call: q.call})
		}
	}
	c.questions = idtable.Table[*question]{}
	c.life.probes = 0
	clear(c.byCall)
	c.rep().Canceled += canceled
	w.note = fmt.Sprintf("%d stopped, %d without an answer", len(w.queue), canceled)
	c.stopNext()
}

// questionLost is the error of a question whose answer will never come.
func (c *Core) questionLost() error {
	if ep := c.life.peerNotProcessed; ep != nil {
		return notProcessed("the peer closed the connection (%w) before answering", c.reasonErr())
	}
	return outcomeUnknown("the connection ended (%w) before the answer arrived", c.reasonErr())
}

// stopExports stops the export actors, newest first; each releases its
// capability as it stops.
func (c *Core) stopExports() {
	w := c.beginStopWait(PhaseStopExports)
	var es []*export
	c.exports.Each(func(_ uint32, e *export) { es = append(es, e) })
	slices.SortFunc(es, func(a, b *export) int { return cmp.Compare(b.seq, a.seq) })
	for _, e := range es {
		// A resolution's import reference goes with releaseImports.
		w.queue = append(w.queue, Child{Kind: ExportChild, ID: e.id, Ref: e.ref})
	}
	c.exports = idtable.Table[*export]{}
	c.exportKey.Clear()
	c.answerExports = 0
	w.note = fmt.Sprintf("%d stopped", len(es))
	c.stopNext()
}

func (c *Core) beginStopWait(p Phase) *stopWait {
	c.phaseStarted(p)
	w := &stopWait{phase: p, start: c.now}
	c.life.wait = w
	return w
}

// stopNext tells the next actor of the step to stop and arms its
// deadline, or ends the step when none is left. Hurried, it tells them
// all at once and waits for none.
func (c *Core) stopNext() {
	w := c.life.wait
	for len(w.queue) > 0 {
		ch := w.queue[0]
		w.queue = w.queue[1:]
		w.stopped++
		c.emit(put(&c.o.stop, StopChild{Child: ch}))
		if c.life.hurried {
			c.stuck(ch)
			continue
		}
		w.current = &ch
		c.arm(StopDeadline, c.cfg.StopTimeout)
		return
	}
	c.stopWaitDone()
}

func (c *Core) stuck(ch Child) {
	c.rep().StuckActors++
	c.logf(slog.LevelWarn, "capnp: actor did not stop in time", "kind", ch.Kind, "id", ch.ID)
	c.emit(put(&c.o.emit, Emit{Event: put(&c.o.actorStopped, ActorStopped{Child: ch, TimedOut: true})}))
}

// stopWaitDone ends the current stop step and starts the next one.
func (c *Core) stopWaitDone() {
	w := c.life.wait
	c.life.wait = nil
	c.phaseDone(PhaseReport{Phase: w.phase, Start: w.start, Took: c.now.Sub(w.start),
		CutShort: c.life.hurried && w.stopped > 0, Skipped: w.stopped == 0, Note: w.note})
	switch w.phase {
	case PhaseStopQuestions:
		c.life.phase = phaseStopExports
		c.stopExports()
	case PhaseStopExports:
		c.finishClose()
	}
}

// finishClose runs releaseImports and sendEpitaph, then hands the socket
// to the runner (CloseSocket).
func (c *Core) finishClose() {
	c.releaseImports()
	c.sendEpitaph()
	c.life.phase = phaseLingering
	c.phaseStarted(PhaseCloseWrite)
	c.emit(put(&c.o.closeSocket, CloseSocket{Hard: c.life.hard}))
}

// releaseImports sends Release for every capability still imported
// (unless the peer has gone) and fails the calls embargoes hold.
func (c *Core) releaseImports() {
	c.phaseStarted(PhaseReleaseImports)
	start := c.now
	ids := make([]uint32, 0, len(c.imports))
	for id := range c.imports {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		if !c.life.peerGone {
			c.send(put(&c.o.release, Release{ID: id, Count: c.imports[id].wireRefs}))
		}
		delete(c.imports, id)
	}
	var es []*embargo
	c.embargoes.Each(func(_ uint32, e *embargo) { es = append(es, e) })
	for _, e := range es {
		c.failEmbargo(e)
	}
	clear(c.retired)
	note := fmt.Sprintf("%d released", len(ids))
	if c.life.peerGone && len(ids) > 0 {
		note = fmt.Sprintf("%d dropped (the peer has gone)", len(ids))
	}
	c.phaseDone(PhaseReport{Phase: PhaseReleaseImports, Start: start, Took: c.now.Sub(start), Skipped: len(ids) == 0, Note: note})
}

// failEmbargo fails the calls e holds: the connection is ending.
func (c *Core) failEmbargo(e *embargo) {
	if c.embargoes.Get(e.id) != e {
		return
	}
	c.embargoes.Remove(e.id)
	held := e.held
	e.held = nil
	for _, cl := range held {
		c.fail(cl, c.errDisconnected())
	}
}

// sendEpitaph queues the connection's last message: the Abort that names
// a protocol error, or our epitaph when the peer reads one or when its
// code is not OK. To a peer that has gone, nothing.
func (c *Core) sendEpitaph() {
	c.phaseStarted(PhaseSendEpitaph)
	pr := PhaseReport{Phase: PhaseSendEpitaph, Start: c.now}
	switch ep := c.life.epitaph; {
	case c.life.peerGone:
		pr.Skipped, pr.Note = true, "the peer has gone: FIN only"
	case c.life.abortWith != nil:
		c.send(put(&c.o.abort, Abort{Exception: Exception{Type: ExcFailed, Reason: c.life.abortWith.Error()}}))
		pr.Note = "abort: " + c.life.abortWith.Error()
	case ep.Code != supervisor.OK || c.life.peerOurs:
		typ := ExcFailed
		if ep.Code == supervisor.OK {
			typ = ExcDisconnected
		}
		c.send(put(&c.o.abort, Abort{Exception: Exception{Type: typ, Reason: "connection closed with epitaph " + ep.String(), Epitaph: &ep}}))
		c.rep().EpitaphSent = true
		c.emit(put(&c.o.emit, Emit{Event: &EpitaphSent{Epitaph: ep}}))
		pr.Note = "epitaph " + ep.String()
	default:
		pr.Skipped, pr.Note = true, "the peer reads no epitaphs: FIN only"
	}
	c.phaseDone(pr)
}

// stepClosing handles what arrives once the end has begun.
func (c *Core) stepClosing(in Input) {
	switch m := in.(type) {
	case *ChildStopped:
		if w := c.life.wait; w != nil && w.current != nil && *w.current == m.Child {
			w.current = nil
			c.emit(put(&c.o.emit, Emit{Event: put(&c.o.actorStopped, ActorStopped{Child: m.Child})}))
			c.stopNext()
		}
	case *DeadlineFired:
		if m.Deadline == StopDeadline && m.Gen == c.life.gens[StopDeadline] {
			if w := c.life.wait; w != nil && w.current != nil {
				ch := *w.current
				w.current = nil
				c.stuck(ch)
				c.stopNext()
			}
		}
	case *Hurry:
		c.life.hurried = true
		if w := c.life.wait; w != nil && w.current != nil {
			ch := *w.current
			w.current = nil
			c.stuck(ch)
			c.stopNext()
		}
	case *SocketClosed:
		if c.life.phase == phaseLingering {
			c.socketClosed(m.Steps)
		}
	case *Received:
		if a, ok := m.Msg.(*Abort); ok && c.rep().Peer == nil {
			c.receiveAbort(*a) // kept in Report.Peer; never answered
		}
	case *ReadEnded:
		// The peer has gone meanwhile: what is left of the end writes
		// nothing more to it (no epitaph after its EOF).
		c.life.peerGone = true
		if m.EOF {
			c.record(supervisor.PeerEOF{Idle: c.callsIdle()})
		} else {
			c.life.hard = true
		}
	case *WriteFailed:
		c.life.peerGone, c.life.hard = true, true
	case *LocalCall:
		c.fail(caller{local: m.Call, params: m.Params}, c.errDisconnected())
	case *LocalBootstrap:
		c.emit(put(&c.o.settle, Settle{Call: m.Call, Err: c.errDisconnected()}))
	case *LocalRelease:
		c.releaseCap(m.Cap)
	}
}

// socketClosed: the runner has closed the socket. The connection reports
// its end.
func (c *Core) socketClosed(steps []PhaseReport) {
	for _, p := range steps {
		c.phaseDone(p)
	}
	c.life.phase = phaseClosed
	c.emit(put(&c.o.emit, Emit{Event: &Down{Report: *c.rep()}}))
}

// skipped records a step that did not run.
func (c *Core) skipped(p Phase, note string) {
	c.phaseDone(PhaseReport{Phase: p, Start: c.now, Skipped: true, Note: note})
}

func (c *Core) phaseStarted(p Phase) {
	c.emit(put(&c.o.emit, Emit{Event: put(&c.o.phaseStarted, PhaseStarted{Phase: p, At: c.now})}))
}

func (c *Core) phaseDone(p PhaseReport) {
	c.rep().Phases = append(c.rep().Phases, p)
	c.emit(put(&c.o.emit, Emit{Event: put(&c.o.phaseDone, PhaseDone{Report: p})}))
}

// arm asks for DeadlineFired of d after dur, replacing the one armed.
func (c *Core) arm(d Deadline, dur time.Duration) {
	c.life.gens[d]++
	c.emit(put(&c.o.arm, Arm{Deadline: d, At: c.now.Add(dur), Gen: c.life.gens[d]}))
}

// deadline: a deadline fired while open or draining.
func (c *Core) deadline(m DeadlineFired) {
	if m.Gen != c.life.gens[m.Deadline] {
		return // replaced or disarmed
	}
	switch m.Deadline {
	case DrainDeadline:
		if c.life.phase == phaseDraining {
			c.endDrain(true, "")
		}
	case FinishDeadline:
		if c.life.phase == phaseDraining {
			c.endDrain(false, "finish wait over")
		}
	case IdleDeadline:
		if c.life.phase == phaseOpen && c.life.idle {
			c.shutdown(supervisor.Epitaph{Code: supervisor.OK, Message: "idle timeout"}, true)
		}
	case KeepAliveDeadline:
		c.keepAlive()
	case ProbeDeadline:
		if c.life.probing {
			c.transportFailed(fmt.Errorf("%w: nothing from the peer for %v after a probe (%v of silence before it)",
				ErrPeerUnresponsive, c.cfg.KeepAlive.timeout(), c.cfg.KeepAlive.Interval))
		}
	}
}

// keepAlive probes a peer silent for KeepAlive.Interval, and looks again
// an Interval after the last message heard.
func (c *Core) keepAlive() {
	ka := c.cfg.KeepAlive
	silent := c.now.Sub(c.life.heard)
	if silent < ka.Interval {
		c.arm(KeepAliveDeadline, ka.Interval-silent)
		return
	}
	if !c.life.probing {
		// The probe: a Bootstrap finished at once (its capability
		// released unseen); whatever the peer sends next is the sign
		// of life.
		q := c.newQuestion(caller{method: bootstrapMethod})
		q.bootstrap, q.probe = true, true
		c.life.probes++
		c.send(put(&c.o.bootstrap, Bootstrap{QuestionID: q.id}))
		c.sendFinish(q, true)
		c.life.probing = true
		c.arm(ProbeDeadline, ka.timeout())
	}
	c.arm(KeepAliveDeadline, ka.Interval)
}

// timeout is KeepAlive.Timeout, or Interval when it is not set.
func (k KeepAlive) timeout() time.Duration {
	if k.Timeout > 0 {
		return k.Timeout
	}
	return k.Interval
}

// noteIdle emits Idle or Busy on a change of the tables' emptiness and
// arms or disarms the idle deadline.
func (c *Core) noteIdle() {
	st := c.Stats()
	idle := st.Idle()
	if idle == c.life.idle {
		return
	}
	c.life.idle = idle
	if idle {
		c.emit(put(&c.o.emit, Emit{Event: &Idle{}}))
		c.armIdle()
		return
	}
	c.life.gens[IdleDeadline]++ // disarmed: a late one is ignored
	c.emit(put(&c.o.emit, Emit{Event: put(&c.o.busy, Busy{Stats: st})}))
}

func (c *Core) armIdle() {
	if c.cfg.IdleTimeout > 0 {
		c.arm(IdleDeadline, c.cfg.IdleTimeout)
	}
}

// errAbandoned answers a call still running when the end begins.
var errAbandoned = newError(ExcDisconnected, "call abandoned: the connection shut down before it finished (it may have been partly processed)")

// errLocalDraining is what a local call made on a draining connection
// gets.
func errLocalDraining() error { return notProcessed("the connection is shutting down") }
