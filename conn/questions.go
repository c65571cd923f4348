package conn

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
	"github.com/asynkron/protoactor-go/actor"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// A question is one outgoing Bootstrap or Call. It is an actor, a child of
// the connection, from the moment the call is sent until both its Return
// has arrived and its Finish has been sent; the actor settles the caller's
// promise, off the connection's goroutine.
type question struct {
	c      *Conn
	method capnp.Method
	p      *capnp.Promise
	target callTarget

	// Set by the caller before the question is posted.
	msg       *capnp.Message // the outgoing Call (nil for Bootstrap)
	call      rpccp.Call
	bootstrap bool
	stopWatch func() bool
	span      trace.Span // the client span; ended when the promise is settled
	sidecar   *Sidecar   // carries span's context with the Call (nil: none)
	flowBytes int64      // room taken in target.flow; given back when settled

	settled atomic.Bool // the promise has been (or is being) resolved

	// Owned by the connection actor.
	id           uint32
	seq          uint64 // creation order
	pid          *actor.PID
	pending      *settleQuestion // the outcome sent to the actor (&outcome), kept in case a Stop overtakes it
	outcome      settleQuestion
	stopErr      error                // set before a stop: what a caller still waiting gets
	state        questionState        // where it is in its life on the wire
	canceled     error                // set if cancelled before it was sent
	released     bool                 // the caller has released the answer
	results      *capnp.Message       // released by the actor when it stops
	paramExports []uint32             // export id per cap of the params (noExport if none)
	pipelined    [][]capnp.PipelineOp // transforms of calls pipelined on the answer
}

// questionState is where a question is in its life on the wire. Each
// constant's doc says where it may go next.
type questionState uint8

const (
	// questionUnsent: posted to the connection, not yet on the wire; a
	// cancel or release now means it is never sent. Next: questionWaiting.
	questionUnsent questionState = iota
	// questionWaiting: the Call (or Bootstrap) is sent; neither its
	// Return nor our Finish has gone by. Next: questionReturned (its
	// Return), questionFinishing (our Finish first: a cancel or release).
	questionWaiting
	// questionReturned: its Return is in; our Finish is not sent (the
	// caller holds the answer, calls may be pipelined on it). Next:
	// questionDone (Finish sent).
	questionReturned
	// questionFinishing: our Finish went first; its Return is still to
	// come, and is dropped when it does. Next: questionDone.
	questionFinishing
	// questionDone: Return in (or never to be waited for) and Finish sent;
	// the question is retired.
	questionDone
)

var questionStateNames = [...]string{"unsent", "waiting", "returned", "finishing", "done"}

func (st questionState) String() string { return questionStateNames[st] }

// sent reports whether the question has gone on the wire.
func (q *question) sent() bool { return q.state != questionUnsent }

// returned reports whether its Return has arrived (or will not be waited
// for: questionDone).
func (q *question) returned() bool {
	return q.state == questionReturned || q.state == questionDone
}

// finishSent reports whether our Finish has been sent.
func (q *question) finishSent() bool {
	return q.state == questionFinishing || q.state == questionDone
}

// gotReturn: its Return has arrived.
func (q *question) gotReturn() {
	switch q.state {
	case questionWaiting:
		q.state = questionReturned
	case questionFinishing:
		q.state = questionDone
	}
}

// sentFinish: our Finish is sent.
func (q *question) sentFinish() {
	switch q.state {
	case questionWaiting:
		q.state = questionFinishing
	case questionReturned:
		q.state = questionDone
	}
}

// callTarget is where a call goes: an import of this connection, or a
// capability inside a question's answer (promise pipelining).
type callTarget struct {
	importID  uint32
	flow      *window // the import's flow control, if any
	parent    *question
	transform []capnp.PipelineOp
}

// Messages about questions.
type (
	callOut        struct{ q *question } // caller: send this question
	cancelQuestion struct {
		q   *question
		err error
	} // caller's context is done
	releaseQuestion struct{ q *question } // caller released the answer
	settleQuestion  struct {              // connection → question actor
		ptr capnp.Ptr
		err error
	}
)

