package conn

import (
	"errors"
	"fmt"
	"io"
	"time"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
	"github.com/asynkron/protoactor-go/actor"
	"go.opentelemetry.io/otel/attribute"

	"github.com/vatactor/vatactor/conn/wire"
	"github.com/vatactor/vatactor/internal/idtable"
	"github.com/vatactor/vatactor/internal/mailbox"
	"github.com/vatactor/vatactor/supervisor"
)

// state is the connection actor: the four tables and embargoes, touched
// by no goroutine but the actor's.
type state struct {
	c   *Conn
	ctx actor.Context // valid only inside Receive

	questions idtable.Table[*question]
	answers   map[uint32]*answer
	exports   idtable.Table[*export]
	exportKey map[any]uint32 // identity of an exported capability → export id
	imports   map[uint32]*importEntry
	embargoes idtable.Table[*embargo]

	byAnswer map[*capnp.Answer]*question // for receiverAnswer descriptors

	running     int    // the peer's calls not yet returned (Options.MaxAnswers)
	callBytes   int64  // their Call messages (Limits.MaxCallBytes)
	answerBytes int64  // the Returns held until their Finish (Limits.MaxAnswerBytes)
	seq         uint64 // creation order of questions and exports

	// childProps spawn every question and export actor: made once, its
	// producer hands over spawning (see spawnChild).
	childProps *actor.Props
	spawning   actor.Actor

	unsent bool // frames queued since the writer was last kicked (flushOut)

	// Lifecycle.
	phase            phase
	peerOurs         bool                // the peer sent a sidecar that reads epitaphs
	sidecarSent      bool                // our first frame carried our sidecar
	peerGone         bool                // the peer ended (or the socket failed): write nothing but FIN
	peerNotProcessed *supervisor.Epitaph // the peer's epitaph: its unanswered calls were never processed
	epitaph          supervisor.Epitaph  // ours, sent by sendEpitaph
	abortWith        error               // a protocol error, sent instead of the epitaph
	report           Report
	drainStart       time.Time
	drainTimer       *time.Timer
	idle             bool
	idleGen          uint64
	idleTimer        *time.Timer
	stopping         bool      // protoactor is stopping the actor: Down goes out from the closer if need be
	hard             bool      // the end skips the flush and the linger (the socket failed)
	wait             *stopWait // the stop step running now
	waitGen          uint64
	hurried          bool       // the Shutdown's context has ended: no more waits
	parent           *actor.PID // the actor's parent, for events (also after the actor's last turn)
	tr               connTrace
}

func newState(c *Conn) *state {
	s := &state{
		c:         c,
		answers:   make(map[uint32]*answer),
		exportKey: make(map[any]uint32),
		imports:   make(map[uint32]*importEntry),
		byAnswer:  make(map[*capnp.Answer]*question),
		idle:      true,
	}
	s.childProps = actor.PropsFromProducer(func() actor.Actor {
		a := s.spawning
		s.spawning = nil
		return a
	}, actor.WithMailbox(mailbox.Producer), actor.WithDispatcher(mailbox.Pool))
	return s
}

// spawnChild starts a (question or export) actor as a child of the
// connection, with no allocation beyond protoactor's own for the process.
// The producer runs inside Spawn, on the connection's goroutine; it runs
// once per child, because a child that panics is stopped, never
// restarted (stopChildren).
func (s *state) spawnChild(a actor.Actor) *actor.PID {
	s.spawning = a
	return s.ctx.Spawn(s.childProps)
}

// stopChildren is the connection actor's supervisor strategy: a question
// or export actor that panics is stopped, which settles its caller with a
// disconnected error or releases its capability.
var stopChildren = actor.NewOneForOneStrategy(0, 0, func(any) actor.Directive { return actor.StopDirective })

