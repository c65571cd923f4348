package conn

import (
	"context"
	"fmt"
	"sync/atomic"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/vatactor/vatactor/supervisor"
)

// An answer is an incoming Bootstrap or Call, from its arrival until we
// have sent its Return and received its Finish. It is the call's
// capnp.Returner.
//
// Calls are delivered by the connection actor, in the order they arrive,
// straight into the target capability's hook (a server's queue, an actor's
// mailbox, another connection): delivery never blocks, and one delivery
// point per connection is what keeps E-order across pipelined and direct
// calls. The capability executes the call; the export actor owns its
// lifetime.
type answer struct {
	c      *Conn
	id     uint32
	ctx    callCtx      // the callee's: carries span
	span   trace.Span   // the server span; ended when the Return is queued
	method capnp.Method // named, for the span

	// Written by the callee (any goroutine) before Return.
	msg     *capnp.Message // the Return message, once results are allocated
	ret     rpccp.Return
	results capnp.Struct
	err     error

	args         *capnp.Message // the Call, freed by releaseArgs
	argsReleased atomic.Bool
	retState     atomic.Int32                  // retWritten | retDropped | retReleased
	retMsg       atomic.Pointer[capnp.Message] // the queued Return, freed once retState is retAll

	// hc is the callee's Returner (wrapping the answer) and holds the
	// calls the peer pipelines on the answer until its results are
	// there: the callee's Return delivers them, on its goroutine, in
	// arrival order, before the Return is sent. Unused by bootstraps and
	// refused calls, which return at once.
	hc heldCall

	// Owned by the connection actor.
	held           []heldResult // capabilities in the results handed out before the Return
	returned       bool
	finished       bool
	releaseResults bool                // the Finish asked us to release the result caps
	resultExports  []uint32            // export id per cap-table index of the results (noExport if none)
	releaseParams  bool                // the params' caps were never imported: the Return asks the peer to release them
	epitaph        *supervisor.Epitaph // refused while draining: the exception carries our epitaph
	callBytes      int64               // the Call's size, counted in state.callBytes until the Return
	heldBytes      int64               // the Return's size, counted in state.answerBytes until the Finish
}

const noExport = ^uint32(0)

// answerReturned: the callee called Return.
type answerReturned struct{ a *answer }

// heldResult is a capability in an answer's results that was handed out
// (a receiverAnswer descriptor) before the answer returned.
type heldResult struct {
	transform []capnp.PipelineOp
	cap       *heldCap
	resolver  capnp.Resolver[capnp.Client]
}

func (s *state) newAnswer(id uint32, m capnp.Method, bootstrap bool, sc *Sidecar) (*answer, error) {
	if _, dup := s.answers[id]; dup {
		return nil, fmt.Errorf("%w: question %d is already in flight", ErrDuplicateID, id)
	}
	if lim := s.c.opts.Limits.MaxHeldAnswers; len(s.answers) >= lim {
		return nil, budgetErrorf("MaxHeldAnswers", int64(lim), "the peer holds %d calls without their Finish", len(s.answers))
	}
	a := &answer{c: s.c, id: id}
	a.ctx.parent, a.span, a.method = s.startAnswerSpan(context.Background(), m, bootstrap, sc)
	s.answers[id] = a
	s.running++
	return a, nil
}

// overloaded answers a with "overloaded" when more of the peer's calls
// are running than Options.MaxAnswers, or more bytes of them than
// Limits.MaxCallBytes; it reports whether it did.
func (s *state) overloaded(a *answer) bool {
	switch lim := s.c.opts.Limits.MaxCallBytes; {
	case s.running > s.c.opts.MaxAnswers:
		a.err = exc.New(exc.Overloaded, "capnp", fmt.Sprintf("%v: more than %d calls in flight", ErrTooManyQuestions, s.c.opts.MaxAnswers))
	case s.callBytes > lim:
		a.err = exc.New(exc.Overloaded, "capnp", fmt.Sprintf("%v: more than %d bytes of calls in flight (MaxCallBytes)", ErrTooManyQuestions, lim))
	default:
		return false
	}
	a.releaseParams = true
	s.answerReturned(a)
	return true
}