func newQuestion(c *Conn, m capnp.Method, tgt *callTarget) *question {
	q := &question{c: c, method: m}
	if tgt != nil {
		q.target = *tgt
	}
	q.p = capnp.NewPromise(m, q, nil)
	return q
}

// watch sends Finish at once when ctx is cancelled before the Return.
// It costs no goroutine: context.AfterFunc runs only on cancellation.
func (q *question) watch(ctx context.Context) {
	if ctx.Done() == nil {
		return
	}
	q.stopWatch = context.AfterFunc(ctx, func() {
		_ = q.c.post(cancelQuestion{q: q, err: ctx.Err()})
	})
}

// release is the caller's ReleaseFunc for the answer: it sends Finish
// (cancelling the call if it has not returned) and frees the results.
func (q *question) release() {
	if q.c.post(releaseQuestion{q: q}) != nil {
		q.settle(capnp.Ptr{}, q.c.errDisconnected(), false)
	}
	q.p.ReleaseClients()
}

// settle resolves the caller's promise once; later calls do nothing.
// onActor: called by the question's actor, which may read the id the
// connection gave the question (for its span).
func (q *question) settle(ptr capnp.Ptr, err error, onActor bool) bool {
	if !q.settled.CompareAndSwap(false, true) {
		return false
	}
	if q.flowBytes > 0 {
		q.target.flow.release(q.flowBytes)
	}
	endQuestionSpan(q, err, onActor) // a question with an actor was sent
	q.p.Resolve(ptr, err)
	return true
}

// Receive is the question actor.
func (q *question) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *settleQuestion:
		q.settle(m.ptr, m.err, true)
	case *actor.Stopping:
		// Stop overtakes user messages: an outcome already sent wins.
		// Otherwise a caller still waiting learns it will get no answer.
		if p := q.pending; p != nil {
			q.settle(p.ptr, p.err, true)
		}
		if !q.settled.Load() {
			err := q.stopErr
			if err == nil {
				err = q.c.errDisconnected()
			}
			q.settle(capnp.Ptr{}, err, true)
		}
	case *actor.Stopped:
		if q.results != nil {
			q.results.Release()
		}
	}
}

// PipelineSend implements capnp.PipelineCaller: a call on a capability
// inside this question's not-yet-known answer.
func (q *question) PipelineSend(ctx context.Context, transform []capnp.PipelineOp, s capnp.Send) (*capnp.Answer, capnp.ReleaseFunc) {
	return q.c.sendLocalCall(ctx, callTarget{parent: q, transform: transform}, s)
}

// sendLocalCall is sendCall for a call made by local code (Send): it
// waits first while more than Limits.MaxSendQueue is queued for the peer
// (a peer that does not read holds our callers back, not our memory),
// until the queue drains to half, the connection ends, or ctx does.
// Calls forwarded from elsewhere (Recv: another connection's actor
// delivering) never wait here; the other connection's budgets bound them.
func (c *Conn) sendLocalCall(ctx context.Context, tgt callTarget, s capnp.Send) (*capnp.Answer, capnp.ReleaseFunc) {
	if err := c.out.awaitRoomCtx(ctx); err != nil {
		return capnp.ErrorAnswer(s.Method, exc.WrapError("send queue full", err)), func() {}
	}
	return c.sendCall(ctx, tgt, s)
}

// PipelineRecv implements capnp.PipelineCaller for calls that arrive as
// capnp.Recv (forwarded from elsewhere).
func (q *question) PipelineRecv(ctx context.Context, transform []capnp.PipelineOp, r capnp.Recv) capnp.PipelineCaller {
	return q.c.forwardRecv(ctx, callTarget{parent: q, transform: transform}, r)
}

