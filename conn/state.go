package conn

import (
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"capnproto.org/go/capnp/v3"
	"github.com/asynkron/protoactor-go/actor"

	"github.com/vatactor/vatactor/conn/core"
	"github.com/vatactor/vatactor/conn/wire"
	"github.com/vatactor/vatactor/internal/arena"
	"github.com/vatactor/vatactor/internal/mailbox"
	"github.com/vatactor/vatactor/internal/peakmap"
	"github.com/vatactor/vatactor/internal/tinymap"
	"github.com/vatactor/vatactor/metering"
	"github.com/vatactor/vatactor/supervisor"
)

// state is the connection actor: a shell around the connection's core
// (package core), which holds the protocol's tables and decides
// everything. The shell turns what happens (frames, calls of local code,
// children stopping, deadlines, the socket's end) into the core's inputs
// and carries out its outputs: frames to write, calls to deliver to local
// capabilities, promises to settle, child actors to spawn and stop, timers
// to arm, the socket to close. No turn of the actor waits.
type state struct {
	c    *Conn
	ctx  actor.Context // valid only inside Receive
	core *core.Core

	// later holds the inputs that carrying out outputs gives rise to
	// (a reference handed back, a call that failed to deliver): they are
	// fed before the next message, in order.
	later []core.Input
	// released holds the LocalRelease inputs in later, reused once feed
	// has drained them.
	released arena.Of[core.LocalRelease]

	calls   map[core.CallID]*question // local calls given to the core, until retired
	byQID   map[uint32]*question      // the same, by question id once on the wire
	byAns   map[*capnp.Answer]*question
	answers tinymap.Map[uint32, *answer] // the peer's calls, until the core is done with them

	locals   tinymap.Map[core.Ref, *localCap] // our capabilities the core may name
	refByKey tinymap.Map[any, core.Ref]
	fresh    []core.Ref // named during this turn: dropped at its end unless exported
	// unspawned: questions on the wire that apply has still to give an
	// actor (spawnQuestions); parked: question actors that serve none,
	// ready for the next (takeQuestionActor).
	unspawned []*question
	parked    []*questionActor
	nextRef   core.Ref
	bootRef   core.Ref

	imports  map[uint32]*importEntry
	children map[string]core.Child // by PID id: Terminated → ChildStopped
	pids     map[core.Child]*actor.PID
	timers   [core.MaxDeadline + 1]*time.Timer
	clock    coreClock
	// readEndFed: the core has been told how reading ended.
	readEndFed bool

	// childProps spawn every question and export actor: made for the
	// first, its producers hand over spawning and its mailbox (see
	// spawnChild).
	childProps   *actor.Props
	spawning     actor.Actor
	spawningMbox *mailbox.Mailbox

	unsent      bool // frames queued since the writer was last kicked (flushOut)
	sidecarSent bool // our first frame carried our sidecar
	peerOurs    bool
	closing     bool          // the core's end has begun (Closing)
	stopping    bool          // protoactor is stopping the actor: the closer may end the connection
	last        *socketResult // how the socket was closed, once it is
	parent      *actor.PID    // the actor's parent, for events (also after its last turn)
	tr          connTrace

	scratch inPayload // see newInPayload

	// now: the clock value of the current step (feed).
	now time.Time
	// metered: call durations measured, recorded after a turn that
	// writes or by meterTimer (recordMetered).
	metered    []meteredCall
	meterTimer *time.Timer
	meterArmed bool

	// turn is the storage the connection works in during a turn (lend,
	// rest), nil between turns; in is its inputs.
	turn *turnStorage
	in   *turnInputs
	// peaks: the largest sizes of the maps a burst grows, for rest to
	// rebuild them once they are (nearly) empty again (peakmap).
	peaks struct{ calls, byAns, byQID, children, pids peakmap.Peak }
	// restTimer rests the connection once it has been quiet for
	// restBack's delay (rest); restArmed: it is pending.
	restTimer *time.Timer
	restArmed bool
	restBack  restBackoff
	// lastTurn: the actor is in its last turn (protoactor's Stopped),
	// when no child can be spawned.
	lastTurn bool
	// gone: the actor's last turn has handed the state to the closer
	// (takeEnd); the rest of that turn leaves the storage alone.
	gone bool
}

// turnInputs is the storage of the inputs of the hot path, reused from
// message to message: the core keeps no input it is given.
type turnInputs struct {
	recv     core.Received
	call     core.Call
	ret      core.Return
	payload  core.Payload
	finish   core.Finish
	local    core.LocalCall
	fin      core.LocalFinish
	returned core.Returned
	results  core.Payload
}

