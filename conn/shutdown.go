package conn

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
	"github.com/asynkron/protoactor-go/actor"

	"github.com/vatactor/vatactor/internal/idtable"
	"github.com/vatactor/vatactor/supervisor"
	"github.com/vatactor/vatactor/tracing"
)

// phase is where a connection is in its life.
type phase uint8

const (
	// phaseOpen: serving calls both ways. Next: phaseDraining (Shutdown),
	// phaseStopQuestions (Close, the peer's end, a protocol or transport
	// error, a stop from protoactor).
	phaseOpen phase = iota
	// phaseDraining: new calls are refused both ways; calls in flight
	// finish. Next: phaseStopQuestions (nothing left in flight, the drain
	// deadline, the peer's end, Close).
	phaseDraining
	// phaseStopQuestions: the question actors have been told to stop; the
	// connection waits for their Terminated, at most StopTimeout. Next:
	// phaseStopExports.
	phaseStopQuestions
	// phaseStopExports: the same for the export actors. Next:
	// phaseLingering, after releaseImports and sendEpitaph.
	phaseStopExports
	// phaseLingering: the queue is closed; the closer goroutine flushes,
	// half-closes and lingers for the peer's EOF. Next: phaseClosed.
	phaseLingering
	// phaseClosed: the socket is closed, Down sent, the actor stopping.
	phaseClosed
)

var phaseNames = [...]string{"open", "draining", "stopQuestions", "stopExports", "lingering", "closed"}

func (p phase) String() string { return phaseNames[p] }

// closing reports whether the connection's end has begun: its tables are
// being emptied and nothing new is admitted.
func (p phase) closing() bool { return p >= phaseStopQuestions }

// stopWait is stopQuestions' or stopExports' way through its actors,
// one at a time in the order given (newest first, as OTP stops children):
// each is told to stop, and its Terminated (or StopTimeout, or the end of
// the Shutdown's context) moves on to the next. No turn of the actor
// waits.
type stopWait struct {
	phase   Phase
	start   time.Time
	note    string
	queue   []stoppedChild  // still to stop, in order
	live    map[string]bool // children not yet terminated, by PID id
	current *stoppedChild   // the one being stopped
	gen     uint64          // which stopDeadline is the current one's
	timer   *time.Timer
	stopped int // actors told to stop
}

type stoppedChild struct {
	pid  *actor.PID
	kind ActorKind
	id   uint32
}

// stopDeadline: StopTimeout expired for the wait of generation gen.
type stopDeadline struct{ gen uint64 }

// record sets the connection's reason: the first one recorded wins; what
// the peer does after ours is kept in the report.
func (s *state) record(reason supervisor.Reason) {
	c := s.c
	c.mu.Lock()
	first := c.reason == nil
	if first {
		c.reason = reason
	}
	c.mu.Unlock()
	if !first {
		if s.report.Peer == nil && isPeerReason(reason) {
			s.report.Peer = reason
		}
		return
	}
	s.report.Reason = reason
	s.report.Stats = s.stats()
	if reason.Expected() {
		c.opts.Logger.Debug("capnp: connection ending", "peer", c.opts.Peer, "reason", reason)
	} else {
		c.opts.Logger.Info("capnp: connection failing", "peer", c.opts.Peer, "reason", reason)
	}
}

func isPeerReason(r supervisor.Reason) bool {
	switch r.(type) {
	case supervisor.PeerEOF, supervisor.PeerEpitaph, supervisor.PeerAbort:
		return true
	}
	return false
}

// shutdown starts our end of the connection: with a drain (Shutdown) or
// without (Close). Both are idempotent; a Close during a drain ends the
// drain.
func (s *state) shutdown(ep supervisor.Epitaph, drain bool) {
	switch s.phase {
	case phaseOpen:
		s.epitaph = ep
		s.record(supervisor.LocalShutdown{Epitaph: ep})
		if drain {
			s.drain()
			return
		}
		s.skipped(PhaseDrain, "closed without drain")
		s.close(false)
	case phaseDraining:
		if !drain {
			s.endDrain(true, "closed during drain")
		}
	}
}

