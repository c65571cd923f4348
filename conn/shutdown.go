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

	"github.com/vatactor/vatactor/supervisor"
	"github.com/vatactor/vatactor/tracing"
)

// phase is where a connection is in its life.
type phase uint8

const (
	// phaseOpen: serving calls both ways. Next: phaseDraining (Shutdown),
	// phaseClosing (Close, the peer's end, a protocol or transport error).
	phaseOpen phase = iota
	// phaseDraining: new calls are refused both ways; calls in flight
	// finish. Next: phaseClosing (nothing left in flight, the drain
	// deadline, the peer's end, Close).
	phaseDraining
	// phaseClosing: stopQuestions, stopExports, releaseImports and
	// sendEpitaph run, in one turn of the actor. Next: phaseLingering.
	phaseClosing
	// phaseLingering: the queue is closed; the closer goroutine flushes,
	// half-closes and lingers for the peer's EOF. Next: phaseClosed.
	phaseLingering
	// phaseClosed: the socket is closed, Down sent, the actor stopping.
	phaseClosed
)

var phaseNames = [...]string{"open", "draining", "closing", "lingering", "closed"}

func (p phase) String() string { return phaseNames[p] }

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
	s.traceShutdownBegin()
	s.phase = phaseDraining
	s.drainStart = time.Now()
	s.drainTimer = time.AfterFunc(s.c.opts.DrainTimeout, func() { _ = s.c.post(drainDeadline{}) })
}