// turnStorage is what a connection works in during its actor's turn and
// gives back after it: the core's (core.Scratch), the inputs', and the
// shell's slices, reused call to call: clients' (clients), decodePayload's
// descriptors (the core keeps none it is given: it turns them into
// capabilities) and a Return's describeAll.
type turnStorage struct {
	core    core.Scratch
	in      turnInputs
	clients []capnp.Client
	descs   []core.CapDescriptor
	caps    []core.Cap
}

// keptScratch is the most entries a slice of turnStorage keeps when it
// goes back to the pool.
const keptScratch = 64

// reset readies t for the pool: nothing it holds stays reachable.
func (t *turnStorage) reset() {
	t.in = turnInputs{}
	t.clients = resetScratch(t.clients)
	t.descs = resetScratch(t.descs)
	t.caps = resetScratch(t.caps)
}

func resetScratch[T any](s []T) []T {
	if cap(s) > keptScratch {
		return nil
	}
	clear(s[:cap(s)])
	return s[:0]
}

// localCap is one of our capabilities as the core knows it: a Ref.
type localCap struct {
	client  capnp.Client // our reference
	key     any          // identity, for the same Ref when sent again (nil: none)
	exports int          // exports holding it
	// dormant: its export while that has no actor. An export that is not
	// a promise has nothing to do until it stops, so its actor is spawned
	// then (wake), and an idle connection holding the peer's reference to
	// its bootstrap holds no actor for it.
	dormant *export
	pinned  bool // the bootstrap capability: kept for the connection's life
}

func newState(c *Conn) *state {
	s := &state{c: c} // its maps are made as they are first written (peakmap.Set)
	var boot core.Cap
	if bs := c.opts.Bootstrap; bs.IsValid() {
		boot = s.describe(bs) // its own reference, for the connection's life
		s.bootRef = boot.Ref
		if l := s.locals.At(boot.Ref); l != nil {
			l.pinned = true
		}
		s.fresh = nil
	}
	s.core = core.New(c.opts.coreConfig(boot), c.start)
	return s
}

// spawnChild starts a (question or export) actor as a child of the
// connection, with no allocation beyond protoactor's own for the process.
// The props are made for the first child: an idle connection that has
// never had one (a server's, whose bootstrap export is dormant) holds
// none.
func (s *state) spawnChild(a actor.Actor, mbox *mailbox.Mailbox) *actor.PID {
	if s.childProps == nil {
		s.childProps = actor.PropsFromProducer(func() actor.Actor {
			a := s.spawning
			s.spawning = nil
			return a
		}, actor.WithMailbox(func() actor.Mailbox {
			m := s.spawningMbox
			s.spawningMbox = nil
			return mailbox.Init(m)
		}), actor.WithDispatcher(mailbox.Pool))
	}
	s.spawning, s.spawningMbox = a, mbox
	return s.ctx.Spawn(s.childProps)
}

// stopChildren is the connection actor's supervisor strategy: a question
// or export actor that panics is stopped, which settles its caller with a
// disconnected error or releases its capability.
var stopChildren = actor.NewOneForOneStrategy(0, 0, func(any) actor.Directive { return actor.StopDirective })

// feed gives the core one input and carries out what it does, then the
// inputs that gave rise to.
func (s *state) feed(in core.Input) {
	now := s.clock.now()
	s.now = now
	s.apply(s.core.Step(now, in))
	// By index, not by reslicing: the queue keeps its storage for the
	// next feed (apply may append to it meanwhile).
	for i := 0; i < len(s.later); i++ {
		next := s.later[i]
		s.later[i] = nil
		s.apply(s.core.Step(now, next))
	}
	s.later = s.later[:0]
	s.released.Reset()
	s.sweep()
}

// turnPool is the storage the connections of this process work in
// (turnStorage): a connection holds one while it has calls in flight, so
// an idle connection holds none, and a burst's reusable question and
// answer records go back to the pool instead of staying with the
// connection.
var turnPool = sync.Pool{New: func() any { return new(turnStorage) }}

// lend gives the connection storage for this turn, if it has none, and
// the core its part of it, if the core has none.
func (s *state) lend() {
	s.storage()
	if s.core.AtRest() {
		s.core.Lend(&s.turn.core)
	}
}

// storage is the turn's storage, borrowed now if the turn has none.
func (s *state) storage() *turnStorage {
	if s.turn == nil {
		s.turn = turnPool.Get().(*turnStorage)
		s.in = &s.turn.in
	}
	return s.turn
}

// restPost: restTimer fired.
type restPost struct{}

// rest, at the end of a turn: a closed connection gives its storage back
// at once; one that has no call in flight (core.Quiet) arms restTimer for
// restBack's delay, which rests it (restNow, readerRest) if it is still
// quiet then and no frame came meanwhile (else the timer is armed again);
// a busy connection keeps its storage for its next turn.
func (s *state) rest() {
	switch {
	case s.core.Closed():
		s.restNow()
	case !s.core.Quiet() || s.restArmed || (s.turn == nil && s.core.AtRest()):
	default:
		s.restArmed = true
		s.restBack.armed()
		s.c.postAfter(&s.restTimer, s.restBack.delay(), restPost{})
	}
}