// drain: refuse new calls both ways, let those in flight finish, for at
// most DrainTimeout. endDrain runs when nothing is left in flight.
func (s *state) drain() {
	s.phase = phaseDraining
	s.drainStart = time.Now()
	s.tracePhaseStart(PhaseDrain, s.drainStart)
	s.drainTimer = time.AfterFunc(s.c.opts.DrainTimeout, func() { _ = s.c.post(drainDeadline{}) })
}

// inFlight counts our questions waiting for their Return and the peer's
// calls we have not answered yet.
func (s *state) inFlight() (questions, answers int) {
	s.questions.Each(func(_ uint32, q *question) {
		if q.state == questionWaiting {
			questions++
		}
	})
	for _, a := range s.answers {
		if !a.returned {
			answers++
		}
	}
	return questions, answers
}

// endDrain ends the drain phase, cut short or not, and goes on closing.
func (s *state) endDrain(cut bool, why string) {
	if s.drainTimer != nil {
		s.drainTimer.Stop()
	}
	q, a := s.inFlight()
	note := fmt.Sprintf("refused %d; left in flight: %d questions, %d answers", s.report.Refused, q, a)
	if why != "" {
		note += " (" + why + ")"
	}
	s.phaseDone(PhaseReport{Phase: PhaseDrain, Start: s.drainStart, Took: time.Since(s.drainStart), CutShort: cut && q+a > 0, Note: note})
	s.close(false)
}

// peerEnded: the peer sent EOF, an epitaph or an Abort. From now on
// nothing is written to it but our FIN: no Abort after its EOF, no Abort
// in answer to its Abort.
func (s *state) peerEnded(reason supervisor.Reason) {
	s.peerGone = true
	if e, ok := reason.(supervisor.PeerEpitaph); ok && s.peerOurs {
		// One of ours drained before its epitaph: whatever it has not
		// answered, it never processed.
		s.peerNotProcessed = &e.Epitaph
	}
	s.record(reason)
	switch s.phase {
	case phaseOpen:
		s.skipped(PhaseDrain, "the peer ended the connection")
		s.close(false)
	case phaseDraining:
		s.endDrain(true, "the peer ended the connection")
	}
}

// protocolError ends the connection with an Abort that names the problem.
func (s *state) protocolError(err error) {
	if s.phase.closing() {
		return
	}
	s.c.opts.Logger.Warn("capnp: protocol error, aborting connection", "peer", s.c.opts.Peer, "err", err)
	s.abortWith = err
	s.record(supervisor.ProtocolError{Err: err})
	if s.phase == phaseDraining {
		s.endDrain(true, "protocol error")
		return
	}
	s.skipped(PhaseDrain, "protocol error")
	s.close(false)
}

// transportFailed: the socket failed; nothing more can be written.
func (s *state) transportFailed(err error) {
	if s.phase.closing() {
		return
	}
	s.peerGone = true
	s.hard = true
	s.record(supervisor.TransportError{Err: err})
	if s.phase == phaseDraining {
		s.endDrain(true, "the socket failed: "+err.Error())
		return
	}
	s.close(true)
}

// close starts the connection's end from stopQuestions: nothing new is
// admitted, the peer's calls still running are abandoned, and the
// question actors are told to stop. The steps after it run as the actors'
// Terminated messages arrive (or their deadline), one turn each, never
// waiting inside a turn: stopExports, then finishClose. hard skips the
// flush and the linger.
func (s *state) close(hard bool) {
	c := s.c
	s.traceShutdownBegin()
	s.phase = phaseStopQuestions
	s.hard = s.hard || hard
	c.mu.Lock()
	c.closed = true // from now on posts fail: callers get disconnected
	c.mu.Unlock()
	s.disarmIdle()
	if s.drainTimer != nil {
		s.drainTimer.Stop()
	}
	s.abandonAnswers()
	s.stopQuestions()
}

