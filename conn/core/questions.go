package core

import (
	"errors"
	"fmt"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/vatactor/vatactor/internal/peakmap"
)

// A question is one of our Bootstraps or Calls on the wire, from the
// message until both its Return has arrived and our Finish has gone.
type question struct {
	id        uint32
	call      CallID  // the local call it answers (0: a forward)
	forward   *answer // set: it carries the peer's call back to the peer
	bootstrap bool
	probe     bool // a keep-alive probe (KeepAlive): nobody's call
	method    Method
	state     questionState
	seq       uint64    // creation order
	since     time.Time // when it was made (Inspect)

	paramExports []uint32   // export ids the params' descriptors counted (noExport: none)
	pipelined    [][]uint16 // transforms of calls sent on its answer before the Return
	results      *Payload   // once returned with results; CapTable: the question's own references
	err          error      // once returned with an exception
	embargoes    []*embargo // on capabilities of its results pointing back to us
	finishLater  bool       // Finish asked for while embargoes are up or capRefs held
	settled      bool       // its local call has had its Settle
	capRefs      int        // CapQuestion caps the core holds (resolutions, results)

	resultsVal, settleVal Payload // storage of results and of the Settle's copy
	settleCaps            []Cap   // storage of the Settle's CapTable, kept when the question is reused
	resultsCaps           []Cap   // storage of its results' CapTable, likewise
}

// settle gives q's local call its one Settle.
func (c *Core) settle(q *question, results *Payload, err error) {
	if q.settled || q.call == 0 {
		return
	}
	q.settled = true
	c.emit(put(&c.o.settle, Settle{Call: q.call, Results: results, Err: err}))
}

// questionState is where a question is in its life on the wire. Each
// constant's doc says where it may go next.
type questionState uint8

const (
	// questionWaiting: the Call (or Bootstrap) is sent; neither its
	// Return nor our Finish has gone by. Next: questionReturned (its
	// Return), questionFinishing (our Finish first: a cancel or finish).
	questionWaiting questionState = iota
	// questionReturned: its Return is in; our Finish is not sent (calls
	// may be pipelined on it still). Next: questionDone (Finish sent).
	questionReturned
	// questionFinishing: our Finish went first; its Return is still to
	// come, and is dropped when it does. Next: questionDone.
	questionFinishing
	// questionDone: Return in and Finish sent; the question is retired.
	questionDone
)

var questionStateNames = [...]string{"waiting", "returned", "finishing", "done"}

func (st questionState) String() string { return questionStateNames[st] }

func (q *question) returned() bool {
	return q.state == questionReturned || q.state == questionDone
}

func (q *question) finishSent() bool {
	return q.state == questionFinishing || q.state == questionDone
}

const noExport = ^uint32(0)

// caller is a call being routed: a local one (local), or one of the
// peer's (answer). The params' CapTable references of the peer's call
// belong to it; a local call's are the runner's.
type caller struct {
	local  CallID
	answer *answer
	method Method
	params Payload
}

// dropParams releases the references cl's params hold, if they are its.
func (c *Core) dropParams(cl caller) {
	if cl.answer != nil {
		c.releaseCaps(cl.params.CapTable)
	}
}

// maxRouteDepth bounds how many resolutions a call follows; a longer
// chain is a loop the resolve checks did not see.
const maxRouteDepth = 64

// localCall: local code calls m.Target.
func (c *Core) localCall(m LocalCall) {
	cl := caller{local: m.Call, method: m.Method, params: m.Params}
	if c.life.phase == phaseDraining {
		c.fail(cl, errLocalDraining())
		return
	}
	c.route(cl, m.Target, 0)
}

// localBootstrap: local code asks for the peer's bootstrap capability.
func (c *Core) localBootstrap(call CallID) {
	if c.life.phase == phaseDraining {
		c.emit(put(&c.o.settle, Settle{Call: call, Err: errLocalDraining()}))
		return
	}
	q := c.newQuestion(caller{local: call, method: bootstrapMethod})
	q.bootstrap = true
	c.send(put(&c.o.bootstrap, Bootstrap{QuestionID: q.id}))
}

