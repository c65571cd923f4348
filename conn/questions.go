package conn

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
	"github.com/asynkron/protoactor-go/actor"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/vatactor/vatactor/conn/core"
	"github.com/vatactor/vatactor/internal/mailbox"
	"github.com/vatactor/vatactor/internal/peakmap"
	"github.com/vatactor/vatactor/tracing"
)

// A question is one outgoing Bootstrap or Call of local code: its
// promise, its message until it is on the wire, its span. The core holds
// its place on the wire (core.LocalCall, named by call); from Call until
// Return and Finish it also has an actor, a child of the connection, that
// settles the caller's promise off the connection's goroutine (its
// questionActor, which serves one question at a time).
type question struct {
	c      *Conn
	call   core.CallID
	method capnp.Method
	p      *capnp.Promise
	target callTarget

	// Set by the caller before the question is posted.
	msg       *capnp.Message // the outgoing Call (nil for Bootstrap)
	rcall     rpccp.Call
	bootstrap bool
	stopWatch func() bool
	span      trace.Span         // the client span; ended when the promise is settled
	names     *tracing.CallNames // span's names; set with it
	sidecar   *Sidecar           // carries span's context with the Call (nil: none)
	flowBytes int64              // room taken in target.flow; given back when settled
	start     time.Duration      // for its duration (meterNow; 0: not measured)
	deadline  time.Time          // the caller's (zero: none)

	settled atomic.Bool // the promise has been (or is being) resolved
	// meteredByConn: the connection actor measured the call's duration
	// when it sent the outcome to the actor (state.settle).
	meteredByConn atomic.Bool
	// resultsDone: who is done with results (resultsCallerDone,
	// resultsActorDone); the last of the two frees them, so a caller
	// still reading its results when the connection's end stops the
	// question's actor reads them whole.
	resultsDone atomic.Int32

	// redirected: the call went to one of our capabilities instead (see
	// state.redirect); calls pipelined on it go to that call's answer.
	redirected atomic.Pointer[redirectedCall]

	// Owned by the connection actor.
	id      uint32          // on the wire (from the core's SpawnChild)
	actor   *questionActor  // from the frames after its Call until it is retired
	pending *settleQuestion // the outcome sent to the actor (nil: none yet)
	outcome settleQuestion
	results *capnp.Message // freed once the caller has released it and the actor settled it
	outc    outCall        // its params' content, as the core names it
	in      inPayload      // its results' content, as the core names it
}

// callTarget is where a call goes, as the core names it, and the flow
// control of an import.
type callTarget struct {
	cap  core.Cap
	flow *window
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
		q   *question
		ptr capnp.Ptr
		err error
	}
)

func (c *Conn) newQuestion(m capnp.Method, tgt callTarget) *question {
	q := &question{c: c, method: m, target: tgt, call: core.CallID(c.calls.Add(1))}
	q.p = capnp.NewPromise(m, q, nil)
	return q
}

// watch cancels the call when ctx ends before the Return. It costs no
// goroutine: context.AfterFunc runs only on cancellation.
func (q *question) watch(ctx context.Context) {
	if ctx.Done() == nil {
		return
	}
	q.stopWatch = context.AfterFunc(ctx, func() {
		_ = q.c.post(cancelQuestion{q: q, err: ctx.Err()})
	})
}

// redirectedCall is the local call a question became.
type redirectedCall struct {
	ans     *capnp.Answer
	release capnp.ReleaseFunc
}

// release is the caller's ReleaseFunc for the answer: it sends Finish
// (cancelling the call if it has not returned) and frees the results.
func (q *question) release() {
	if r := q.redirected.Load(); r != nil {
		r.release()
		q.p.ReleaseClients()
		return
	}
	if q.c.post(releaseQuestion{q: q}) != nil {
		q.settle(capnp.Ptr{}, q.c.errDisconnected(), false)
	}
	q.p.ReleaseClients()
	q.doneWithResults(resultsCallerDone)
}