// restNow gives back what the connection holds for calls in flight: its
// storage, its parked question actors, the send queue's grown slices,
// its mailbox's grown queues, the tables' grown maps.
func (s *state) restNow() {
	s.giveBack()
	s.stopParked()
	s.c.out.trim(s.c.stream)
	s.c.mailbox.Trim()
	s.shrinkTables()
}

// shrinkTables rebuilds the maps that a burst grew, once they are (nearly)
// empty again.
func (s *state) shrinkTables() {
	s.calls = peakmap.Shrink(s.calls, &s.peaks.calls)
	s.byAns = peakmap.Shrink(s.byAns, &s.peaks.byAns)
	s.byQID = peakmap.Shrink(s.byQID, &s.peaks.byQID)
	s.answers.Shrink()
	s.children = peakmap.Shrink(s.children, &s.peaks.children)
	s.pids = peakmap.Shrink(s.pids, &s.peaks.pids)
}

// giveBack gives the storage back now.
func (s *state) giveBack() {
	s.core.Rest()
	if t := s.turn; t != nil {
		t.reset()
		s.turn, s.in = nil, nil
		turnPool.Put(t)
	}
}

// releaseLater queues the release of one reference to cp, fed to the
// core once the current output has been carried out.
func (s *state) releaseLater(cp core.Cap) {
	s.later = append(s.later, s.released.Put(core.LocalRelease{Cap: cp}))
}

// readEndFirst: a child's Terminated, a system message, runs ahead of the
// mailbox; when the peer's end is read and nothing is queued but the
// reader's readerDone (the reader queued every frame before it), the
// core learns of the end first, so the end does not go on to write an
// epitaph after the peer's EOF.
func (s *state) readEndFirst() {
	if rd := s.c.readEnded.Load(); rd != nil && !s.readEndFed && s.c.mailbox.UserMessageCount() <= 1 {
		s.readerDone(*rd)
	}
}

// coreClock is the time the core is given: the monotonic time elapsed
// since a base read from the wall clock, which costs one monotonic read
// where time.Now reads both clocks; re-based once a second, so a step of
// the wall clock shows within that.
type coreClock struct{ base time.Time }

func (c *coreClock) now() time.Time {
	if !c.base.IsZero() {
		if d := time.Since(c.base); d < time.Second {
			return c.base.Add(d)
		}
	}
	c.base = time.Now()
	return c.base
}

// sinceStart is the connection's clock: the time since it started.
func (s *state) sinceStart() time.Duration { return s.clock.now().Sub(s.c.start) }

// sweep drops the references to capabilities named during the turn that
// the core did not export.
func (s *state) sweep() {
	for _, r := range s.fresh {
		if l := s.locals.At(r); l != nil && l.exports == 0 && !l.pinned {
			s.dropLocal(r, l)
		}
	}
	s.fresh = s.fresh[:0]
}

func (s *state) dropLocal(r core.Ref, l *localCap) {
	s.locals.Delete(r)
	if l.key != nil && s.refByKey.At(l.key) == r {
		s.refByKey.Delete(l.key)
	}
	l.client.Release()
}

// Receive is the one way in: every input of the connection is a message.
func (s *state) Receive(ctx actor.Context) {
	s.ctx = ctx
	s.lend()
	defer func() {
		if r := recover(); r != nil {
			// A bug of ours: said at ERROR (protoactor's own log is
			// quiet), then protoactor stops the actor, which ends the
			// connection with epitaph CANCELED.
			s.c.opts.Logger.Error("capnp: panic in the connection actor (a bug of vatactor's)", "peer", s.c.opts.Peer,
				"panic", r, "stack", string(debug.Stack()))
			panic(r)
		}
		s.ctx = nil
		if s.gone {
			return // the last turn: done (actor.Stopped)
		}
		wrote := s.flushOut()
		s.recordMetered(wrote, false)
		s.rest()
	}()
	switch m := ctx.Message().(type) {
	case *capnp.Message:
		s.frame(Frame{Msg: m})
	case finishPost:
		s.frame(Frame{finish: m.frame()})
	case inFrame:
		s.frame(m.f)
	case callOut:
		s.localCall(m.q)
	case cancelQuestion:
		s.feed(&core.LocalCancel{Call: m.q.call, Err: m.err})
	case releaseQuestion:
		s.in.fin = core.LocalFinish{Call: m.q.call}
		s.feed(&s.in.fin)
	case capReleased:
		s.feed(&core.LocalRelease{Cap: m.cap})
	case answerReturned:
		s.answerReturned(m.a)
	default:
		s.receiveRare(ctx, m)
	}
	if !s.gone && !s.closing {
		s.c.publishStats(s.core.Stats())
	}
}