// finishClose runs releaseImports and sendEpitaph, then hands the socket
// to the closer goroutine (closeWrite, linger, closeSocket), which reports
// back with socketClosed.
func (s *state) finishClose() {
	c := s.c
	s.releaseImports()
	s.sendEpitaph()
	if bs := c.opts.Bootstrap; bs.IsValid() {
		bs.Release()
	}
	s.phase = phaseLingering
	c.out.close(!s.hard)
	hard := s.hard
	st := s.closerTracer()
	go c.closer(s, hard, st)
}

// closer is the goroutine of closeWrite, linger and closeSocket. It hands
// the result to the actor or, when protoactor has stopped the actor
// meanwhile, ends the connection itself.
func (c *Conn) closer(s *state, hard bool, st stepTracer) {
	m := c.closeSocket(hard, st)
	c.endMu.Lock()
	c.endResult = &m
	mine := c.actorGone && !c.ended
	c.ended = c.ended || mine
	c.endMu.Unlock()
	if mine {
		s.socketClosed(m) // the actor is gone: s is this goroutine's now
		return
	}
	c.postInternal(socketClosed{})
}

// takeEnd returns the closer's result if the actor is to end the
// connection with it now; gone: the actor is stopping for good (its last
// turn).
func (c *Conn) takeEnd(gone bool) (socketResult, bool) {
	c.endMu.Lock()
	defer c.endMu.Unlock()
	if gone {
		c.actorGone = true
	}
	if c.endResult == nil || c.ended {
		return socketResult{}, false
	}
	c.ended = true
	return *c.endResult, true
}

// abandonAnswers cancels the peer's calls still running and answers
// each with a disconnected exception that says it may have been partly
// processed (unless the peer has gone or broke the protocol): every call the peer sent before
// our epitaph gets a Return, so the calls left unanswered after an
// epitaph are exactly those never processed. It drops the results of the
// calls that returned.
func (s *state) abandonAnswers() {
	for id, a := range s.answers {
		if !a.returned {
			s.running--
			s.callBytes -= a.callBytes
			s.report.Abandoned++
			a.ctx.cancel()
			if !s.peerGone && s.abortWith == nil {
				// A message of its own: the callee may still be writing
				// its results into a.msg.
				out, _ := newExceptionReturn(a.id, errAbandoned, false, nil)
				s.send(out)
			}
			a.returned = true // the callee's late Return is dropped
			s.failPipelined(a, errAbandoned)
			if a.span.IsRecording() {
				tracing.EndCall(a.span, errAbandoned)
			}
			// a.msg is still the callee's (it frees it with its late
			// Return): nothing of it is touched here.
			delete(s.answers, id)
			continue
		}
		s.dropAnswer(a)
		delete(s.answers, id)
	}
}

// stopQuestions cancels our questions still waiting for an answer (Finish
// sent unless the peer has gone), sends Finish for answers still held,
// and tells the question actors to stop, newest first; their Terminated
// messages end the step (stopWaitDone). Their callers get a disconnected
// error saying whether the call was processed.
func (s *state) stopQuestions() {
	start := time.Now()
	var qs []*question
	s.questions.Each(func(_ uint32, q *question) { qs = append(qs, q) })
	slices.SortFunc(qs, func(a, b *question) int { return cmp.Compare(b.seq, a.seq) })
	canceled := 0
	w := s.beginStopWait(PhaseStopQuestions, start)
	for _, q := range qs {
		returned := q.returned()
		if !returned {
			canceled++
			q.stopErr = s.questionLost()
		}
		if !q.finishSent() && !s.peerGone {
			s.sendFinish(q, !returned)
		}
		if q.stopWatch != nil {
			q.stopWatch()
		}
		q.results = nil // the caller may still read them: the garbage collector frees them
		s.stopChild(w, q.pid, QuestionActor, q.id)
	}
	s.questions = idtable.Table[*question]{}
	s.byAnswer = nil
	s.report.Canceled += canceled
	w.note = fmt.Sprintf("%d stopped, %d without an answer", len(qs), canceled)
	s.awaitStops(w)
}