// sendCall builds a Call on the caller's goroutine (PlaceArgs must run
// before Send returns) and posts it to the connection actor.
func (c *Conn) sendCall(ctx context.Context, tgt callTarget, s capnp.Send) (*capnp.Answer, capnp.ReleaseFunc) {
	msg, m := newMessage()
	call, err := m.NewCall()
	if err != nil {
		msg.Release()
		return capnp.ErrorAnswer(s.Method, err), func() {}
	}
	call.SetInterfaceId(s.Method.InterfaceID)
	call.SetMethodId(s.Method.MethodID)
	params, err := call.NewParams()
	if err == nil {
		var args capnp.Struct
		if args, err = capnp.NewStruct(params.Segment(), s.ArgsSize); err == nil {
			if err = params.SetContent(args.ToPtr()); err == nil && s.PlaceArgs != nil {
				err = s.PlaceArgs(args)
			}
		}
	}
	if err != nil {
		msg.Release()
		return capnp.ErrorAnswer(s.Method, exc.WrapError("place args", err)), func() {}
	}
	var flowBytes int64
	if tgt.flow != nil {
		size, _ := msg.TotalSize()
		if err := tgt.flow.acquire(ctx, int64(size)); err != nil {
			msg.Release()
			return capnp.ErrorAnswer(s.Method, exc.WrapError("flow control", err)), func() {}
		}
		flowBytes = int64(size)
	}
	q := newQuestion(c, s.Method, &tgt)
	q.msg, q.call, q.flowBytes = msg, call, flowBytes
	q.span, q.sidecar = c.startQuestionSpan(ctx, s.Method, false)
	q.watch(ctx)
	if err := c.post(callOut{q: q}); err != nil {
		if q.stopWatch != nil {
			q.stopWatch()
		}
		msg.Release()
		if flowBytes > 0 {
			tgt.flow.release(flowBytes)
		}
		endQuestionSpan(q, err, false)
		return capnp.ErrorAnswer(s.Method, err), func() {}
	}
	return q.p.Answer(), q.release
}

// forwardRecv turns a received call (capnp.Recv) into an outgoing Call on
// this connection and copies the answer back into r's Returner.
func (c *Conn) forwardRecv(ctx context.Context, tgt callTarget, r capnp.Recv) capnp.PipelineCaller {
	ans, release := c.sendCall(ctx, tgt, capnp.Send{
		Method:   r.Method,
		ArgsSize: r.Args.Size(),
		PlaceArgs: func(args capnp.Struct) error {
			err := args.CopyFrom(r.Args)
			r.ReleaseArgs()
			return err
		},
	})
	go func() {
		defer release()
		res, err := ans.Struct()
		if err == nil {
			var out capnp.Struct
			if out, err = r.Returner.AllocResults(res.Size()); err == nil {
				err = out.CopyFrom(res)
			}
		}
		r.Returner.PrepareReturn(err)
		r.Returner.Return()
	}()
	return ans
}

// sendCall (actor side) assigns the question its id, encodes the target
// and the capabilities in the params, starts the question actor and
// queues the message.
func (s *state) sendCall(q *question) {
	if q.canceled != nil {
		s.rejectUnsent(q, q.canceled)
		return
	}
	var out *capnp.Message
	if q.bootstrap {
		var m rpccp.Message
		out, m = newMessage()
		bs, err := m.NewBootstrap()
		if err != nil {
			out.Release()
			s.rejectUnsent(q, err)
			return
		}
		q.id = s.questions.Add(q)
		bs.SetQuestionId(q.id)
	} else {
		out = q.msg
		if err := s.encodeTarget(q); err != nil {
			s.rejectUnsent(q, err)
			return
		}
		params, _ := q.call.Params()
		ids, err := s.encodeCapTableIDs(params, out)
		if err != nil {
			s.rejectUnsent(q, err)
			return
		}
		q.paramExports = ids
		q.id = s.questions.Add(q)
		q.call.SetQuestionId(q.id)
	}
	q.msg = nil
	q.state = questionWaiting
	s.seq++
	q.seq = s.seq
	q.pid = s.spawnChild(q)
	s.byAnswer[q.p.Answer()] = q
	if q.bootstrap {
		s.traceEvent("bootstrap", attribute.String("direction", "sent"))
	}
	s.queue(out, nil, q.sidecar)
}

// rejectUnsent fails a question that never reached the wire and frees
// its Call.
func (s *state) rejectUnsent(q *question, err error) {
	if q.stopWatch != nil {
		q.stopWatch()
	}
	if q.msg != nil {
		q.msg.Release()
		q.msg = nil
	}
	go q.settle(capnp.Ptr{}, err, false) // never on the actor's goroutine: Resolve may block
}