// receiveRare is Receive's every other message: kept out of Receive, whose
// frame is on the stack of every call a reader handles in place (a
// switch's frame holds every case's locals), so that a reader's stack
// grows less often.
//
//go:noinline
func (s *state) receiveRare(ctx actor.Context, msg any) {
	switch m := msg.(type) {
	case *actor.Started:
		s.parent = ctx.Parent()
		s.c.pid.Store(ctx.Self())
		s.c.reader.Add(1)
		go s.c.readLoop()
		s.traceStarted()
		s.emit(Up{Conn: s.c, Peer: s.c.opts.Peer, Role: s.c.opts.Role})
		s.c.meterUp()
		s.apply(s.core.Start())
	case readerDone:
		s.readerDone(m)
	case writerDone:
		s.feed(&core.WriteFailed{Err: m.err})
	case shutdownReq:
		s.feed(&core.Shutdown{Epitaph: m.epitaph, Drain: m.drain})
	case hurry:
		s.feed(&core.Hurry{})
	case deadlineFired:
		s.feed(&core.DeadlineFired{Deadline: m.d, Gen: m.gen})
	case importShutdown:
		if ie := s.imports[m.hook.id]; ie != nil && ie.hook == m.hook {
			delete(s.imports, m.hook.id)
		}
		s.feed(&core.LocalRelease{Cap: core.Cap{Kind: core.CapImport, ID: m.hook.id}})
	case exportResolved:
		s.exportResolved(m.e)
	case inspectReq:
		m.reply <- s.inspect()
	case restPost:
		s.restArmed, s.restTimer = false, nil // fired: an idle connection keeps no timer for its next rest
		if s.core.Quiet() && s.restBack.due() {
			s.restNow()
			s.c.readerRest()
			s.restBack.rested(s.sinceStart())
		}
	case meterFlush:
		s.meterArmed = false
		s.recordMetered(false, true)
	case *actor.Terminated:
		if ch, ok := s.children[m.Who.Id]; ok {
			delete(s.children, m.Who.Id)
			delete(s.pids, ch)
			if s.closing {
				s.readEndFirst()
				s.feed(&core.ChildStopped{Child: ch}) // what the end's stop steps wait for
			}
		}
	case socketClosed:
		if r, ok := s.c.takeEnd(false); ok {
			s.socketClosed(r)
		}
	case *actor.Stopping:
		// Stopped from outside (the parent or the actor system): the same
		// end as Close, with an epitaph that says so. protoactor stops
		// the children meanwhile; the closer goroutine finishes what is
		// left once the actor has had its last turn.
		s.stopping = true
		s.c.ending.Store(true) // protoactor now waits for every child's Terminated
		if !s.core.Closed() {
			s.feed(&core.Stopped{})
		}
	case *actor.Stopped:
		// The last turn: every child has stopped.
		s.lastTurn = true
		s.c.in.lift() // what is left in the mailbox is never handled
		for len(s.children) > 0 {
			for id, ch := range s.children {
				delete(s.children, id)
				delete(s.pids, ch)
				s.feed(&core.ChildStopped{Child: ch})
			}
		}
		s.releaseDormant()
		// What the end of a turn does is done here, before the closer
		// may take the state over (takeEnd); the end of this turn then
		// leaves the state alone.
		s.flushOut()
		if s.meterTimer != nil {
			s.meterTimer.Stop()
		}
		if s.restTimer != nil {
			s.restTimer.Stop()
		}
		s.recordMetered(false, true)
		s.giveBack()
		s.gone = true
		if r, ok := s.c.takeEnd(true); ok {
			s.socketClosed(r)
			s.giveBack()
		}
	case *actor.Restarting:
	}
}