// questionLost is the error of a question whose answer will never come.
func (s *state) questionLost() error {
	if ep := s.peerNotProcessed; ep != nil {
		return notProcessed("the peer closed the connection (epitaph %v) before answering", *ep)
	}
	return outcomeUnknown("the connection ended (%v) before the answer arrived", s.c.Err())
}

// stopExports tells the export actors to stop, newest first; each
// releases its capability as it stops, and their Terminated messages end
// the step.
func (s *state) stopExports() {
	start := time.Now()
	var es []*export
	s.exports.Each(func(_ uint32, e *export) { es = append(es, e) })
	slices.SortFunc(es, func(a, b *export) int { return cmp.Compare(b.seq, a.seq) })
	w := s.beginStopWait(PhaseStopExports, start)
	for _, e := range es {
		s.stopChild(w, e.pid, ExportActor, e.id)
	}
	s.exports = idtable.Table[*export]{}
	s.exportKey = nil
	w.note = fmt.Sprintf("%d stopped", len(es))
	s.awaitStops(w)
}

// beginStopWait starts a stop step.
func (s *state) beginStopWait(p Phase, start time.Time) *stopWait {
	s.tracePhaseStart(p, start)
	w := &stopWait{phase: p, start: start, live: map[string]bool{}}
	for _, pid := range s.ctx.Children() {
		w.live[pid.Id] = true
	}
	s.wait = w
	return w
}

// stopChild puts one question or export actor in the step's queue.
func (s *state) stopChild(w *stopWait, pid *actor.PID, kind ActorKind, id uint32) {
	if pid != nil {
		w.queue = append(w.queue, stoppedChild{pid: pid, kind: kind, id: id})
	}
}

// awaitStops starts stopping the step's actors.
func (s *state) awaitStops(w *stopWait) {
	w.stopped = len(w.queue)
	s.stopNext()
}

// stopNext tells the next actor of the step to stop and arms its
// deadline, or ends the step when none is left. Once the Shutdown's
// context has ended, it tells them all at once and waits for none.
func (s *state) stopNext() {
	w := s.wait
	for len(w.queue) > 0 {
		ch := w.queue[0]
		w.queue = w.queue[1:]
		if !w.live[ch.pid.Id] {
			s.actorStopped(ch, false) // gone already (protoactor stopped it)
			continue
		}
		s.ctx.Stop(ch.pid)
		if s.hurried {
			s.stuck(ch)
			continue
		}
		w.current = &ch
		s.waitGen++
		w.gen = s.waitGen
		gen := w.gen
		if w.timer != nil {
			w.timer.Stop()
		}
		w.timer = time.AfterFunc(s.c.opts.StopTimeout, func() { s.c.postInternal(stopDeadline{gen: gen}) })
		return
	}
	s.stopWaitDone(s.hurried && w.stopped > 0)
}

// childTerminated: a child actor has stopped.
func (s *state) childTerminated(pid *actor.PID) {
	w := s.wait
	if w == nil || pid == nil {
		return
	}
	delete(w.live, pid.Id)
	if cur := w.current; cur != nil && cur.pid.Id == pid.Id {
		w.current = nil
		s.actorStopped(*cur, false)
		s.stopNext()
	}
}

// stopTimedOut: the current actor did not stop within StopTimeout (or
// the Shutdown's context has ended, hurry): it is left to stop on its own
// and the step goes on.
func (s *state) stopTimedOut(hurry bool) {
	w := s.wait
	if w == nil {
		return
	}
	s.hurried = s.hurried || hurry
	if cur := w.current; cur != nil {
		w.current = nil
		s.stuck(*cur)
	}
	s.stopNext()
}

func (s *state) stuck(ch stoppedChild) {
	s.report.StuckActors++
	s.c.opts.Logger.Warn("capnp: actor did not stop in time", "peer", s.c.opts.Peer, "kind", ch.kind, "id", ch.id)
	s.actorStopped(ch, true)
}

func (s *state) actorStopped(ch stoppedChild, timedOut bool) {
	e := ActorStopped{Conn: s.c, Kind: ch.kind, ID: ch.id, TimedOut: timedOut}
	s.traceActorStopped(e)
	s.emit(e)
}