// inFlight counts our questions waiting for their Return and the peer's
// calls we have not answered yet.
func (s *state) inFlight() (questions, answers int) {
	s.questions.each(func(_ uint32, q *question) {
		if !q.returned && !q.finishSent {
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
	if s.phase >= phaseClosing {
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
	if s.phase >= phaseClosing {
		return
	}
	s.peerGone = true
	s.record(supervisor.TransportError{Err: err})
	s.close(true)
}

// close runs the connection's end from stopQuestions to sendEpitaph in
// this turn of the actor, then hands the socket to the closer goroutine
// (closeWrite, linger, closeSocket). hard skips the flush and the linger.
func (s *state) close(hard bool) {
	c := s.c
	s.traceShutdownBegin()
	s.phase = phaseClosing
	c.mu.Lock()
	c.closed = true // from now on posts fail: callers get disconnected
	c.mu.Unlock()
	s.disarmIdle()
	if s.drainTimer != nil {
		s.drainTimer.Stop()
	}
	s.abandonAnswers()
	s.stopQuestions()
	s.stopExports()
	s.releaseImports()
	s.sendEpitaph()
	if bs := c.opts.Bootstrap; bs.IsValid() {
		bs.Release()
	}
	s.phase = phaseLingering
	c.out.close(!hard)
	if s.stopping {
		s.socketClosed(c.closeSocket(true))
		return
	}
	go func() { c.root.Send(c.pid.Load(), c.closeSocket(hard)) }()
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
			s.report.Abandoned++
			a.ctx.cancel()
			if !s.peerGone && s.abortWith == nil {
				// A message of its own: the callee may still be writing
				// its results into a.msg.
				out, _ := newExceptionReturn(a.id, errAbandoned, false, nil)
				s.send(out)
			}
			a.returned = true // the callee's late Return is dropped
			if a.span.IsRecording() {
				tracing.EndCall(a.span, errAbandoned)
			}
		}
		s.dropAnswer(a)
		delete(s.answers, id)
	}
}

// stopQuestions cancels our questions still waiting for an answer (Finish
// sent unless the peer has gone), sends Finish for answers still held,
// and stops the question actors, newest first. Their callers get a
// disconnected error saying whether the call was processed.
func (s *state) stopQuestions() {
	start := time.Now()
	var qs []*question
	s.questions.each(func(_ uint32, q *question) { qs = append(qs, q) })
	slices.SortFunc(qs, func(a, b *question) int { return cmp.Compare(b.seq, a.seq) })
	canceled := 0
	for _, q := range qs {
		if !q.returned {
			canceled++
			q.stopErr = s.questionLost()
		}
		if !q.finishSent && !s.peerGone {
			s.sendFinish(q, !q.returned)
		}
		if q.stopWatch != nil {
			q.stopWatch()
		}
		q.results = nil // the caller may still read them: the garbage collector frees them
		s.stopChild(q.pid, &q.stopped, QuestionActor, q.id)
	}
	s.questions = idTable[*question]{}
	s.byAnswer = nil
	s.report.Canceled += canceled
	s.phaseDone(PhaseReport{Phase: PhaseStopQuestions, Start: start, Took: time.Since(start),
		Skipped: len(qs) == 0, Note: fmt.Sprintf("%d stopped, %d without an answer", len(qs), canceled)})
}

// questionLost is the error of a question whose answer will never come.
func (s *state) questionLost() error {
	if ep := s.peerNotProcessed; ep != nil {
		return notProcessed("the peer closed the connection (epitaph %v) before answering", *ep)
	}
	return outcomeUnknown("the connection ended (%v) before the answer arrived", s.c.Err())
}

// stopExports stops the export actors, newest first; each releases its
// capability as it stops.
func (s *state) stopExports() {
	start := time.Now()
	var es []*export
	s.exports.each(func(_ uint32, e *export) { es = append(es, e) })
	slices.SortFunc(es, func(a, b *export) int { return cmp.Compare(b.seq, a.seq) })
	for _, e := range es {
		s.stopChild(e.pid, &e.stopped, ExportActor, e.id)
	}
	s.exports = idTable[*export]{}
	s.exportKey = nil
	s.phaseDone(PhaseReport{Phase: PhaseStopExports, Start: start, Took: time.Since(start),
		Skipped: len(es) == 0, Note: fmt.Sprintf("%d stopped", len(es))})
}

// stopChild stops one question or export actor and waits for it at most
// StopTimeout (no wait once the Shutdown's context has ended).
func (s *state) stopChild(pid *actor.PID, stopped *chan struct{}, kind ActorKind, id uint32) {
	ch := make(chan struct{})
	*stopped = ch // read by the child after it receives Stop
	s.ctx.Stop(pid)
	t := time.NewTimer(s.c.opts.StopTimeout)
	defer t.Stop()
	timedOut := false
	select {
	case <-ch:
	case <-t.C:
		timedOut = true
	case <-s.c.hurry:
		timedOut = true
	}
	if timedOut {
		s.report.StuckActors++
		s.c.opts.Logger.Warn("capnp: actor did not stop in time", "peer", s.c.opts.Peer, "kind", kind, "id", id)
	}
	e := ActorStopped{Conn: s.c, Kind: kind, ID: id, TimedOut: timedOut}
	s.traceActorStopped(e)
	s.emit(e)
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
	s.embargoes.each(func(_ uint32, e *embargo) { e.resolver.Reject(disc) })
	s.embargoes = idTable[*embargo]{}
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
// and closed the socket. The connection reports its end and stops.
func (s *state) socketClosed(m socketClosed) {
	s.phaseDone(PhaseReport{Phase: PhaseCloseWrite, Start: m.closeWriteStart, Took: m.lingerStart.Sub(m.closeWriteStart),
		CutShort: m.flushCut, Skipped: m.hard, Note: m.closeWriteNote()})
	s.phaseDone(PhaseReport{Phase: PhaseLinger, Start: m.lingerStart, Took: m.closeStart.Sub(m.lingerStart),
		CutShort: m.lingerCut, Skipped: m.hard || m.flushCut})
	s.phaseDone(PhaseReport{Phase: PhaseCloseSocket, Start: m.closeStart, Took: time.Since(m.closeStart)})
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
	if !s.stopping {
		s.ctx.Stop(s.ctx.Self())
	}
}

// skipped records a phase that did not run.
func (s *state) skipped(p Phase, note string) {
	s.phaseDone(PhaseReport{Phase: p, Start: time.Now(), Skipped: true, Note: note})
}

func (s *state) phaseDone(p PhaseReport) {
	s.tracePhase(p)
	s.report.Phases = append(s.report.Phases, p)
	s.emit(PhaseDone{Conn: s.c, Phase: p})
}

// emit sends a lifecycle event to the parent and to Options.OnEvent.
func (s *state) emit(e Event) {
	if parent := s.ctx.Parent(); parent != nil {
		s.ctx.Send(parent, e)
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