// Who is done with a question's results.
const (
	resultsCallerDone int32 = 1 << iota // the caller released the answer
	resultsActorDone                    // the question's actor has settled it
)

// doneWithResults records that who is done with q's results, and frees
// them when the other is too.
func (q *question) doneWithResults(who int32) {
	const both = resultsCallerDone | resultsActorDone
	if old := q.resultsDone.Or(who); old|who == both && old != both && q.results != nil {
		q.results.Release()
	}
}

// settle resolves the caller's promise once; later calls do nothing.
// onActor: called by the question's actor, which may read the question's
// id (for its span).
func (q *question) settle(ptr capnp.Ptr, err error, onActor bool) bool {
	if !q.settled.CompareAndSwap(false, true) {
		return false
	}
	if q.flowBytes > 0 {
		q.target.flow.release(q.flowBytes)
	}
	err = q.pastDeadline(err, time.Now())
	endQuestionSpan(q, err, onActor)
	var took time.Duration
	if q.start != 0 && !q.meteredByConn.Load() {
		took = meterNow() - q.start
	}
	q.p.Resolve(ptr, err)
	if took > 0 { // recorded once the caller is on its way
		q.c.recordCall(meteredCall{took: took, method: q.method, err: err})
	}
	return true
}

// pastDeadline is err as the caller gets it at now: when the callee gave
// up at the deadline it was told (its exception came before our own
// timer), the caller's deadline all the same.
func (q *question) pastDeadline(err error, now time.Time) error {
	if err != nil && !q.deadline.IsZero() && !now.Before(q.deadline) && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w (%w: the call had been sent): %w", context.DeadlineExceeded, ErrOutcomeUnknown, err)
	}
	return err
}

// A questionActor settles the promises of a connection's questions, one
// question at a time: the connection gives it a question once the Call is
// on the wire (bind) and the question's outcome when the Return is read
// (a settleQuestion); once the question has its Return and its Finish,
// the connection parks the actor and gives it its next question
// (parkQuestionActor, takeQuestionActor), so a busy connection spawns and
// stops no actor per call (that cost ≈ 12 % of its CPU). A connection
// that rests stops the actors it has parked; its end stops the ones that
// serve a question still alive, newest first, as the end's steps say.
type questionActor struct {
	mbox mailbox.Mailbox
	pid  *actor.PID
	// serving is the question the actor serves, set by the connection
	// (bind) and read when the actor stops; stoppedServing once it has
	// stopped, so that the connection never binds a question to an actor
	// that can no longer settle it.
	serving atomic.Pointer[question]
}

// stoppedServing marks a questionActor that has stopped.
var stoppedServing = new(question)

// bind gives a the question q (the connection actor's goroutine); false:
// a has stopped.
func (a *questionActor) bind(q *question) bool {
	for {
		old := a.serving.Load()
		if old == stoppedServing {
			return false
		}
		if a.serving.CompareAndSwap(old, q) {
			return true
		}
	}
}

// Receive is the question actor.
func (a *questionActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *settleQuestion:
		m.q.settle(m.ptr, m.err, true)
		m.q.doneWithResults(resultsActorDone)
	case *actor.Stopping:
		// Stop overtakes user messages, which protoactor drops once the
		// actor has stopped: the outcomes already sent are settled now.
		// A caller still waiting then learns it will get no answer.
		q := a.serving.Swap(stoppedServing)
		for {
			msg, ok := a.mbox.TakeUser()
			if !ok {
				break
			}
			if m, ok := msg.(*settleQuestion); ok {
				m.q.settle(m.ptr, m.err, true)
				m.q.doneWithResults(resultsActorDone)
			}
		}
		if q != nil && q != stoppedServing && !q.settled.Load() {
			q.settle(capnp.Ptr{}, q.c.errDisconnected(), true)
			q.doneWithResults(resultsActorDone)
		}
	}
}