// Receive is the one way in: every input of the connection is a message.
func (s *state) Receive(ctx actor.Context) {
	s.ctx = ctx
	defer func() { s.ctx = nil; s.flushOut() }()
	msg := ctx.Message()
	if s.phase.closing() {
		s.receiveClosing(msg)
		return
	}
	switch m := msg.(type) {
	case *actor.Started:
		s.parent = ctx.Parent()
		s.c.pid.Store(ctx.Self())
		s.c.reader.Add(1)
		go s.c.readLoop()
		if bs := s.c.opts.Bootstrap; bs.IsValid() {
			s.c.opts.Bootstrap = bs.AddRef()
		}
		s.traceStarted()
		s.emit(Up{Conn: s.c, Peer: s.c.opts.Peer, Role: s.c.opts.Role})
		s.armIdle()
	case *capnp.Message:
		s.handleFrame(Frame{Msg: m})
	case finishFrame:
		s.handleFrame(Frame{finish: m})
	case inFrame:
		s.handleFrame(m.f)
	case readerDone:
		switch reason := classifyReadError(m.err, s.stats().Idle()).(type) {
		case supervisor.ProtocolError:
			s.protocolError(reason.Err) // a bad frame: the peer is told why
		case supervisor.PeerEOF:
			s.traceEOFReceived()
			s.peerEnded(reason)
		default:
			s.transportFailed(m.err)
		}
	case writerDone:
		s.transportFailed(m.err)
	case shutdownReq:
		s.shutdown(m.epitaph, m.drain)
	case hurry, drainDeadline:
		if s.phase == phaseDraining {
			s.endDrain(true, "")
		}
	case idleDeadline:
		s.idleExpired(m.gen)
	case callOut:
		if s.phase == phaseDraining {
			s.rejectUnsent(m.q, errLocalDraining())
			break
		}
		s.sendCall(m.q)
	case cancelQuestion:
		s.cancelQuestion(m.q, m.err)
	case releaseQuestion:
		s.releaseQuestion(m.q)
	case importShutdown:
		s.importShutdown(m.hook)
	case answerReturned:
		s.answerReturned(m.a)
	case exportResolved:
		s.exportResolved(m.e)
	case disembargoReply:
		s.send(m.msg)
	case *actor.Stopping:
		// Stopped from outside (the parent or the actor system) before
		// the connection ended: the same end as Close, with an epitaph
		// that says so. protoactor stops the children meanwhile; the
		// actor keeps its turns until they have all stopped, and the
		// closer goroutine finishes what is left after that.
		ep := supervisor.Epitaph{Code: supervisor.Canceled, Message: "connection actor stopped"}
		s.stopping = true
		s.record(supervisor.LocalShutdown{Epitaph: ep})
		if s.phase == phaseDraining {
			s.endDrain(true, "connection actor stopped") // the drain's epitaph stays
			return
		}
		s.epitaph = ep
		s.skipped(PhaseDrain, "connection actor stopped")
		s.close(false)
		return
	case *actor.Stopped, *actor.Restarting, *actor.Terminated:
	}
	if s.phase == phaseDraining {
		if q, a := s.inFlight(); q+a == 0 {
			s.endDrain(false, "")
		}
	}
	if !s.phase.closing() {
		st := s.stats()
		s.c.publishStats(st)
		s.noteIdle(st)
	}
}

// receiveClosing handles what arrives once the connection's end has
// begun: the stop steps' Terminated messages and deadlines, the closer's
// result, and what is left to free.
func (s *state) receiveClosing(msg any) {
	switch m := msg.(type) {
	case *actor.Terminated:
		s.childTerminated(m.Who)
	case stopDeadline:
		if s.wait != nil && s.wait.current != nil && s.wait.gen == m.gen {
			s.stopTimedOut(false)
		}
	case hurry:
		s.hurried = true
		if s.wait != nil {
			s.stopTimedOut(true)
		}
	case socketClosed:
		if r, ok := s.c.takeEnd(false); ok {
			s.socketClosed(r)
		}
	case *actor.Stopping:
		s.stopping = true // protoactor stops the children; the steps go on
	case *actor.Stopped:
		// The last turn: every child has stopped, so a step still
		// waiting has nothing left to wait for.
		for s.wait != nil {
			w := s.wait
			w.live = map[string]bool{}
			if cur := w.current; cur != nil {
				w.current = nil
				s.actorStopped(*cur, false)
			}
			s.stopNext()
		}
		if r, ok := s.c.takeEnd(true); ok {
			s.socketClosed(r)
		}
	case readerDone:
		// The peer has gone while we end (EOF, or the socket failed): what
		// is left of the end writes nothing more to it, no epitaph after
		// its EOF (the simulation of conn/core found this one).
		s.peerGone = true
		if errors.Is(m.err, io.EOF) {
			s.traceEOFReceived()
			s.record(supervisor.PeerEOF{Idle: s.stats().Idle()})
		} else {
			s.hard = true
		}
	case writerDone:
		s.peerGone, s.hard = true, true
	case *actor.Restarting:
	default:
		s.afterClose(msg)
	}
}

func (s *state) stats() Stats {
	return Stats{
		Questions: s.questions.Len(),
		Answers:   len(s.answers),
		Exports:   s.exports.Len(),
		Imports:   len(s.imports),
		Embargoes: s.embargoes.Len(),
	}
}

// send queues an outgoing message; the writer releases it once written.
func (s *state) send(msg *capnp.Message) { s.queue(msg, nil, nil) }

// queue puts msg in the send queue with sc, the sidecar of a call (nil:
// none). owner: the answer msg is the Return of, which keeps it until
// both it is written and the answer is dropped (nil: the writer frees msg
// once written). The first
// frame of the connection carries our sidecar, which tells the peer that
// we read epitaphs and names our connection span.
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
func (s *state) flushOut() {
	if s.unsent && s.c.mailbox.UserMessageCount() == 0 {
		s.unsent = false
		s.c.out.kick()
	}
}