// frame is one frame from the peer: decoded, handed to the core. A
// panic while decoding or handling it is a bug of ours that the peer's
// bytes reached: it ends the connection as a protocol error wrapping
// errHandlerPanic, never the process.
func (s *state) frame(f Frame) {
	size := recvBytes(f)
	s.c.in.release(size) // the frame leaves the mailbox: the core's budgets hold it from here
	defer func() {
		if r := recover(); r != nil {
			s.c.opts.Logger.Error("capnp: panic while handling a message (a bug of vatactor's)", "peer", s.c.opts.Peer, "panic", r)
			s.later = s.later[:0]
			s.feed(&core.ReadEnded{Malformed: true, Err: fmt.Errorf("%w: %v", errHandlerPanic, r)})
		}
	}()
	if f.Sidecar.Has(wire.Feature_epitaphs) && !s.peerOurs {
		s.peerOurs = true
		s.core.SetPeerOurs()
	}
	s.traceFrameIn(f.Sidecar)
	if s.restBack.frame() {
		s.restBack.woke(s.sinceStart())
	}
	if fin := f.finish; fin.ok {
		if s.c.trace {
			s.c.opts.Logger.Debug("capnp recv", "peer", s.c.opts.Peer, "msg", fin.describe())
		}
		s.c.meterMessage(false, metering.KindFinish, finishFrameBytes)
		s.in.finish = core.Finish{QuestionID: fin.questionID, ReleaseResultCaps: fin.releaseResultCaps}
		s.in.recv = core.Received{Msg: &s.in.finish}
		s.feed(&s.in.recv)
		return
	}
	m, err := s.decode(f.Msg, f.Sidecar)
	if err != nil {
		f.Msg.Release()
		s.feed(&core.ReadEnded{Malformed: true, Err: err})
		return
	}
	s.c.meterMessage(false, kindOf(m), size)
	if _, ok := m.(*core.Abort); ok {
		s.peerEnding()
	}
	s.in.recv = core.Received{Msg: m}
	s.feed(&s.in.recv)
}

// readerDone: the reader's RecvFrame failed.
func (s *state) readerDone(rd readerDone) {
	err := rd.err
	if s.readEndFed {
		return // fed already, from Conn.readEnded
	}
	s.readEndFed = true
	switch reason := classifyReadError(err, false).(type) {
	case supervisor.ProtocolError:
		s.feed(&core.ReadEnded{Malformed: true, Err: reason.Err})
	case supervisor.PeerEOF:
		s.traceEOFReceived(rd.at)
		s.feed(&core.ReadEnded{EOF: true})
	default:
		s.feed(&core.ReadEnded{Err: err})
	}
}

// apply carries out the core's outputs, in order, but for one thing: a
// question's actor is spawned after the frames that follow its SpawnChild
// (its Call) are sent, before any other output (spawnQuestions). Spawning
// costs a few microseconds; the Call is written first, and the actor is
// there long before the Return can be read, which a later turn of this
// actor does.
func (s *state) apply(out []core.Output) {
	for _, o := range out {
		if s.c.trace {
			s.traceOutput(o)
		}
		if len(s.unspawned) > 0 {
			if _, isSend := o.(*core.Send); !isSend {
				s.spawnQuestions()
			}
		}
		switch o := o.(type) {
		case *core.Send:
			s.send(o.Msg)
		case *core.Deliver:
			s.deliver(*o)
		case *core.AnswerDone:
			s.answerDone(o.Answer)
		case *core.Settle:
			s.settle(*o)
		default:
			s.applyRare(o)
		}
	}
	s.spawnQuestions()
}

// traceOutput logs an output of the core at debug level.
//
//go:noinline
func (s *state) traceOutput(o core.Output) {
	if _, isLog := o.(*core.Log); !isLog {
		s.c.opts.Logger.Debug("capnp", "peer", s.c.opts.Peer, "out", core.Describe(o))
	}
}

// applyRare is apply for every output but those of a call's usual path:
// kept out of apply, whose frame is on the stack of every call a reader
// handles in place.
//
//go:noinline
func (s *state) applyRare(o core.Output) {
	switch o := o.(type) {
	case *core.CancelAnswer:
		if a := s.answers.At(o.Answer); a != nil {
			a.span.AddEvent("canceled by the caller")
			a.ctx.cancel()
		}
	case *core.Redirect:
		s.redirect(*o)
	case *core.ImportResolved:
		s.importResolved(o.ID, o.To)
	case *core.SpawnChild:
		if o.Child.Kind == core.QuestionChild {
			s.questionOnWire(o.Child)
			return
		}
		s.spawn(o.Child)
	case *core.StopChild:
		s.stopChild(o.Child)
	case *core.Arm:
		s.arm(*o)
	case *core.Closing:
		s.closingStarts()
	case *core.CloseSocket:
		s.closeSocket(o.Hard)
	case *core.Emit:
		s.event(o.Event)
	case *core.Log:
		s.c.opts.Logger.Log(nil, o.Level, o.Msg, append([]any{"peer", s.c.opts.Peer}, o.Args...)...)
	}
}

// arm sets the timer of a deadline; the newest replaces the last.
func (s *state) arm(a core.Arm) {
	if t := s.timers[a.Deadline]; t != nil {
		t.Stop()
	}
	d, gen := a.Deadline, a.Gen
	s.timers[d] = time.AfterFunc(time.Until(a.At), func() { s.c.postInternal(deadlineFired{d: d, gen: gen}) })
}

