package conn

import (
	"errors"
	"fmt"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
	"github.com/asynkron/protoactor-go/actor"

	"github.com/vatactor/vatactor/supervisor"
)

// state is the connection actor: the four tables and embargoes, touched
// by no goroutine but the actor's.
type state struct {
	c   *Conn
	ctx actor.Context // valid only inside Receive

	questions idTable[*question]
	answers   map[uint32]*answer
	exports   idTable[*export]
	exportKey map[any]uint32 // identity of an exported capability → export id
	imports   map[uint32]*importEntry
	embargoes idTable[*embargo]

	byAnswer map[*capnp.Answer]*question // for receiverAnswer descriptors

	ended bool
}

func newState(c *Conn) *state {
	return &state{
		c:         c,
		answers:   make(map[uint32]*answer),
		exportKey: make(map[any]uint32),
		imports:   make(map[uint32]*importEntry),
		byAnswer:  make(map[*capnp.Answer]*question),
	}
}

// Receive is the one way in: every input of the connection is a message.
func (s *state) Receive(ctx actor.Context) {
	s.ctx = ctx
	defer func() { s.ctx = nil }()
	switch m := ctx.Message().(type) {
	case *actor.Started:
		s.c.pid.Store(ctx.Self())
		s.c.reader.Add(1)
		s.c.writer.Add(1)
		go s.c.readLoop()
		go s.c.writeLoop()
		if bs := s.c.opts.Bootstrap; bs.IsValid() {
			s.c.opts.Bootstrap = bs.AddRef()
		}
	case inFrame:
		s.handleFrame(m.msg)
	case readerDone:
		reason := classifyReadError(m.err, s.stats().Idle())
		if pe, ok := reason.(supervisor.ProtocolError); ok {
			s.protocolError(pe.Err) // a bad frame: the peer is told why
		} else {
			s.end(reason)
		}
	case writerDone:
		s.end(supervisor.TransportError{Err: m.err})
	case closeNow:
		s.end(supervisor.LocalShutdown{Epitaph: supervisor.Epitaph{Code: supervisor.OK}})
	case callOut:
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
	case finalize:
		ctx.Stop(ctx.Self())
	case *actor.Stopping, *actor.Stopped, *actor.Restarting:
	}
	if !s.ended {
		st := s.stats()
		s.c.stats.Store(&st)
	}
}

func (s *state) stats() Stats {
	return Stats{
		Questions: s.questions.len(),
		Answers:   len(s.answers),
		Exports:   s.exports.len(),
		Imports:   len(s.imports),
		Embargoes: s.embargoes.len(),
	}
}

// send queues an outgoing message; the writer releases it once written.
func (s *state) send(msg *capnp.Message) { s.c.out.push(msg, false) }

// handleFrame dispatches one incoming message by its type.
func (s *state) handleFrame(msg *capnp.Message) {
	if s.ended {
		msg.Release()
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
		err = s.handleBootstrap(m)
	case rpccp.Message_Which_call:
		keep, err = s.handleCall(msg, m)
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
// peer inside an Unimplemented message.
func (s *state) replyUnimplemented(m rpccp.Message) error {
	out, om := newMessage()
	if err := om.SetUnimplemented(m); err != nil {
		out.Release()
		return fmt.Errorf("%w: copying unimplemented message: %v", ErrMalformedFrame, err)
	}
	s.send(out)
	return nil
}

func (s *state) handleAbort(m rpccp.Message) {
	e, err := m.Abort()
	reason := supervisor.PeerAbort{Type: "failed", Reason: "(unreadable abort)"}
	if err == nil {
		reason.Type = exc.Type(e.Type()).String()
		reason.Reason, _ = e.Reason()
	}
	s.end(reason)
}

// protocolError ends the connection with an Abort that names the problem.
func (s *state) protocolError(err error) {
	if s.ended {
		return
	}
	s.c.opts.Logger.Warn("capnp: protocol error, aborting connection", "peer", s.c.opts.Peer, "err", err)
	out, om := newMessage()
	if e, aerr := om.NewAbort(); aerr == nil {
		e.SetType(rpccp.Exception_Type_failed)
		_ = e.SetReason(err.Error())
		s.send(out)
	} else {
		out.Release()
	}
	s.end(supervisor.ProtocolError{Err: err})
}

// end records the connection's reason, fails everything in flight and
// stops the actor. The first reason wins.
func (s *state) end(reason supervisor.Reason) {
	if s.ended {
		return
	}
	s.ended = true
	c := s.c
	final := s.stats()

	c.mu.Lock()
	c.closed = true
	c.reason = reason
	c.mu.Unlock()
	c.stats.Store(&final)

	if reason.Expected() {
		c.opts.Logger.Debug("capnp: connection ended", "peer", c.opts.Peer, "reason", reason)
	} else {
		c.opts.Logger.Info("capnp: connection failed", "peer", c.opts.Peer, "reason", reason)
	}

	disc := c.errDisconnected()
	// Answers: cancel what runs, drop results.
	for id, a := range s.answers {
		a.cancel()
		if a.returned {
			s.dropAnswer(a)
		}
		delete(s.answers, id)
	}
	// Imports: promises learn they will never resolve.
	for id, ie := range s.imports {
		if ie.resolver != nil {
			ie.resolver.Reject(disc)
			ie.resolver = nil
		}
		delete(s.imports, id)
	}
	// Embargoes: calls queued behind them fail.
	s.embargoes.each(func(_ uint32, e *embargo) { e.resolver.Reject(disc) })
	s.embargoes = idTable[*embargo]{}
	// Exports: their actors stop with the connection and release their
	// capabilities then; the table is dropped now.
	s.exports = idTable[*export]{}
	s.exportKey = nil
	// Questions: their actors settle their promises with disc as they stop.
	s.questions = idTable[*question]{}
	s.byAnswer = nil
	if bs := c.opts.Bootstrap; bs.IsValid() {
		bs.Release()
	}

	// Flush what is queued (an Abort that names a protocol error), then
	// half-close unless the socket already failed; linger; close.
	_, transportFailed := reason.(supervisor.TransportError)
	c.out.close(!transportFailed)
	go c.closeSocket(transportFailed)

	if parent := s.ctx.Parent(); parent != nil {
		s.ctx.Send(parent, Down{Conn: c, Reason: reason, Stats: final})
	}
	s.ctx.Send(s.ctx.Self(), finalize{})
}

var errNotOurs = errors.New("not a capability of this connection")