// PipelineSend implements capnp.PipelineCaller: a call on a capability
// inside this question's not-yet-known answer.
func (q *question) PipelineSend(ctx context.Context, transform []capnp.PipelineOp, s capnp.Send) (*capnp.Answer, capnp.ReleaseFunc) {
	if r := q.redirected.Load(); r != nil {
		return r.ans.PipelineSend(ctx, transform, s)
	}
	return q.c.sendLocalCall(ctx, q.pipelineTarget(transform), s)
}

// PipelineRecv implements capnp.PipelineCaller for calls that arrive as
// capnp.Recv (forwarded from elsewhere).
func (q *question) PipelineRecv(ctx context.Context, transform []capnp.PipelineOp, r capnp.Recv) capnp.PipelineCaller {
	if rc := q.redirected.Load(); rc != nil {
		return rc.ans.PipelineRecv(ctx, transform, r)
	}
	return q.c.forwardRecv(ctx, q.pipelineTarget(transform), r)
}

// oneField[f] is the transform of field f alone.
var oneField = func() (t [16][1]uint16) {
	for f := range t {
		t[f][0] = uint16(f)
	}
	return t
}()

func (q *question) pipelineTarget(transform []capnp.PipelineOp) callTarget {
	return callTarget{cap: core.Cap{Kind: core.CapQuestion, Call: q.call, Transform: pipelineOps(transform)}}
}

// pipelineOps is a promised answer's transform as the core takes it. The
// common one, a single pointer field of the first few, is a shared slice
// (nothing writes into a transform; its capacity makes an append copy).
func pipelineOps(transform []capnp.PipelineOp) []uint16 {
	if len(transform) == 0 {
		return nil
	}
	if f := transform[0].Field; len(transform) == 1 && int(f) < len(oneField) {
		return oneField[f][:]
	}
	out := make([]uint16, len(transform))
	for i, op := range transform {
		out[i] = op.Field
	}
	return out
}