// releaseArgs is the call's capnp.Recv.ReleaseArgs: the callee (or the
// connection, when the call is refused) frees the Call once.
func (a *answer) releaseArgs() {
	if a.argsReleased.CompareAndSwap(false, true) {
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
// goroutine before the results are shared with pipelined callers, so the
// cap descriptor list is allocated here: the connection later fills it in
// place, and the message is never grown while others read it.
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
	if a.c.post(answerReturned{a: a}) != nil && a.msg != nil {
		a.msg.Release()
	}
}

// ReleaseResults implements capnp.Returner: the callee is done with the
// results. They stay until the peer's Finish too (and the write).
func (a *answer) ReleaseResults() { a.retDone(retReleased) }

// handleBootstrap answers a Bootstrap with our bootstrap capability.
func (s *state) handleBootstrap(m rpccp.Message, sc *Sidecar) error {
	bs, err := m.Bootstrap()
	if err != nil {
		return fmt.Errorf("%w: bootstrap: %v", ErrMalformedFrame, err)
	}
	a, err := s.newAnswer(bs.QuestionId(), bootstrapMethod, true, sc)
	if err != nil {
		return err
	}
	s.traceEvent("bootstrap", attribute.String("direction", "received"))
	if s.phase == phaseDraining {
		s.refusedDraining(a)
		return nil
	}
	if s.overloaded(a) {
		return nil
	}
	if boot := s.c.opts.Bootstrap; boot.IsValid() {
		if _, a.err = a.AllocResults(capnp.ObjectSize{}); a.err == nil {
			id := a.msg.CapTable().Add(boot.AddRef())
			payload, _ := a.ret.Results()
			a.err = payload.SetContent(capnp.NewInterface(payload.Segment(), id).ToPtr())
		}
	} else {
		a.err = exc.New(exc.Failed, "capnp", "this vat serves no bootstrap capability")
	}
	s.answerReturned(a)
	return nil
}

// handleCall delivers an incoming call to its target.
func (s *state) handleCall(msg *capnp.Message, m rpccp.Message, sc *Sidecar) (keep bool, err error) {
	call, err := m.Call()
	if err != nil {
		return false, fmt.Errorf("%w: call: %v", ErrMalformedFrame, err)
	}
	method := capnp.Method{InterfaceID: call.InterfaceId(), MethodID: call.MethodId()}
	a, err := s.newAnswer(call.QuestionId(), method, false, sc)
	if err != nil {
		return false, err
	}
	if s.phase == phaseDraining {
		s.refusedDraining(a)
		return false, nil
	}
	size, _ := msg.TotalSize()
	a.callBytes = int64(size)
	s.callBytes += a.callBytes
	if s.overloaded(a) {
		return false, nil
	}
	if call.SendResultsTo().Which() != rpccp.Call_sendResultsTo_Which_caller {
		a.err = exc.New(exc.Unimplemented, "capnp", "results can only be sent to the caller")
		a.releaseParams = true
		s.answerReturned(a)
		return false, nil
	}
	params, err := call.Params()
	if err != nil {
		return false, fmt.Errorf("%w: call params: %v", ErrMalformedFrame, err)
	}
	if err := s.decodeCapTable(msg, params); err != nil {
		return false, err
	}
	content, err := params.Content()
	if err != nil {
		return false, fmt.Errorf("%w: call params content: %v", ErrMalformedFrame, err)
	}
	target, err := call.Target()
	if err != nil {
		return false, fmt.Errorf("%w: call target: %v", ErrMalformedFrame, err)
	}
	a.args = msg
	a.hc.init(&a.ctx, capnp.Recv{
		Method:      method,
		Args:        content.Struct(),
		ReleaseArgs: a.releaseArgs,
		Returner:    a,
	})
	switch target.Which() {
	case rpccp.MessageTarget_Which_importedCap:
		e := s.exports.Get(target.ImportedCap())
		if e == nil {
			return false, fmt.Errorf("%w: call on export %d, which we do not export (released?)", ErrUnknownID, target.ImportedCap())
		}
		e.client.RecvCall(&a.ctx, a.hc.recv) // a failure comes back through Return
	case rpccp.MessageTarget_Which_promisedAnswer:
		pa, err := target.PromisedAnswer()
		if err != nil {
			return false, fmt.Errorf("%w: call target: %v", ErrMalformedFrame, err)
		}
		pans := s.answers[pa.QuestionId()]
		if pans == nil || pans == a {
			return false, fmt.Errorf("%w: call pipelined on question %d, which is not in flight", ErrUnknownID, pa.QuestionId())
		}
		transform, err := decodeTransform(pa)
		if err != nil {
			return false, err
		}
		s.deliverPipelined(pans, transform, &a.hc)
	default:
		return false, fmt.Errorf("%w: call target of unknown kind %d", ErrMalformedFrame, target.Which())
	}
	return true, nil
}

// deliverPipelined delivers a call made on a capability inside the answer
// to another call: it waits in that answer while the call runs, and goes
// to the capability in its results once they are there (the callee's
// Return delivers it). A missing or null capability, or a failed call,
// answers it with an exception.
func (s *state) deliverPipelined(pans *answer, transform []capnp.PipelineOp, call *heldCall) {
	if pans.hc.inner != nil {
		pans.hc.pipeline(pipelinedCall{transform: transform, call: call})
		return
	}
	// A bootstrap or a refused call: returned when it arrived.
	c, err := s.resultCap(pans, transform)
	call.deliverTo(c, err)
}

// resultCap returns (borrowed) the capability at transform in a's results,
// or why there is none.
func (s *state) resultCap(a *answer, transform []capnp.PipelineOp) (capnp.Client, error) {
	if a.err != nil {
		return capnp.Client{}, a.err
	}
	if !a.returned || a.msg == nil {
		return capnp.Client{}, exc.New(exc.Failed, "capnp", "pipelined call on an answer with no results")
	}
	content, err := a.ret.Results()
	if err != nil {
		return capnp.Client{}, err
	}
	root, err := content.Content()
	if err != nil {
		return capnp.Client{}, err
	}
	return pipelineTarget(root, nil, transform)
}

// releaseHeld hands the capabilities of a's results that were handed out
// before its Return to what they point at.
func (s *state) releaseHeld(a *answer) {
	for _, h := range a.held {
		c, err := s.resultCap(a, h.transform)
		h.cap.resolve(h.resolver, c.AddRef(), err)
	}
	a.held = nil
}

// failPipelined fails what waits for a's Return, which will never come:
// the held capabilities resolve to err, and the calls pipelined on it
// fail with it.
func (s *state) failPipelined(a *answer, err error) {
	for _, h := range a.held {
		h.cap.resolve(h.resolver, capnp.Client{}, err)
	}
	a.held = nil
	if a.hc.inner != nil {
		a.hc.fail(err)
	}
}

// answerReturned sends the Return for a.
func (s *state) answerReturned(a *answer) {
	if a.returned {
		if a.msg != nil {
			a.msg.Release()
		}
		return
	}
	a.returned = true
	s.running--
	s.callBytes -= a.callBytes
	if a.err == nil && a.msg == nil {
		_, a.err = a.AllocResults(capnp.ObjectSize{}) // an empty result struct
	}
	if a.err == nil {
		payload, _ := a.ret.Results()
		exports, err := s.encodeCapTableIDs(payload, a.msg)
		if err != nil {
			a.err = err
		}
		a.resultExports = exports
	}
	if a.err != nil {
		if a.msg != nil {
			a.msg.Release()
		}
		a.msg, a.ret = newExceptionReturn(a.id, a.err, a.releaseParams, a.epitaph)
		a.resultExports = nil
	}
	endAnswerSpan(a)
	// The results stay ours until both the writer has written them and
	// the peer's Finish has come: calls pipelined on them arrive until
	// then.
	a.retMsg.Store(a.msg)
	s.releaseHeld(a)
	s.queue(a.msg, a, nil)
	if a.finished {
		s.dropAnswer(a)
		delete(s.answers, a.id)
		return
	}
	size, _ := a.msg.TotalSize()
	a.heldBytes = int64(size)
	s.answerBytes += a.heldBytes
	if lim := s.c.opts.Limits.MaxAnswerBytes; s.answerBytes > lim {
		s.protocolError(budgetErrorf("MaxAnswerBytes", lim, "%d bytes of results held for calls the peer has not finished", s.answerBytes))
	}
}

// newExceptionReturn builds the Return of answer id that fails with err,
// carrying ep in the exception's details if set.
func newExceptionReturn(id uint32, err error, releaseParams bool, ep *supervisor.Epitaph) (*capnp.Message, rpccp.Return) {
	msg, m := newMessage()
	ret, _ := m.NewReturn() // allocation in a fresh message cannot fail
	ret.SetAnswerId(id)
	ret.SetReleaseParamCaps(releaseParams)
	e, _ := ret.NewException()
	encodeException(e, err)
	if ep != nil {
		_ = setEpitaph(e, *ep)
	}
	return msg, ret
}

// handleFinish: the peer is done with one of its questions (our answer).
func (s *state) handleFinish(m rpccp.Message) error {
	f, err := m.Finish()
	if err != nil {
		return fmt.Errorf("%w: finish: %v", ErrMalformedFrame, err)
	}
	return s.finish(f.QuestionId(), f.ReleaseResultCaps())
}

// finish: the peer is done with its question qid; releaseResultCaps says
// whether it drops the capabilities of the results.
func (s *state) finish(qid uint32, releaseResultCaps bool) error {
	a := s.answers[qid]
	if a == nil {
		return fmt.Errorf("%w: finish for question %d, which is not in flight", ErrUnknownID, qid)
	}
	if a.finished {
		return fmt.Errorf("%w: second finish for question %d", ErrDuplicateID, a.id)
	}
	a.finished = true
	a.releaseResults = releaseResultCaps
	if !a.returned {
		a.span.AddEvent("canceled by the caller")
		a.ctx.cancel() // the callee sees its context cancelled; its Return comes later
		return nil
	}
	s.dropAnswer(a)
	delete(s.answers, a.id)
	return nil
}

// dropAnswer releases what a returned answer still holds: the references
// its results gave the peer (if the Finish asked for it) and the results'
// capabilities.
func (s *state) dropAnswer(a *answer) {
	a.ctx.cancel()
	s.answerBytes -= a.heldBytes
	a.heldBytes = 0
	if a.releaseResults && !s.phase.closing() {
		for _, id := range a.resultExports {
			if id != noExport {
				_ = s.releaseExport(id, 1)
			}
		}
	}
	a.resultExports = nil
	if a.msg != nil {
		a.msg.CapTable().Reset()
	}
	a.retDone(retDropped)
}

// Bits of answer.retState: who is done with the queued Return. The last
// of the writer (written), the actor (the peer's Finish: dropped) and the
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