// closingStarts: from now on posts fail, callers get disconnected.
func (s *state) closingStarts() {
	s.closing = true
	c := s.c
	c.ending.Store(true)
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.in.lift() // the reader now discards what it reads: nothing more queues
	// The actors of the questions still alive: the end stops them and
	// waits for their Terminated. The parked ones serve none.
	s.stopParked()
	for _, q := range s.calls {
		if a := q.actor; a != nil {
			ch := core.Child{Kind: core.QuestionChild, ID: q.id, Call: q.call}
			peakmap.Set(&s.children, a.pid.Id, ch)
			peakmap.Set(&s.pids, ch, a.pid)
			s.peaks.children.Note(len(s.children))
			s.peaks.pids.Note(len(s.pids))
		}
	}
	s.traceShutdownBegin()
}

// questionOnWire: a local call has its id on the wire (the core's
// SpawnChild); it gets its actor once the frames after it are sent
// (spawnQuestions).
func (s *state) questionOnWire(ch core.Child) {
	q := s.calls[ch.Call]
	if q == nil {
		return
	}
	q.id = ch.ID
	peakmap.Set(&s.byQID, ch.ID, q)
	s.peaks.byQID.Note(len(s.byQID))
	s.unspawned = append(s.unspawned, q)
}

// spawnQuestions gives an actor to the questions put on the wire
// (questionOnWire) since the last call. Only Sends run in between (apply
// calls this before any other output), so none of them can have been
// retired. Their actors' Terminated matters only to the end, which names
// the actors of its questions then (closingStarts): none in the maps now.
func (s *state) spawnQuestions() {
	for i, q := range s.unspawned {
		s.unspawned[i] = nil
		q.actor = s.takeQuestionActor(q)
	}
	s.unspawned = s.unspawned[:0]
}

// maxParked is how many question actors a connection keeps parked; the
// ones past it stop as their question is retired.
const maxParked = 64

// takeQuestionActor is an actor for q: a parked one, else a new one.
func (s *state) takeQuestionActor(q *question) *questionActor {
	for n := len(s.parked); n > 0; n = len(s.parked) {
		a := s.parked[n-1]
		s.parked[n-1] = nil
		s.parked = s.parked[:n-1]
		if a.bind(q) {
			return a
		}
	}
	a := &questionActor{}
	a.serving.Store(q)
	a.pid = s.spawnChild(a, &a.mbox)
	s.c.questionActors.spawned.Add(1)
	return a
}

// parkQuestionActor: a, the actor of q, is done with it (q has its Return
// and its Finish; a settles q's outcome, if it has not yet, before it
// settles its next question's).
func (s *state) parkQuestionActor(a *questionActor, q *question) {
	a.serving.CompareAndSwap(q, nil) // keeps q alive no longer; fails once a has stopped
	switch {
	case a.serving.Load() == stoppedServing:
	case len(s.parked) < maxParked && !s.closing:
		s.parked = append(s.parked, a)
	default:
		a.mbox.PostSystemMessage(stopQuestion)
	}
}

// stopParked stops the parked question actors.
func (s *state) stopParked() {
	for i, a := range s.parked {
		s.parked[i] = nil
		a.mbox.PostSystemMessage(stopQuestion)
	}
	s.c.questionActors.stoppedParked.Add(int64(len(s.parked)))
	s.parked = nil
}

// spawn starts an export. A promise's actor is spawned now (it waits for
// the promise to resolve); any other export's is spawned when it stops
// (wake): until then it is dormant, its actor's work (releasing our
// reference, outside the connection's turn) still to come.
func (s *state) spawn(ch core.Child) {
	e := &export{c: s.c, id: ch.ID, ref: ch.Ref}
	var l *localCap
	if ch.Ref != 0 {
		l = s.locals.At(ch.Ref)
	}
	if l != nil {
		l.exports++
		snap := l.client.Snapshot()
		e.promise = snap.IsPromise()
		snap.Release()
	}
	e.span = s.startExportSpan(e)
	if e.promise || l == nil || l.dormant != nil { // (one dormant export a capability)
		if l != nil {
			e.client = l.client.AddRef()
		}
		s.wake(ch, e)
		return
	}
	l.dormant = e // its reference is taken as it wakes (takeDormant)
}

// takeDormant takes l's dormant export if it is export id (nil: it is
// not), giving it its own reference to the capability, for its actor to
// release.
func takeDormant(l *localCap, id uint32) *export {
	e := l.dormant
	if e == nil || e.id != id {
		return nil
	}
	l.dormant = nil
	e.client = l.client.AddRef()
	return e
}

// wake spawns the actor of export e, the child ch.
func (s *state) wake(ch core.Child, e *export) {
	e.mbox = new(mailbox.Mailbox)
	pid := s.spawnChild(e, e.mbox)
	peakmap.Set(&s.children, pid.Id, ch)
	peakmap.Set(&s.pids, ch, pid)
	s.peaks.children.Note(len(s.children))
	s.peaks.pids.Note(len(s.pids))
}