// bootstrapMethod names a bootstrap where a method is expected.
var bootstrapMethod = Method{}

// wipe empties a retired question for reuse, keeping its slices'
// storage (the runner keeps nothing of a Step's outputs past its turn:
// Settle's CapTable included), so that a free question holds nothing
// alive.
func (q *question) wipe() {
	pipelined, settleCaps, resultsCaps := q.pipelined[:0], q.settleCaps[:0], q.resultsCaps[:0]
	clear(pipelined[:cap(pipelined)])
	clear(settleCaps[:cap(settleCaps)])
	clear(resultsCaps[:cap(resultsCaps)])
	*q = question{pipelined: pipelined, settleCaps: settleCaps, resultsCaps: resultsCaps}
}

func (c *Core) newQuestion(cl caller) *question {
	c.seq++
	var q *question
	if free := &c.sc.freeQ; len(*free) > 0 {
		n := len(*free)
		q, *free = (*free)[n-1], (*free)[:n-1]
		// Wiped when it was freed; its slices keep their storage.
		*q = question{call: cl.local, forward: cl.answer, method: cl.method, seq: c.seq, since: c.now,
			pipelined: q.pipelined, settleCaps: q.settleCaps, resultsCaps: q.resultsCaps}
	} else {
		q = &question{call: cl.local, forward: cl.answer, method: cl.method, seq: c.seq, since: c.now}
	}
	q.id = c.questions.Add(q)
	if cl.local != 0 {
		peakmap.Set(&c.byCall, cl.local, q)
		c.peaks.byCall.Note(len(c.byCall))
		c.emit(put(&c.o.spawn, SpawnChild{Child: Child{Kind: QuestionChild, ID: q.id, Call: cl.local}}))
	}
	if cl.answer != nil {
		cl.answer.forward = q
	}
	return q
}

// route sends a call where its target is. A local call follows what its
// target has resolved to and waits behind an embargo; the peer's call on
// a capability of the peer goes back on the wire to exactly that
// capability (never to what it resolved to later), so that a Disembargo
// the peer sends after it takes the same path (the Tribble rule).
func (c *Core) route(cl caller, to Cap, depth int) {
	if depth > maxRouteDepth {
		c.fail(cl, newError(ExcFailed, "%w: a call followed more than %d resolutions", ErrResolveLoop, maxRouteDepth))
		return
	}
	switch to.Kind {
	case CapNone:
		c.fail(cl, newError(ExcFailed, "call on a null capability"))
	case CapBroken:
		c.fail(cl, to.Err)
	case CapLocal:
		if to.Promise {
			// Calls that reach an exported promise of ours through the
			// connection wait here, in one queue, not in the runner's
			// promise: when it resolves they go on in the order they
			// came (an embargo lifted by the peer counts on it), ahead
			// of any made after.
			if e := c.exports.Get(c.exportKey.At(to.Ref)); e != nil && e.ref == to.Ref {
				if !e.resolved {
					e.held = append(e.held, cl)
					return
				}
				c.route(cl, e.cap, depth+1)
				return
			}
		}
		if a := cl.answer; a != nil {
			a.delivered = true
			c.emit(put(&c.o.deliver, Deliver{Answer: a.id, To: to, Method: cl.method, Params: cl.params}))
			return
		}
		c.emit(put(&c.o.redirect, Redirect{Call: cl.local, To: to, Method: cl.method, Params: cl.params}))
	case CapImport:
		im := c.imports[to.ID]
		if im == nil {
			c.fail(cl, newError(ExcFailed, "call on a released capability (import %d)", to.ID))
			return
		}
		if cl.answer == nil {
			switch {
			case im.embargo != nil:
				im.embargo.held = append(im.embargo.held, cl)
				return
			case im.broken != nil:
				c.fail(cl, im.broken)
				return
			case im.resolved != nil:
				c.route(cl, *im.resolved, depth+1)
				return
			}
		}
		im.callsSent = true
		c.sendCall(cl, Target{Kind: ImportedCap, ID: to.ID})
	case CapQuestion:
		q := c.byCall[to.Call]
		if q == nil || q.finishSent() {
			c.fail(cl, newError(ExcFailed, "pipelined call on an answer that was already finished"))
			return
		}
		if q.returned() && cl.answer == nil {
			if e := q.embargoOn(to.Transform); e != nil {
				e.held = append(e.held, cl)
				return
			}
			next, err := q.resultCap(to.Transform)
			if err != nil {
				c.fail(cl, err)
				return
			}
			c.route(cl, next, depth+1)
			return
		}
		if !q.returned() {
			q.pipelined = append(q.pipelined, to.Transform)
		}
		c.sendCall(cl, Target{Kind: PromisedAnswer, ID: q.id, Transform: to.Transform})
	case CapAnswer:
		a := c.answerOf(to)
		if a == nil {
			c.fail(cl, newError(ExcFailed, "call on a capability in an answer that is gone"))
			return
		}
		if !a.returned {
			a.held = append(a.held, heldCall{caller: cl, transform: to.Transform})
			return
		}
		next, err := a.resultCap(to.Transform)
		if err != nil {
			c.fail(cl, err)
			return
		}
		c.route(cl, next, depth+1)
	default:
		c.fail(cl, newError(ExcFailed, "call on a capability of unknown kind %d", to.Kind))
	}
}

