package core

import varena "github.com/vatactor/vatactor/internal/arena"

// arena holds the values of one kind that a Step hands out by pointer
// (outputs, the messages in them, events): a pointer put returns is valid
// until the next Step.
type arena[T any] = varena.Of[T]

func put[T any](a *arena[T], v T) *T { return a.Put(v) }

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
	s.send.Reset()
	s.deliver.Reset()
	s.cancel.Reset()
	s.done.Reset()
	s.redirect.Reset()
	s.settle.Reset()
	s.resolved.Reset()
	s.spawn.Reset()
	s.stop.Reset()
	s.arm.Reset()
	s.closing.Reset()
	s.closeSocket.Reset()
	s.emit.Reset()
	s.log.Reset()
	s.bootstrap.Reset()
	s.call.Reset()
	s.ret.Reset()
	s.finish.Reset()
	s.resolve.Reset()
	s.release.Reset()
	s.disembargo.Reset()
	s.abort.Reset()
	s.unimpl.Reset()
	s.phaseStarted.Reset()
	s.phaseDone.Reset()
	s.busy.Reset()
	s.refused.Reset()
	s.ending.Reset()
	s.actorStopped.Reset()
}