// releaseDormant ends the exports still dormant at the actor's last turn
// (protoactor stopped it before the core's end reached them): a dormant
// export holds no reference of its own, so what its actor's Stopping
// would have done is only to end its span; the core is told they stopped.
func (s *state) releaseDormant() {
	for _, l := range s.locals.All() {
		if e := l.dormant; e != nil {
			l.dormant = nil
			e.end()
			s.feed(&core.ChildStopped{Child: e.child()})
		}
	}
}

// stopDormant stops export e, which has no actor: its actor is spawned to
// stop (it releases our reference outside this turn) or, in the actor's
// last turn, when no child can be spawned, e is released here.
func (s *state) stopDormant(e *export) {
	ch := e.child()
	if s.lastTurn {
		e.end()
		s.later = append(s.later, &core.ChildStopped{Child: ch})
		return
	}
	s.wake(ch, e)
	s.ctx.Stop(s.pids[ch])
}

// stopQuestion is the Stop posted to a question actor's mailbox: what
// ctx.Stop does, without the registry lookup; protoactor marks the
// process dead as it stops.
var stopQuestion = &actor.Stop{}

// stopChild stops a question or export actor; its Terminated is the
// core's ChildStopped.
func (s *state) stopChild(ch core.Child) {
	switch ch.Kind {
	case core.QuestionChild:
		if q := s.calls[ch.Call]; q != nil {
			s.retire(q)
			if s.pids[ch] == nil && q.actor != nil {
				s.parkQuestionActor(q.actor, q)
				return
			}
		}
	case core.ExportChild:
		var e *export // ch, if it is dormant
		if l := s.locals.At(ch.Ref); l != nil && ch.Ref != 0 {
			e = takeDormant(l, ch.ID)
			if l.exports--; l.exports == 0 && !l.pinned {
				s.dropLocal(ch.Ref, l)
			}
		}
		if e != nil {
			s.stopDormant(e)
			return
		}
	}
	if pid := s.pids[ch]; pid != nil {
		s.ctx.Stop(pid)
	}
}

// event carries out a lifecycle event of the core.
func (s *state) event(e core.Event) {
	switch e := e.(type) {
	case *core.Ending:
		c := s.c
		c.mu.Lock()
		if c.reason == nil {
			c.reason = e.Reason
		}
		c.mu.Unlock()
	case *core.Busy:
		s.traceEvent("busy", statsAttributes(e.Stats)...)
		s.emit(Busy{Conn: s.c, Stats: e.Stats})
	case *core.Idle:
		s.traceEvent("idle")
		s.emit(Idle{Conn: s.c})
	case *core.PhaseStarted:
		if !closerPhase(e.Phase) {
			s.tracePhaseStart(e.Phase, e.At)
		}
	case *core.Refused:
		s.c.meterRefused(string(e.Why))
	case *core.PhaseDone:
		s.c.meterPhase(e.Report)
		if !closerPhase(e.Report.Phase) {
			s.tracePhase(e.Report) // the closer's steps made their spans as they ran
		}
		s.emit(PhaseDone{Conn: s.c, Phase: e.Report})
	case *core.ActorStopped:
		ev := ActorStopped{Conn: s.c, Kind: actorKind(e.Child.Kind), ID: e.Child.ID, TimedOut: e.TimedOut}
		s.traceActorStopped(ev)
		s.emit(ev)
	case *core.EpitaphSent:
		s.traceEvent("epitaph.sent", epitaphAttributes(e.Epitaph)...)
	case *core.EpitaphReceived:
		s.peerEnding()
		s.traceEvent("epitaph.received", epitaphAttributes(e.Epitaph)...)
	case *core.Down:
		s.down(e.Report)
	}
}

// peerEnding tells the stream that the peer is ending (streamWriter).
func (s *state) peerEnding() {
	if s.c.stream != nil {
		s.c.stream.peerEnding()
	}
}

func closerPhase(p Phase) bool {
	return p == PhaseCloseWrite || p == PhaseLinger || p == PhaseCloseSocket
}

func actorKind(k core.ChildKind) ActorKind {
	if k == core.QuestionChild {
		return QuestionActor
	}
	return ExportActor
}

// closeSocket: everything is queued; the closer goroutine flushes,
// half-closes, lingers and closes the socket, then reports socketClosed.
func (s *state) closeSocket(hard bool) {
	for _, t := range s.timers {
		if t != nil {
			t.Stop()
		}
	}
	for r, l := range s.locals.All() {
		if l.dormant != nil { // the core's end did not stop it
			s.stopDormant(takeDormant(l, l.dormant.id))
		}
		s.dropLocal(r, l) // the export actors hold their own references
	}
	s.c.out.close(!hard)
	st := s.closerTracer()
	go s.c.closer(s, hard, st)
}