// sendCall puts cl on the wire as a new question to target.
func (c *Core) sendCall(cl caller, target Target) {
	descs, ids, err := c.encodeCaps(nil, cl.params.CapTable)
	if err != nil {
		c.fail(cl, err)
		return
	}
	q := c.newQuestion(cl)
	q.paramExports = ids
	c.send(put(&c.o.call, Call{QuestionID: q.id, Target: target, Method: cl.method,
		Params: Payload{Content: cl.params.Content, Caps: descs, Size: cl.params.Size}}))
	// Only now: a Release of an import the params named must not overtake
	// the Call that names it.
	c.dropParams(cl)
}

// fail ends cl with err: a local call settles, the peer's call returns.
func (c *Core) fail(cl caller, err error) {
	c.dropParams(cl)
	if a := cl.answer; a != nil {
		c.answerReturn(a, nil, err)
		return
	}
	c.emit(put(&c.o.settle, Settle{Call: cl.local, Err: err}))
}

// embargoOn returns the embargo on the capability at transform of q's
// results, if one is up.
func (q *question) embargoOn(transform []uint16) *embargo {
	for _, e := range q.embargoes {
		if slices.Equal(e.transform, transform) {
			return e
		}
	}
	return nil
}

// resultCap returns the capability at transform in q's results.
func (q *question) resultCap(transform []uint16) (Cap, error) {
	if q.err != nil {
		return Cap{}, q.err
	}
	return locate(q.results, transform)
}

// locate returns the capability at transform in p.
func locate(p *Payload, transform []uint16) (Cap, error) {
	if p == nil || p.Content == nil {
		return Cap{}, newError(ExcFailed, "pipelined call on an answer with no results")
	}
	i, ok, err := p.Content.Locate(transform)
	switch {
	case err != nil:
		return Cap{}, newError(ExcFailed, "pipelined call: %v", err)
	case !ok:
		return Cap{}, newError(ExcFailed, "pipelined call on a field that is null")
	case i < 0 || i >= len(p.CapTable):
		return Cap{}, newError(ExcFailed, "pipelined call on capability %d of a table of %d", i, len(p.CapTable))
	}
	return p.CapTable[i], nil
}