func (s *state) encodeTarget(q *question) error {
	tgt, err := q.call.NewTarget()
	if err != nil {
		return err
	}
	if pq := q.target.parent; pq != nil {
		if pq.c != s.c {
			return errNotOurs
		}
		if !pq.sent() || pq.finishSent() {
			return exc.New(exc.Failed, "capnp", "pipelined call on an answer that was already released")
		}
		pa, err := tgt.NewPromisedAnswer()
		if err != nil {
			return err
		}
		pa.SetQuestionId(pq.id)
		if err := encodeTransform(pa, q.target.transform); err != nil {
			return err
		}
		pq.pipelined = append(pq.pipelined, q.target.transform)
		return nil
	}
	ie, ok := s.imports[q.target.importID]
	if !ok {
		return exc.New(exc.Failed, "capnp", "call on a released capability")
	}
	ie.callsSent = true
	tgt.SetImportedCap(q.target.importID)
	return nil
}

func encodeTransform(pa rpccp.PromisedAnswer, transform []capnp.PipelineOp) error {
	ops, err := pa.NewTransform(int32(len(transform)))
	if err != nil {
		return err
	}
	for i, op := range transform {
		ops.At(i).SetGetPointerField(op.Field)
	}
	return nil
}

func decodeTransform(pa rpccp.PromisedAnswer) ([]capnp.PipelineOp, error) {
	ops, err := pa.Transform()
	if err != nil {
		return nil, err
	}
	if ops.Len() == 0 {
		return nil, nil
	}
	out := make([]capnp.PipelineOp, 0, ops.Len())
	for i := 0; i < ops.Len(); i++ {
		op := ops.At(i)
		switch op.Which() {
		case rpccp.PromisedAnswer_Op_Which_noop:
		case rpccp.PromisedAnswer_Op_Which_getPointerField:
			out = append(out, capnp.PipelineOp{Field: op.GetPointerField()})
		default:
			return nil, fmt.Errorf("%w: unknown transform op %d", ErrMalformedFrame, op.Which())
		}
	}
	return out, nil
}

// cancelQuestion: the caller's context ended before the Return.
func (s *state) cancelQuestion(q *question, err error) {
	if !q.sent() {
		q.canceled = err
		return
	}
	if q.state != questionWaiting {
		return
	}
	s.sendFinish(q, true)
	s.settleQuestion(q, settleQuestion{err: err})
}

// settleQuestion hands q's outcome to its actor, which resolves the
// caller's promise off the connection's goroutine.
func (s *state) settleQuestion(q *question, m settleQuestion) {
	if q.pending != nil {
		return // settled once already: the first outcome wins
	}
	q.outcome = m
	q.pending = &q.outcome
	s.ctx.Send(q.pid, q.pending)
}

// releaseQuestion: the caller is done with the answer.
func (s *state) releaseQuestion(q *question) {
	if !q.sent() {
		q.canceled = errors.New("answer released before the call was sent")
		return
	}
	if q.released {
		return
	}
	q.released = true
	if !q.finishSent() {
		returned := q.returned()
		s.sendFinish(q, !returned)
		if !returned {
			s.settleQuestion(q, settleQuestion{err: exc.New(exc.Failed, "capnp", "answer released before it arrived")})
		}
	}
	s.retireQuestion(q)
}

// sendFinish tells the peer we are done with question q. releaseResultCaps
// is true when we will not import the capabilities of its results (the
// Return has not arrived).
func (s *state) sendFinish(q *question, releaseResultCaps bool) {
	q.sentFinish()
	out, m := newMessage()
	f, err := m.NewFinish()
	if err != nil {
		out.Release()
		return
	}
	f.SetQuestionId(q.id)
	f.SetReleaseResultCaps(releaseResultCaps)
	f.SetRequireEarlyCancellationWorkaround(false)
	if releaseResultCaps {
		s.send(out) // a cancellation: the peer may stop work at once
	} else {
		s.sendLazy(out)
	}
}

