package conn

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
	"go.opentelemetry.io/otel/trace"

	"github.com/vatactor/vatactor/conn/core"
	"github.com/vatactor/vatactor/tracing"
)

// An answer is one of the peer's Bootstraps or Calls as the shell holds
// it: the call's context, span and message, and, once delivered, the
// call's capnp.Returner. The core decides what becomes of the call; the
// answer lives until the core is done with it (AnswerDone).
//
// Calls are delivered by the connection actor, in the order the core
// lets them through, straight into the target capability's hook (a
// server's queue, an actor's mailbox, another connection): delivery
// never blocks.
type answer struct {
	c      *Conn
	id     uint32
	ctx    callCtx            // the callee's: carries span
	span   trace.Span         // the server span; ended when the Return is queued
	method capnp.Method       // named when the span is
	names  *tracing.CallNames // the span's names; nil: no span
	start  time.Duration      // for its duration (meterNow; 0: not measured)

	args         *capnp.Message // the Call, freed by releaseArgs (or when the answer is done)
	in           inPayload      // its params' content, as the core names it
	outr         outReturn      // its results' content, as the core names it
	argsReleased atomic.Bool
	delivered    bool // the callee has the args
	returned     bool // the callee has returned and the core been told (the callee's fields are ours)

	// Written by the callee (any goroutine) before Return.
	msg     *capnp.Message // the Return message, once results are allocated
	ret     rpccp.Return
	results capnp.Struct
	err     error

	retState atomic.Int32                  // retWritten | retDropped | retReleased
	retMsg   atomic.Pointer[capnp.Message] // the queued Return, freed once retState is retAll
}

// answerReturned: the callee called Return.
type answerReturned struct{ a *answer }

// releaseArgs is the call's capnp.Recv.ReleaseArgs: the callee (or the
// connection, when the call never reached one) frees the Call once.
func (a *answer) releaseArgs() {
	if a.argsReleased.CompareAndSwap(false, true) && a.args != nil {
		a.args.Release()
	}
}

// AllocResults implements capnp.Returner.
func (a *answer) AllocResults(sz capnp.ObjectSize) (capnp.Struct, error) {
	msg, m := newMessage()
	ret, err := m.NewReturn()
	if err != nil {
		msg.Release()
		return capnp.Struct{}, err
	}
	ret.SetAnswerId(a.id)
	ret.SetReleaseParamCaps(false) // we send Release for param caps ourselves
	payload, err := ret.NewResults()
	if err != nil {
		msg.Release()
		return capnp.Struct{}, err
	}
	st, err := capnp.NewStruct(payload.Segment(), sz)
	if err == nil {
		err = payload.SetContent(st.ToPtr())
	}
	if err != nil {
		msg.Release()
		return capnp.Struct{}, err
	}
	a.msg, a.ret, a.results = msg, ret, st
	return st, nil
}

// PrepareReturn implements capnp.Returner. It runs on the callee's
// goroutine before the results are shared, so the cap descriptor list is
// allocated here: the connection later fills it in place, and the message
// is never grown while others read it.
func (a *answer) PrepareReturn(e error) {
	a.err = e
	if e == nil && a.msg != nil {
		if n := a.msg.CapTable().Len(); n > 0 {
			payload, _ := a.ret.Results()
			if _, err := payload.NewCapTable(int32(n)); err != nil {
				a.err = err
			}
		}
	}
}

// Return implements capnp.Returner: the connection sends the Return.
func (a *answer) Return() {
	post := a.c.post
	if a.c.delivered.Add(-1) <= 0 {
		post = a.c.postHere // no other call runs: nothing to batch this Return with
	}
	if post(answerReturned{a: a}) != nil && a.msg != nil {
		a.msg.Release()
	}
}

// ReleaseResults implements capnp.Returner: the callee is done with the
// results. They stay until the peer's Finish too (and the write).
func (a *answer) ReleaseResults() { a.retDone(retReleased) }