// receiveReturn: the answer to one of our questions.
func (c *Core) receiveReturn(r Return) error {
	q := c.questions.Get(r.AnswerID)
	if q == nil {
		return protocolErrorf(ErrUnknownID, "return for question %d, which is not in flight", r.AnswerID)
	}
	if q.returned() {
		return protocolErrorf(ErrDuplicateID, "second return for question %d", q.id)
	}
	if r.Other {
		return protocolErrorf(ErrMalformed, "return of a kind we never ask for (question %d)", q.id)
	}
	finished := q.finishSent()
	if q.state == questionWaiting {
		q.state = questionReturned
	} else {
		q.state = questionDone
	}
	if err := c.releaseParamCaps(q, r.ReleaseParamCaps); err != nil {
		return err
	}
	if finished {
		// Cancelled or finished before the answer came: our Finish asked
		// the peer to release the results' capabilities; nothing of them
		// is imported.
		if q.forward != nil {
			c.answerReturn(q.forward, nil, errCanceled)
		}
		c.retireQuestion(q)
		return nil
	}
	var results *Payload
	var err error
	switch {
	case r.Results != nil:
		caps, derr := c.decodeCaps(q.resultsCaps, r.Results.Caps)
		q.resultsCaps = caps
		if derr != nil {
			return derr
		}
		q.resultsVal = Payload{Content: r.Results.Content, CapTable: caps, Size: r.Results.Size}
		results = &q.resultsVal
	case r.Exception != nil:
		err = decodeException(*r.Exception, c.cfg.Limits.MaxReasonLength)
	default:
		err = errCanceled
	}
	q.results, q.err = results, err
	if results != nil {
		c.embargoResults(q, r.Results.Caps)
	}
	switch {
	case q.forward != nil:
		// The peer's call went back to the peer: its answer is this one's
		// results, whose references the answer takes.
		a := q.forward
		q.results = nil
		c.sendFinish(q, false)
		c.answerReturn(a, results, err)
	case q.call != 0:
		out := results
		if results != nil {
			// The caller gets its own references; the question keeps one
			// of each import for calls pipelined on its answer.
			c.retainCaps(results.CapTable)
			q.settleVal = *results
			cp := &q.settleVal
			q.settleCaps = append(q.settleCaps[:0], results.CapTable...)
			cp.CapTable = q.settleCaps
			// A capability under embargo is given as the question's: calls
			// on it come here and wait behind the embargo (local code
			// would otherwise call ours at once).
			for _, e := range q.embargoes {
				if i, ok, _ := results.Content.Locate(e.transform); ok && i < len(cp.CapTable) {
					c.releaseCap(cp.CapTable[i])
					cp.CapTable[i] = Cap{Kind: CapQuestion, Call: q.call, Transform: e.transform}
					q.capRefs++
				}
			}
			out = cp
		}
		c.settle(q, out, err)
		if (results == nil || len(results.CapTable) == 0) && len(q.embargoes) == 0 && q.capRefs == 0 {
			// Nothing of the answer is the peer's to keep: finish it now,
			// as go-capnp does, so that code that never releases its
			// answers leaves nothing held on either side. The caller
			// keeps its results until it releases them (its LocalFinish
			// then finds nothing to do); calls pipelined on the answer
			// from now on are local code's, on the results.
			c.finish(q, Finish{QuestionID: q.id, Early: true})
		}
	}
	c.retireQuestion(q)
	return nil
}

// releaseParamCaps: the peer's Return says whether it dropped the
// references our Call's params gave it.
func (c *Core) releaseParamCaps(q *question, released bool) error {
	ids := q.paramExports
	q.paramExports = nil
	if !released {
		return nil
	}
	for _, id := range ids {
		if id != noExport {
			if err := c.releaseExport(id, 1); err != nil {
				return err
			}
		}
	}
	return nil
}

// embargoResults: calls we pipelined on q went to the peer, which
// delivers them to the capabilities in its results. Where such a
// capability is one of ours (the descriptor says so, whatever ours has
// resolved to since), calls made on it from now on would overtake them:
// they wait behind an embargo until the peer reflects our Disembargo.
// Where it is the peer's, the calls are counted as sent on it (a later
// resolution of it to one of ours embargoes them too).
func (c *Core) embargoResults(q *question, descs []CapDescriptor) {
	for i, tr := range q.pipelined {
		if slices.ContainsFunc(q.pipelined[:i], func(s []uint16) bool { return slices.Equal(s, tr) }) {
			continue // seen already
		}
		cp, err := q.resultCap(tr)
		if err != nil {
			continue
		}
		switch i, _, _ := q.results.Content.Locate(tr); {
		case pointsBack(descs[i].Kind):
			e := &embargo{question: q, transform: tr}
			e.id = c.embargoes.Add(e)
			q.embargoes = append(q.embargoes, e)
			c.send(put(&c.o.disembargo, Disembargo{Target: Target{Kind: PromisedAnswer, ID: q.id, Transform: tr},
				Context: SenderLoopback, EmbargoID: e.id}))
		case cp.Kind == CapImport:
			if im := c.imports[cp.ID]; im != nil {
				im.callsSent = true
			}
		}
	}
	clear(q.pipelined)
	q.pipelined = q.pipelined[:0] // its storage, for the question's next use
}

