package core

// arena holds the values of one kind that a Step hands out by pointer
// (outputs, the messages in them, events): its storage is reused from
// Step to Step, so a warm Step allocates nothing for them. A pointer it
// returns is valid until the next Step.
type arena[T any] struct {
	buf []T
	n   int
}

// put stores v and returns where. When the storage grows, values handed
// out before stay where they were, unchanged.
func put[T any](a *arena[T], v T) *T {
	if a.n < len(a.buf) {
		a.buf[a.n] = v
	} else {
		a.buf = append(a.buf, v)
	}
	p := &a.buf[a.n]
	a.n++
	return p
}

// reset makes the storage free again. It does not clear it: put
// overwrites a value whole, and clearing would cost a write barrier per
// pointer during a collection; what it still points to (the last Steps'
// outputs, a bounded few) is freed when overwritten.
func (a *arena[T]) reset() { a.n = 0 }

// stepStorage is the storage of one Step's outputs, by kind.
type stepStorage struct {
	send        arena[Send]
	deliver     arena[Deliver]
	cancel      arena[CancelAnswer]
	done        arena[AnswerDone]
	redirect    arena[Redirect]
	settle      arena[Settle]
	resolved    arena[ImportResolved]
	spawn       arena[SpawnChild]
	stop        arena[StopChild]
	arm         arena[Arm]
	closing     arena[Closing]
	closeSocket arena[CloseSocket]
	emit        arena[Emit]
	log         arena[Log]

	bootstrap  arena[Bootstrap]
	call       arena[Call]
	ret        arena[Return]
	finish     arena[Finish]
	resolve    arena[Resolve]
	release    arena[Release]
	disembargo arena[Disembargo]
	abort      arena[Abort]
	unimpl     arena[Unimplemented]

	phaseStarted arena[PhaseStarted]
	phaseDone    arena[PhaseDone]
	busy         arena[Busy]
	refused      arena[Refused]
	ending       arena[Ending]
	actorStopped arena[ActorStopped]
	events       arena[Event]
}

func (s *stepStorage) reset() {
	s.send.reset()
	s.deliver.reset()
	s.cancel.reset()
	s.done.reset()
	s.redirect.reset()
	s.settle.reset()
	s.resolved.reset()
	s.spawn.reset()
	s.stop.reset()
	s.arm.reset()
	s.closing.reset()
	s.closeSocket.reset()
	s.emit.reset()
	s.log.reset()
	s.bootstrap.reset()
	s.call.reset()
	s.ret.reset()
	s.finish.reset()
	s.resolve.reset()
	s.release.reset()
	s.disembargo.reset()
	s.abort.reset()
	s.unimpl.reset()
	s.phaseStarted.reset()
	s.phaseDone.reset()
	s.busy.reset()
	s.refused.reset()
	s.ending.reset()
	s.actorStopped.reset()
}