// newAnswer is the shell's side of an incoming Call or Bootstrap, made as
// the frame is decoded.
func (s *state) newAnswer(id uint32, m capnp.Method, bootstrap bool, sc *Sidecar) *answer {
	if old := s.answers.At(id); old != nil {
		return old // a duplicate id: the core ends the connection
	}
	a := &answer{c: s.c, id: id, start: s.c.callStart(true)}
	a.ctx.peer = s.c.opts.PeerInfo
	if sc != nil && sc.Timeout > 0 {
		a.ctx.expireAt(time.Now().Add(sc.Timeout)) // the caller's deadline, from when its Call was read
	}
	s.startAnswerSpan(a, m, bootstrap, sc)
	s.answers.Set(id, a)
	return a
}

// deliver hands the peer's call to a capability of ours.
func (s *state) deliver(o core.Deliver) {
	a := s.answers.At(o.Answer)
	if a == nil {
		s.releaseCaps(o.Params.CapTable)
		return
	}
	in, _ := o.Params.Content.(*inPayload)
	l := s.locals.At(o.To.Ref)
	if l == nil || in == nil {
		s.releaseCaps(o.Params.CapTable)
		s.later = append(s.later, &core.Returned{Answer: a.id, Err: &core.Error{Type: core.ExcFailed, Prefix: "capnp",
			Cause: errCapGone}})
		return
	}
	if a.ctx.expired() {
		// It waited (behind an embargo, a pipelined answer, a busy
		// actor) past its caller's deadline: it does not run.
		s.releaseCaps(o.Params.CapTable)
		s.later = append(s.later, &core.Returned{Answer: a.id, Err: &core.Error{Type: core.ExcFailed, Prefix: "capnp",
			Cause: errExpired}})
		return
	}
	in.msg.CapTable().Reset(s.clients(o.Params.CapTable)...)
	a.delivered = true
	s.c.delivered.Add(1)
	l.client.RecvCall(&a.ctx, capnp.Recv{Method: a.method, Args: in.content.Struct(), ReleaseArgs: a.releaseArgs, Returner: a})
}

// errExpired answers a call whose caller's deadline passed before it ran.
var errExpired = fmt.Errorf("%w: the call waited past its caller's deadline and did not run", context.DeadlineExceeded)

// answerReturned: the callee has returned; the core is told, with the
// capabilities of its results as it names them.
func (s *state) answerReturned(a *answer) {
	if s.answers.At(a.id) != a || s.closing {
		if a.msg != nil {
			a.msg.Release() // abandoned: nobody sends it
		}
		return
	}
	a.returned = true
	if a.err != nil {
		s.feed(&core.Returned{Answer: a.id, Err: coreError(a.err)})
		return
	}
	if a.msg == nil {
		s.feed(&core.Returned{Answer: a.id, Results: &core.Payload{}})
		return
	}
	t := s.storage()
	caps := s.describeAll(t.caps, a.msg.CapTable())
	if caps != nil {
		t.caps = caps // for the next Return
	}
	size, _ := a.msg.TotalSize()
	a.outr.a = a
	s.in.results = core.Payload{Content: &a.outr, CapTable: caps, Size: int(size)}
	s.in.returned = core.Returned{Answer: a.id, Results: &s.in.results}
	s.feed(&s.in.returned)
}

// answerDone: the core is done with the answer; what is left of it goes.
func (s *state) answerDone(id uint32) {
	a := s.answers.At(id)
	if a == nil {
		return
	}
	s.answers.Delete(id)
	if !a.delivered {
		a.releaseArgs()
	}
	a.ctx.cancel()
	a.retDone(retDropped)
}

// Bits of answer.retState: who is done with the queued Return. The last
// of the writer (written), the actor (the core is done: dropped) and the
// callee (ReleaseResults, as capnp.Returner promises it) frees it. A
// Return that is never queued, or whose callee never releases it, is left
// to the garbage collector.
const (
	retWritten = 1 << iota
	retDropped
	retReleased
	retAll = retWritten | retDropped | retReleased
)

// retDone records that one party is done with a's queued Return; the last
// one frees it.
func (a *answer) retDone(bit int32) {
	if old := a.retState.Or(bit); old|bit == retAll && old != retAll {
		if m := a.retMsg.Load(); m != nil {
			recycleMessage(m)
		}
	}
}

// returnWritten is called by the writer once a's Return is written.
func (a *answer) returnWritten() { a.retDone(retWritten) }