// closer is the goroutine of closeWrite, linger and closeSocket. It hands
// the result to the actor or, when protoactor has stopped the actor
// meanwhile, ends the connection itself.
func (c *Conn) closer(s *state, hard bool, st *stepTracer) {
	m := c.closeSocket(hard, st)
	c.endMu.Lock()
	c.endResult = &m
	mine := c.actorGone && !c.ended
	c.ended = c.ended || mine
	c.endMu.Unlock()
	if mine {
		s.socketClosed(m) // the actor is gone: s is this goroutine's now
		s.giveBack()
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

// socketClosed: the closer has finished; the core reports the end (Down).
func (s *state) socketClosed(m socketResult) {
	s.last = &m
	s.feed(&core.SocketClosed{Steps: []PhaseReport{m.closeWriteReport(), m.lingerReport(), m.closeSocketReport()}})
}

// down: the connection has ended. It runs on the actor or, once
// protoactor has stopped the actor, on the closer goroutine.
func (s *state) down(r core.Report) {
	c := s.c
	rep := Report{Reason: r.Reason, Peer: r.Peer, Stats: r.Stats, Phases: r.Phases, Refused: r.Refused,
		Canceled: r.Canceled, Abandoned: r.Abandoned, StuckActors: r.StuckActors, EpitaphSent: r.EpitaphSent,
		Lifetime: time.Since(c.start)}
	if rd := c.readEnded.Load(); rd != nil {
		rep.ReadEnd = rd.err
	}
	c.mu.Lock()
	c.report = &rep
	c.mu.Unlock()
	c.publishStats(Stats{})
	var last socketResult // zero: the socket was not closed by the end's steps
	if s.last != nil {
		last = *s.last
	}
	s.traceDown(rep, last)
	s.recordMetered(false, true) // what was measured is recorded before Down says the connection has ended
	c.meterDown(rep)
	s.emit(Down{Conn: c, Report: rep})
	close(c.done)
	if !s.stopping && s.ctx != nil {
		s.ctx.Stop(s.ctx.Self())
	}
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

// send encodes an outgoing message and queues it; the writer releases it
// once written.
func (s *state) send(m core.Message) {
	msg, owner, sc, err := s.encode(m)
	if err != nil {
		s.c.opts.Logger.Error("capnp: cannot encode a message (a bug of vatactor's)", "peer", s.c.opts.Peer, "msg", m.String(), "err", err)
		return
	}
	if s.c.meters != nil {
		n, _ := msg.TotalSize()
		s.c.meterMessage(true, kindOf(m), int64(n))
	}
	if d := lazy(m); d > 0 && s.sidecarSent {
		s.c.out.pushLazy(Frame{Msg: msg}, d)
		return
	}
	s.queue(msg, owner, sc)
}

// lazy is how long m may wait for the next frame when nobody waits for
// it (0: it goes at once): a Finish after its Return or a Release,
// lazyFlushDelay; a Finish the core sends for an answer nobody has
// released yet, earlyFinishDelay.
func lazy(m core.Message) time.Duration {
	switch m := m.(type) {
	case *core.Finish:
		switch {
		case m.ReleaseResultCaps:
			return 0
		case m.Early:
			return earlyFinishDelay
		}
		return lazyFlushDelay
	case *core.Release:
		return lazyFlushDelay
	}
	return 0
}

// earlyFinishDelay bounds how long an early Finish waits for company.
const earlyFinishDelay = 20 * time.Millisecond

// queue puts msg in the send queue with sc, the sidecar of a call (nil:
// none). owner: the answer msg is the Return of, which keeps it until
// both it is written and the answer is dropped. The first frame of the
// connection carries our sidecar, which tells the peer that we read
// epitaphs and names our connection span.
func (s *state) queue(msg *capnp.Message, owner *answer, sc *Sidecar) {
	if !s.sidecarSent {
		s.sidecarSent = true
		sc = s.firstSidecar(sc)
	}
	s.c.out.pushQuiet(Frame{Msg: msg, Sidecar: sc}, owner)
	s.unsent = true
	s.flushOut() // at once when no other message waits: latency first
}

// flushOut wakes the writer for what has been queued, unless more
// messages wait: the last one of a run wakes it once for all (Receive
// calls this as it returns).
func (s *state) flushOut() (wrote bool) {
	if s.unsent && s.c.mailbox.UserMessageCount() == 0 {
		s.unsent = false
		s.c.out.kick()
		return true
	}
	return false
}

var errNotOurs = errors.New("not a capability of this connection")

// errHandlerPanic wraps a panic recovered while handling a peer's message.
var errHandlerPanic = errors.New("internal error while handling a message")

var _ = slog.LevelDebug