// retireQuestion removes q once its Return has arrived and its Finish has
// been sent; its actor stops.
func (s *state) retireQuestion(q *question) {
	if q.state != questionDone {
		return
	}
	if s.questions.Get(q.id) == q {
		s.questions.Remove(q.id)
	}
	delete(s.byAnswer, q.p.Answer())
	if q.stopWatch != nil {
		q.stopWatch()
	}
	// The actor releases the results once it has stopped: its Stopping
	// may still be resolving the caller's promise from them.
	s.ctx.Stop(q.pid)
}

// handleReturn: the answer to one of our questions.
func (s *state) handleReturn(msg *capnp.Message, m rpccp.Message) (keep bool, err error) {
	ret, err := m.Return()
	if err != nil {
		return false, fmt.Errorf("%w: return: %v", ErrMalformedFrame, err)
	}
	q := s.questions.Get(ret.AnswerId())
	if q == nil {
		return false, fmt.Errorf("%w: return for question %d, which is not in flight", ErrUnknownID, ret.AnswerId())
	}
	if q.returned() {
		return false, fmt.Errorf("%w: second return for question %d", ErrDuplicateID, q.id)
	}
	finished := q.finishSent()
	q.gotReturn()
	if q.stopWatch != nil {
		q.stopWatch()
	}
	if finished {
		// Cancelled or released before the answer came: nothing of it is
		// imported (our Finish asked the peer to release its caps).
		s.retireQuestion(q)
		return false, s.releaseParamCaps(q, ret)
	}
	var settle settleQuestion
	switch ret.Which() {
	case rpccp.Return_Which_results:
		payload, err := ret.Results()
		if err != nil {
			return false, fmt.Errorf("%w: return results: %v", ErrMalformedFrame, err)
		}
		if err := s.decodeCapTable(msg, payload); err != nil {
			return false, err
		}
		content, err := payload.Content()
		if err != nil {
			return false, fmt.Errorf("%w: return content: %v", ErrMalformedFrame, err)
		}
		s.embargoResults(q, msg, content)
		q.results = msg
		keep = true
		settle.ptr = content
	case rpccp.Return_Which_exception:
		e, err := ret.Exception()
		if err != nil {
			return false, fmt.Errorf("%w: return exception: %v", ErrMalformedFrame, err)
		}
		settle.err = decodeException(e, s.c.opts.Limits.MaxReasonLength)
	case rpccp.Return_Which_canceled:
		settle.err = exc.New(exc.Failed, "capnp", "call canceled by the peer")
	default:
		// We never ask for results to be sent elsewhere nor take them from
		// another question, so these are protocol violations.
		return false, fmt.Errorf("%w: return of kind %d for a call that asked for results to the caller", ErrMalformedFrame, ret.Which())
	}
	// Only now, after the results may have named them: the peer drops its
	// references to our params' caps with this Return instead of sending
	// Release for them.
	if err := s.releaseParamCaps(q, ret); err != nil {
		return keep, err
	}
	s.settleQuestion(q, settle)
	return keep, nil
}

func (s *state) releaseParamCaps(q *question, ret rpccp.Return) error {
	ids := q.paramExports
	q.paramExports = nil
	if !ret.ReleaseParamCaps() {
		return nil
	}
	for _, id := range ids {
		if id != noExport {
			if err := s.releaseExport(id, 1); err != nil {
				return err
			}
		}
	}
	return nil
}

// decodeException turns a wire Exception into a Go error whose exc.Type
// is the exception's type.
// An exception that carries an epitaph is a call refused by a draining
// peer: it wraps ErrNotProcessed.
func decodeException(e rpccp.Exception, maxText int) error {
	reasonBytes, _ := e.ReasonBytes()
	reason := clip(reasonBytes, maxText)
	if ep, ok, _ := epitaphOf(e, maxText); ok {
		return notProcessed("refused by the peer (epitaph %v): %s", ep, reason)
	}
	return &exc.Exception{Type: exc.Type(e.Type()), Prefix: "remote", Cause: errors.New(reason)}
}

// encodeException writes err into e: its exc.Type and its message.
func encodeException(e rpccp.Exception, err error) {
	e.SetType(rpccp.Exception_Type(exc.TypeOf(err)))
	_ = e.SetReason(err.Error())
}