// stopWaitDone ends the current stop step and starts the next one.
func (s *state) stopWaitDone(cut bool) {
	w := s.wait
	s.wait = nil
	if w.timer != nil {
		w.timer.Stop()
	}
	s.phaseDone(PhaseReport{Phase: w.phase, Start: w.start, Took: time.Since(w.start),
		CutShort: cut, Skipped: w.stopped == 0, Note: w.note})
	switch w.phase {
	case PhaseStopQuestions:
		s.phase = phaseStopExports
		s.stopExports()
	case PhaseStopExports:
		s.finishClose()
	}
}

// releaseImports sends Release for every capability still imported
// (unless the peer has gone) and fails what waits on imports: unresolved
// promises and embargoed calls.
func (s *state) releaseImports() {
	start := time.Now()
	disc := s.c.errDisconnected()
	ids := make([]uint32, 0, len(s.imports))
	for id := range s.imports {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		ie := s.imports[id]
		if ie.resolver != nil {
			ie.resolver.Reject(disc)
			ie.resolver = nil
		}
		if !s.peerGone {
			s.sendRelease(id, ie.wireRefs)
		}
		delete(s.imports, id)
	}
	s.embargoes.Each(func(_ uint32, e *embargo) { e.fail(disc) })
	s.embargoes = idtable.Table[*embargo]{}
	note := fmt.Sprintf("%d released", len(ids))
	if s.peerGone && len(ids) > 0 {
		note = fmt.Sprintf("%d dropped (the peer has gone)", len(ids))
	}
	s.phaseDone(PhaseReport{Phase: PhaseReleaseImports, Start: start, Took: time.Since(start),
		Skipped: len(ids) == 0, Note: note})
}

// sendEpitaph queues the connection's last message: the Abort that names
// a protocol error, or our epitaph when the peer understands one or when
// its code is not OK. To a peer that has gone, nothing.
func (s *state) sendEpitaph() {
	start := time.Now()
	pr := PhaseReport{Phase: PhaseSendEpitaph, Start: start}
	switch {
	case s.peerGone:
		pr.Skipped, pr.Note = true, "the peer has gone: FIN only"
	case s.abortWith != nil:
		s.sendAbort(rpccp.Exception_Type_failed, s.abortWith.Error(), nil)
		pr.Note = "abort: " + s.abortWith.Error()
	case s.epitaph.Code != supervisor.OK || s.peerOurs:
		typ := rpccp.Exception_Type_failed
		if s.epitaph.Code == supervisor.OK {
			typ = rpccp.Exception_Type_disconnected
		}
		ep := s.epitaph
		s.sendAbort(typ, "connection closed with epitaph "+ep.String(), &ep)
		s.report.EpitaphSent = true
		s.traceEvent("epitaph.sent", epitaphAttributes(ep)...)
		pr.Note = "epitaph " + ep.String()
	default:
		pr.Skipped, pr.Note = true, "the peer reads no epitaphs: FIN only"
	}
	pr.Took = time.Since(start)
	s.phaseDone(pr)
}

// sendAbort queues an Abort carrying reason and, if ep is set, an epitaph.
func (s *state) sendAbort(typ rpccp.Exception_Type, reason string, ep *supervisor.Epitaph) {
	out, om := newMessage()
	e, err := om.NewAbort()
	if err == nil {
		e.SetType(typ)
		err = e.SetReason(reason)
	}
	if err == nil && ep != nil {
		err = setEpitaph(e, *ep)
	}
	if err != nil {
		out.Release()
		return
	}
	s.send(out)
}