// sendLazy queues a message nobody waits for (a Finish after its Return,
// a Release): it goes out with the next frame, or after lazyFlushDelay.
func (s *state) sendLazy(msg *capnp.Message) {
	if !s.sidecarSent {
		s.send(msg)
		return
	}
	s.c.out.pushLazy(Frame{Msg: msg})
}

// handleFrame dispatches one incoming message by its type. A panic while
// handling it is a bug of ours that the peer's bytes reached: it ends the
// connection as a protocol error wrapping errHandlerPanic, never the
// process.
func (s *state) handleFrame(f Frame) {
	defer func() {
		if r := recover(); r != nil {
			s.c.opts.Logger.Error("capnp: panic while handling a message (a bug of vatactor's)", "peer", s.c.opts.Peer, "panic", r)
			s.protocolError(fmt.Errorf("%w: %v", errHandlerPanic, r))
		}
	}()
	msg := f.Msg
	if f.Sidecar.Has(wire.Feature_epitaphs) {
		s.peerOurs = true
	}
	s.traceFrameIn(f.Sidecar)
	if fin := f.finish; fin.ok {
		if s.c.trace {
			s.c.opts.Logger.Debug("capnp recv", "peer", s.c.opts.Peer, "msg", fin.describe())
		}
		if err := s.finish(fin.questionID, fin.releaseResultCaps); err != nil {
			s.protocolError(err)
		}
		return
	}
	m, err := rpccp.ReadRootMessage(msg)
	if err != nil {
		msg.Release()
		s.protocolError(fmt.Errorf("%w: %v", ErrMalformedFrame, err))
		return
	}
	if s.c.trace {
		s.c.opts.Logger.Debug("capnp recv", "peer", s.c.opts.Peer, "msg", DescribeMessage(m))
	}
	keep := false // handlers that hand msg on set this
	switch m.Which() {
	case rpccp.Message_Which_bootstrap:
		err = s.handleBootstrap(m, f.Sidecar)
	case rpccp.Message_Which_call:
		keep, err = s.handleCall(msg, m, f.Sidecar)
	case rpccp.Message_Which_return:
		keep, err = s.handleReturn(msg, m)
	case rpccp.Message_Which_finish:
		err = s.handleFinish(m)
	case rpccp.Message_Which_resolve:
		err = s.handleResolve(msg, m)
	case rpccp.Message_Which_release:
		err = s.handleRelease(m)
	case rpccp.Message_Which_disembargo:
		err = s.handleDisembargo(m)
	case rpccp.Message_Which_abort:
		s.handleAbort(m)
	case rpccp.Message_Which_unimplemented:
		err = s.handleUnimplemented(m)
	default:
		err = s.replyUnimplemented(m)
	}
	if !keep {
		msg.Release()
	}
	if err != nil {
		s.protocolError(err)
	}
}

// replyUnimplemented echoes a message we do not implement back to the
// peer inside an Unimplemented message, within MaxUnimplementedEcho: the
// copy may read no more than that (a small message can point at the same
// data many times), or the connection ends.
func (s *state) replyUnimplemented(m rpccp.Message) error {
	lim := s.c.opts.Limits.MaxUnimplementedEcho
	src := capnp.Struct(m).Message()
	if size, _ := src.TotalSize(); size > lim {
		return budgetErrorf("MaxUnimplementedEcho", int64(lim), "a message we do not implement (%v) of %d bytes", m.Which(), size)
	}
	src.ResetReadLimit(lim)
	out, om := newMessage()
	if err := om.SetUnimplemented(m); err != nil {
		out.Release()
		return budgetErrorf("MaxUnimplementedEcho", int64(lim), "a message we do not implement (%v) too large to echo: %v", m.Which(), err)
	}
	s.send(out)
	return nil
}

// handleAbort: the peer's last message. With an epitaph in its details it
// is a PeerEpitaph, otherwise a PeerAbort. It is never answered with an
// Abort.
func (s *state) handleAbort(m rpccp.Message) {
	e, err := m.Abort()
	if err != nil {
		s.peerEnded(supervisor.PeerAbort{Type: "failed", Reason: "(unreadable abort: " + err.Error() + ")"})
		return
	}
	if ep, ok, _ := epitaphOf(e, s.c.opts.Limits.MaxReasonLength); ok {
		s.traceEvent("epitaph.received", epitaphAttributes(ep)...)
		s.peerEnded(supervisor.PeerEpitaph{Epitaph: ep})
		return
	}
	reasonBytes, _ := e.ReasonBytes()
	reason := clip(reasonBytes, s.c.opts.Limits.MaxReasonLength)
	typ := exc.Type(e.Type()).String()
	s.traceEvent("abort.received", attribute.String("exception.type", typ), attribute.String("exception.message", reason))
	s.peerEnded(supervisor.PeerAbort{Type: typ, Reason: reason})
}

var errNotOurs = errors.New("not a capability of this connection")

// errHandlerPanic wraps a panic recovered while handling a peer's message.
var errHandlerPanic = errors.New("internal error while handling a message")