// sendLocalCall is sendCall for a call made by local code (Send): it
// waits first while more than Limits.MaxSendQueue is queued for the peer
// (a peer that does not read holds our callers back, not our memory),
// until the queue drains to half, the connection ends, or ctx does.
// Calls forwarded from elsewhere (Recv: another connection's actor
// delivering) never wait here; the other connection's budgets bound them.
func (c *Conn) sendLocalCall(ctx context.Context, tgt callTarget, s capnp.Send) (*capnp.Answer, capnp.ReleaseFunc) {
	if err := c.out.budget.awaitRoom(ctx); err != nil {
		return capnp.ErrorAnswer(s.Method, exc.WrapError("send queue full", err)), func() {}
	}
	return c.sendCall(ctx, tgt, s)
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
	q := c.newQuestion(s.Method, tgt)
	q.msg, q.rcall, q.flowBytes = msg, call, flowBytes
	c.startQuestionSpan(ctx, q)
	q.start = c.callStart(false)
	if dl, ok := ctx.Deadline(); ok {
		// The callee learns the time left (peers not ours ignore it).
		if q.sidecar == nil {
			q.sidecar = &Sidecar{}
		}
		q.sidecar.Timeout = max(time.Until(dl), time.Microsecond)
		q.deadline = dl
	}
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

// localCall (actor side) gives the core a call or bootstrap of local
// code, with the capabilities of its params as the core names them.
func (s *state) localCall(q *question) {
	peakmap.Set(&s.calls, q.call, q)
	peakmap.Set(&s.byAns, q.p.Answer(), q)
	s.peaks.calls.Note(len(s.calls))
	s.peaks.byAns.Note(len(s.byAns))
	if q.bootstrap {
		s.traceEvent("bootstrap", attribute.String("direction", "sent"))
		s.feed(&core.LocalBootstrap{Call: q.call})
		return
	}
	caps := s.describeAll(nil, q.msg.CapTable())
	params, _ := q.rcall.Params()
	size, _ := q.msg.TotalSize()
	content, _ := params.Content()
	q.outc = outCall{q: q, content: content}
	s.in.local = core.LocalCall{Call: q.call, Target: q.target.cap, Method: coreMethod(q.method),
		Params: core.Payload{Content: &q.outc, CapTable: caps, Size: int(size)}}
	s.feed(&s.in.local)
}

func coreMethod(m capnp.Method) core.Method {
	return core.Method{InterfaceID: m.InterfaceID, MethodID: m.MethodID}
}

// settle: a local call has its outcome from the core; its actor resolves
// the caller's promise (or, not on the wire yet, a goroutine does).
func (s *state) settle(o core.Settle) {
	q := s.calls[o.Call]
	if q == nil {
		return
	}
	m := settleQuestion{err: excError(o.Err)}
	if r := o.Results; r != nil {
		in, _ := r.Content.(*inPayload)
		if in != nil {
			in.msg.CapTable().Reset(s.clients(r.CapTable)...)
			m.ptr = in.content
			q.results = in.msg
		} else {
			s.releaseCaps(r.CapTable)
		}
	}
	if q.msg != nil {
		q.msg.Release() // never sent
		q.msg = nil
	}
	if q.actor == nil {
		// Never on the wire: no actor settles it.
		s.retire(q)
		go q.settle(m.ptr, m.err, false) // never on the actor's goroutine: Resolve may block
		return
	}
	if q.pending != nil {
		return
	}
	m.err = q.pastDeadline(m.err, s.now) // as the caller gets it, metered or not
	if q.start != 0 {
		// Measured here, at the turn that read the Return, and
		// recorded after a turn that writes (recordMetered): not on the
		// question actor's goroutine, where the woken caller waits for
		// it to park.
		s.metered = append(s.metered, meteredCall{took: s.meterSince(q.start), method: q.method, err: m.err})
		q.meteredByConn.Store(true)
	}
	m.q = q
	q.outcome = m
	q.pending = &q.outcome
	q.actor.mbox.PostUserMessage(q.pending) // what ctx.Send does, without the registry lookup
}

// retire forgets a local call the core is done with.
func (s *state) retire(q *question) {
	if s.calls[q.call] == q {
		delete(s.calls, q.call)
	}
	if s.byQID[q.id] == q {
		delete(s.byQID, q.id)
	}
	delete(s.byAns, q.p.Answer())
	if q.stopWatch != nil {
		q.stopWatch()
	}
}

// redirect: a local call turned out to target one of our capabilities
// (an embargo lifted, a promise resolved to ours): it is delivered there
// with its params as they are, and its answer settles the caller.
func (s *state) redirect(o core.Redirect) {
	q := s.calls[o.Call]
	if q == nil {
		return
	}
	s.retire(q)
	l := s.locals.At(o.To.Ref)
	if l == nil || q.msg == nil {
		if q.msg != nil {
			q.msg.Release()
			q.msg = nil
		}
		go q.settle(capnp.Ptr{}, exc.New(exc.Failed, "capnp", "call redirected to a capability that is gone"), false)
		return
	}
	msg := q.msg
	q.msg = nil
	params, _ := q.rcall.Params()
	content, _ := params.Content()
	args := content.Struct()
	ans, release := l.client.SendCall(context.Background(), capnp.Send{Method: q.method, ArgsSize: args.Size(),
		PlaceArgs: func(st capnp.Struct) error { return st.CopyFrom(args) }})
	msg.Release()
	q.redirected.Store(&redirectedCall{ans: ans, release: release})
	go func() {
		st, err := ans.Struct()
		q.settle(st.ToPtr(), err, false)
	}()
}

// excError is a core error as callers see it: a capnp exception of its
// type, wrapping what it wraps.
func excError(err error) error {
	ce, ok := err.(*core.Error)
	if !ok {
		return err
	}
	return &exc.Exception{Type: exc.Type(ce.Type), Prefix: ce.Prefix, Cause: ce.Cause}
}
