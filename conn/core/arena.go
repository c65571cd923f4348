package core

import (
	varena "github.com/vatactor/vatactor/internal/arena"
	"github.com/vatactor/vatactor/internal/peakmap"
)

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
}

// reset empties the storage for the next Step; drop (Core.Rest) also
// drops what it points to.
func (s *stepStorage) reset(drop bool) {
	empty(&s.send, drop)
	empty(&s.deliver, drop)
	empty(&s.cancel, drop)
	empty(&s.done, drop)
	empty(&s.redirect, drop)
	empty(&s.settle, drop)
	empty(&s.resolved, drop)
	empty(&s.spawn, drop)
	empty(&s.stop, drop)
	empty(&s.arm, drop)
	empty(&s.closing, drop)
	empty(&s.closeSocket, drop)
	empty(&s.emit, drop)
	empty(&s.log, drop)
	empty(&s.bootstrap, drop)
	empty(&s.call, drop)
	empty(&s.ret, drop)
	empty(&s.finish, drop)
	empty(&s.resolve, drop)
	empty(&s.release, drop)
	empty(&s.disembargo, drop)
	empty(&s.abort, drop)
	empty(&s.unimpl, drop)
	empty(&s.phaseStarted, drop)
	empty(&s.phaseDone, drop)
	empty(&s.busy, drop)
	empty(&s.refused, drop)
	empty(&s.ending, drop)
	empty(&s.actorStopped, drop)
}

// empty resets a, or clears it when drop is set.
func empty[T any](a *arena[T], drop bool) {
	if drop {
		a.Clear()
	} else {
		a.Reset()
	}
}

// Scratch is the storage a Core's Steps work in: their outputs and the
// question and answer records they reuse. A connection at rest needs
// none of it, so a runner that runs many cores lends one Scratch to the
// core whose turn it is (Lend) and takes it back when the turn is over
// (Rest), and a thousand idle connections hold none. A core that is lent
// none makes its own and keeps it. The zero value is ready.
type Scratch struct {
	o   stepStorage
	out []Output
	// freeQ, freeA: retired questions and answers, for reuse; bounded.
	freeQ []*question
	freeA []*answer
}

// maxFree bounds the questions and answers a Scratch keeps for reuse.
const maxFree = 64

// Lend gives the core s to work in, if it has none. Call it before Start
// or a Step; a core given none makes its own.
func (c *Core) Lend(s *Scratch) {
	if c.sc == nil {
		c.use(s)
	}
}

// Quiet reports whether the connection has no call in flight either way:
// none of the peer's calls running here, no question of ours waiting for
// its Return, no embargo. (A question whose Return is in, or an answer
// that has returned, waits only for a Finish: an idle connection may hold
// some, its bootstrap's above all.) A runner gives the storage back
// (Rest) after a quiet turn and keeps it while calls run, so that a busy
// connection's turns reuse its storage in place and an idle one holds
// none. Storage given back at any turn is correct (the simulation does);
// Quiet only says when it pays.
func (c *Core) Quiet() bool {
	if c.running > 0 || c.embargoes.Len() > 0 {
		return false
	}
	switch n := c.questions.Len(); {
	case n == 0:
		return true
	case n > quietQuestions:
		return false // busy by any measure; not worth a look at each
	}
	waiting := false
	c.questions.Each(func(_ uint32, q *question) {
		waiting = waiting || q.state == questionWaiting || q.state == questionFinishing
	})
	return !waiting
}

// quietQuestions is the most questions Quiet looks through.
const quietQuestions = 8

// AtRest reports whether the core holds no storage (see Rest).
func (c *Core) AtRest() bool { return c.sc == nil }

// use makes s the core's storage.
func (c *Core) use(s *Scratch) {
	c.sc, c.o = s, &s.o
}

// scratch makes sure the core has storage to work in.
func (c *Core) scratch() {
	if c.sc == nil {
		c.use(new(Scratch))
	}
}

// Rest takes back the core's storage once the runner has carried out
// every output of its last Step (and Start): the outputs are gone from
// then on, and the questions and answers retired meanwhile are free for
// reuse. It returns the storage, for this core's or another's next turn,
// or nil when it has none. Maps of the tables that a burst grew and that
// are empty again are rebuilt small.
func (c *Core) Rest() *Scratch {
	s := c.sc
	if s == nil {
		return nil
	}
	c.recycle()
	c.answers.Shrink()
	c.byCall = peakmap.Shrink(c.byCall, &c.peaks.byCall)
	s.o.reset(true)
	clear(s.out[:cap(s.out)]) // a bigger Step of the turn may have left some beyond len
	s.out = s.out[:0]
	c.sc, c.o = nil, nil
	return s
}

// recycle makes what the last Step retired free for reuse, as far as
// the storage keeps any.
func (c *Core) recycle() {
	freeRetired(&c.sc.freeQ, &c.retiredQ)
	freeRetired(&c.sc.freeA, &c.retiredA)
}

// freeRetired moves the records of retired, wiped, to free, up to maxFree
// of them, and empties retired.
func freeRetired[T interface{ wipe() }](free, retired *[]T) {
	for _, r := range *retired {
		if len(*free) < maxFree {
			r.wipe()
			*free = append(*free, r)
		}
	}
	clear(*retired)
	*retired = (*retired)[:0]
}