// socketClosed: the closer goroutine has finished closeWrite and linger
// and closed the socket. The connection reports its end and stops. It
// runs on the actor or, once protoactor has stopped the actor, on the
// closer goroutine.
func (s *state) socketClosed(m socketResult) {
	// Their spans were made by the closer as the steps ran.
	for _, p := range [...]PhaseReport{m.closeWriteReport(), m.lingerReport(), m.closeSocketReport()} {
		s.phaseRecorded(p)
	}
	s.phase = phaseClosed
	c := s.c
	s.report.Duration = time.Since(c.start)
	s.report.ReadEnd = c.readEnd // the reader has exited
	c.mu.Lock()
	c.report = s.report
	c.mu.Unlock()
	final := s.report.Stats
	c.publishStats(final)
	s.traceDown(s.report, m)
	s.emit(Down{Conn: c, Report: s.report})
	close(c.done)
	if !s.stopping && s.ctx != nil {
		s.ctx.Stop(s.ctx.Self())
	}
}

// skipped records a phase that did not run.
func (s *state) skipped(p Phase, note string) {
	s.phaseDone(PhaseReport{Phase: p, Start: time.Now(), Skipped: true, Note: note})
}

func (s *state) phaseDone(p PhaseReport) {
	s.tracePhase(p)
	s.phaseRecorded(p)
}

// phaseRecorded adds a step, already traced, to the report and tells the
// parent.
func (s *state) phaseRecorded(p PhaseReport) {
	s.report.Phases = append(s.report.Phases, p)
	s.emit(PhaseDone{Conn: s.c, Phase: p})
}

// emit sends a lifecycle event to the parent and to Options.OnEvent.
func (s *state) emit(e Event) {
	if s.parent != nil {
		s.c.root.Send(s.parent, e)
	}
	if f := s.c.opts.OnEvent; f != nil {
		f(e)
	}
}

// noteIdle emits Idle/Busy on a change of the tables' emptiness and arms
// or disarms the idle timer.
func (s *state) noteIdle(st Stats) {
	idle := st.Idle()
	if idle == s.idle {
		return
	}
	s.idle = idle
	if idle {
		s.traceEvent("idle")
		s.emit(Idle{Conn: s.c})
		s.armIdle()
	} else {
		s.disarmIdle()
		s.traceEvent("busy", statsAttributes(st)...)
		s.emit(Busy{Conn: s.c, Stats: st})
	}
}

func (s *state) armIdle() {
	if d := s.c.opts.IdleTimeout; d > 0 {
		s.idleGen++
		gen := s.idleGen
		s.idleTimer = time.AfterFunc(d, func() { _ = s.c.post(idleDeadline{gen: gen}) })
	}
}

func (s *state) disarmIdle() {
	s.idleGen++
	if s.idleTimer != nil {
		s.idleTimer.Stop()
		s.idleTimer = nil
	}
}

// idleExpired: the tables stayed empty for IdleTimeout.
func (s *state) idleExpired(gen uint64) {
	if gen != s.idleGen || s.phase != phaseOpen || !s.idle {
		return
	}
	s.shutdown(supervisor.Epitaph{Code: supervisor.OK, Message: "idle timeout"}, true)
}

// afterClose handles what still arrives once the connection is closing:
// it frees what the message carries and changes nothing.
func (s *state) afterClose(msg any) {
	switch m := msg.(type) {
	case inFrame:
		m.f.Msg.Release()
	case *capnp.Message:
		m.Release()
	case callOut:
		s.rejectUnsent(m.q, s.c.errDisconnected())
	case answerReturned:
		if m.a.msg != nil {
			m.a.msg.Release()
		}
	case disembargoReply:
		m.msg.Release()
	}
}

// errAbandoned answers a call still running when a drain ends.
var errAbandoned = exc.New(exc.Disconnected, "capnp", "call abandoned: the connection shut down before it finished (it may have been partly processed)")

// errLocalDraining is what a local call gets when it is made on a
// draining connection.
func errLocalDraining() error {
	return notProcessed("the connection is shutting down")
}

// refusedDraining is the answer to a peer's call that arrives while we
// drain: never processed, with our epitaph-to-be so the peer knows why.
func (s *state) refusedDraining(a *answer) {
	s.report.Refused++
	ep := s.epitaph
	a.err = exc.New(exc.Disconnected, "capnp", "call refused, not processed: the connection is shutting down")
	a.epitaph = &ep
	a.releaseParams = true
	s.answerReturned(a)
}