// pointsBack reports whether a descriptor names one of the receiver's own
// capabilities.
func pointsBack(k DescriptorKind) bool { return k == ReceiverHosted || k == ReceiverAnswer }

// localFinish: local code is done with the answer of call.
func (c *Core) localFinish(call CallID) {
	q := c.byCall[call]
	if q == nil || q.finishSent() {
		return
	}
	if len(q.embargoes) > 0 || q.capRefs > 0 {
		// A Disembargo's reflection, or a capability the core holds, names
		// the question: its Finish waits for them.
		q.finishLater = true
		return
	}
	returned := q.returned()
	c.sendFinish(q, !returned)
	if !returned {
		c.settle(q, nil, newError(ExcFailed, "answer finished before it arrived"))
	}
	c.retireQuestion(q)
}

// localCancel: the caller's context ended before the answer came.
func (c *Core) localCancel(call CallID, err error) {
	q := c.byCall[call]
	if q == nil || q.state != questionWaiting {
		return
	}
	if err == nil {
		err = errCanceled
	}
	c.sendFinish(q, true)
	// It was sent: the peer may have run it, or part of it.
	c.settle(q, nil, fmt.Errorf("%w (%w: the call had been sent)", err, ErrOutcomeUnknown))
}

// sendFinish tells the peer we are done with q. releaseResultCaps: we
// will not import the capabilities of its results (no Return yet).
func (c *Core) sendFinish(q *question, releaseResultCaps bool) {
	c.finish(q, Finish{QuestionID: q.id, ReleaseResultCaps: releaseResultCaps})
}

// finish sends f, q's Finish, once.
func (c *Core) finish(q *question, f Finish) {
	switch q.state {
	case questionWaiting:
		q.state = questionFinishing
	case questionReturned:
		q.state = questionDone
	default:
		return
	}
	c.send(put(&c.o.finish, f))
}

// retireQuestion removes q once its Return is in and its Finish sent.
func (c *Core) retireQuestion(q *question) {
	if q.state != questionDone || c.questions.Get(q.id) != q {
		return
	}
	c.questions.Remove(q.id)
	if q.probe {
		c.life.probes--
	}
	if q.results != nil {
		c.releaseCaps(q.results.CapTable)
		q.results = nil
	}
	if q.call != 0 {
		delete(c.byCall, q.call)
		c.emit(put(&c.o.stop, StopChild{Child: Child{Kind: QuestionChild, ID: q.id, Call: q.call}}))
		if q.forward == nil {
			// Nothing names it any more; what this Step handed out of it
			// (a Settle's results) is the runner's until the next Step.
			c.retiredQ = append(c.retiredQ, q)
		}
	}
}

// decodeException turns a wire Exception into an error of its type. One
// that carries an epitaph is a call refused by a draining peer: it wraps
// ErrNotProcessed.
func decodeException(e Exception, maxText int) error {
	reason := clip(e.Reason, maxText)
	if e.Epitaph != nil {
		return notProcessed("refused by the peer (epitaph %v): %s", *e.Epitaph, reason)
	}
	return &Error{Type: e.Type, Prefix: "remote", Cause: errors.New(reason)}
}

// exceptionOf is err on the wire.
func exceptionOf(err error) *Exception {
	return &Exception{Type: TypeOf(err), Reason: err.Error()}
}

// clip cuts s to at most n bytes (on a rune boundary), saying so.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s… (%d bytes, cut)", s[:cut], len(s))
}

var errCanceled = newError(ExcFailed, "call canceled")
