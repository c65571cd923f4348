package core

import (
	"slices"
	"time"

	"github.com/vatactor/vatactor/internal/peakmap"
	"github.com/vatactor/vatactor/supervisor"
)

// An answer is one of the peer's Bootstraps or Calls, from its arrival
// until we have sent its Return and it has sent its Finish.
type answer struct {
	id        uint32
	method    Method
	bootstrap bool
	seq       uint64
	since     time.Time // when its Call arrived (Inspect)

	returned  bool
	finished  bool
	delivered bool      // a Deliver went out: the runner owes its Returned
	forward   *question // set: the call went back to the peer as this question

	results        *Payload   // once returned; CapTable: the answer's references
	err            error      // once returned with an exception
	resultExports  []uint32   // export ids the Return's descriptors counted
	releaseResults bool       // the Finish dropped the results' capabilities
	releaseParams  bool       // the params were never imported: the Return says so
	held           []heldCall // calls on its results made before it returned, in order
	epitaph        *supervisor.Epitaph
	callBytes      int64 // the Call's size, counted until the Return
	heldBytes      int64 // the Return's size, counted until the Finish
	capRefs        int   // CapAnswer caps naming its results

	resultsVal, wireVal Payload         // storage of its results and of the Return's
	wireDescs           []CapDescriptor // storage of the Return's descriptors, kept when the answer is reused
}

// answerOf returns the answer a CapAnswer names, in the table or retired.
func (c *Core) answerOf(cp Cap) *answer {
	if a := c.answers.At(cp.ID); a != nil && a.seq == cp.Gen {
		return a
	}
	return c.retired[cp.Gen]
}

// capAnswer is a capability in a's results as a CapAnswer (one more
// reference to them).
func (c *Core) capAnswer(a *answer, transform []uint16) Cap {
	a.capRefs++
	return Cap{Kind: CapAnswer, ID: a.id, Gen: a.seq, Transform: transform}
}

// releaseAnswerRef drops one CapAnswer reference to a's results.
func (c *Core) releaseAnswerRef(a *answer) {
	a.capRefs--
	if a.capRefs > 0 || c.retired[a.seq] != a {
		return
	}
	delete(c.retired, a.seq)
	if a.results != nil {
		c.releaseCaps(a.results.CapTable)
		a.results = nil
	}
	if a.forward == nil && len(a.held) == 0 {
		// Nothing names it any more (what this Step handed out of it is
		// the runner's until the next Step).
		c.retiredA = append(c.retiredA, a)
	}
}

// heldCall is a call pipelined on an answer still running.
type heldCall struct {
	caller    caller
	transform []uint16
}

// resultCap returns the capability at transform in a's results.
func (a *answer) resultCap(transform []uint16) (Cap, error) {
	if a.err != nil {
		return Cap{}, a.err
	}
	return locate(a.results, transform)
}

// RootCap is the content of a payload whose root is its one capability
// (a bootstrap's results).
type RootCap struct{}

// Locate implements Content.
func (RootCap) Locate(transform []uint16) (int, bool, error) {
	if len(transform) > 0 {
		return 0, false, errNotAStruct
	}
	return 0, true, nil
}

var errNotAStruct = newError(ExcFailed, "the field is not a struct")

func (c *Core) newAnswer(id uint32, m Method) (*answer, error) {
	if _, dup := c.answers.Get(id); dup {
		return nil, protocolErrorf(ErrDuplicateID, "question %d is already in flight", id)
	}
	if lim := c.cfg.Limits.MaxHeldAnswers; c.answers.Len() >= lim {
		return nil, budgetErrorf("MaxHeldAnswers", int64(lim), "the peer holds %d calls without their Finish", c.answers.Len())
	}
	c.seq++
	var a *answer
	if free := &c.sc.freeA; len(*free) > 0 {
		n := len(*free)
		a, *free = (*free)[n-1], (*free)[:n-1]
		// Wiped when it was freed; its slices keep their storage.
		*a = answer{id: id, method: m, seq: c.seq, since: c.now, held: a.held, wireDescs: a.wireDescs}
	} else {
		a = &answer{id: id, method: m, seq: c.seq, since: c.now}
	}
	c.answers.Set(id, a)
	c.running++
	return a, nil
}

// wipe empties a retired answer for reuse, keeping its slices' storage
// (the runner keeps nothing of a Step's outputs past its turn: a Return's
// descriptors included), so that a free answer holds nothing alive.
func (a *answer) wipe() {
	held, wireDescs := a.held[:0], a.wireDescs[:0]
	clear(held[:cap(held)])
	clear(wireDescs[:cap(wireDescs)])
	*a = answer{held: held, wireDescs: wireDescs}
}

// admit answers a at once when it cannot run: refused by a drain, or over
// MaxAnswers or MaxCallBytes. It reports whether it did.
func (c *Core) admit(a *answer) bool {
	var err error
	var why RefusedWhy
	switch lim := c.cfg.Limits.MaxCallBytes; {
	case c.life.phase == phaseDraining:
		c.rep().Refused++
		ep := c.life.epitaph
		a.epitaph = &ep
		why, err = RefusedDraining, newError(ExcDisconnected, "call refused, not processed: the connection is shutting down")
	case c.running > c.cfg.MaxAnswers:
		why, err = RefusedOverloaded, newError(ExcOverloaded, "%v: more than %d calls in flight", ErrTooManyCalls, c.cfg.MaxAnswers)
	case c.callBytes > lim:
		why, err = RefusedBudget, newError(ExcOverloaded, "%v: more than %d bytes of calls in flight (MaxCallBytes)", ErrTooManyCalls, lim)
	default:
		return true
	}
	c.emit(put(&c.o.emit, Emit{Event: put(&c.o.refused, Refused{Why: why})}))
	a.releaseParams = true
	c.answerReturn(a, nil, err)
	return false
}

// receiveBootstrap answers with our bootstrap capability.
func (c *Core) receiveBootstrap(m Bootstrap) error {
	a, err := c.newAnswer(m.QuestionID, bootstrapMethod)
	if err != nil {
		return err
	}
	a.bootstrap = true
	if !c.admit(a) {
		return nil
	}
	if c.cfg.Bootstrap.Kind == CapNone {
		c.answerReturn(a, nil, newError(ExcFailed, "this vat serves no bootstrap capability"))
		return nil
	}
	c.retainCap(c.cfg.Bootstrap)
	c.answerReturn(a, &Payload{Content: RootCap{}, CapTable: []Cap{c.cfg.Bootstrap}}, nil)
	return nil
}

// receiveCall routes the peer's call to its target.
func (c *Core) receiveCall(m Call) error {
	a, err := c.newAnswer(m.QuestionID, m.Method)
	if err != nil {
		return err
	}
	a.callBytes = int64(m.Params.Size)
	c.callBytes += a.callBytes
	if !c.admit(a) {
		return nil
	}
	if m.ResultsElsewhere {
		a.releaseParams = true
		c.answerReturn(a, nil, newError(ExcUnimplemented, "results can only be sent to the caller"))
		return nil
	}
	caps, err := c.decodeCaps(nil, m.Params.Caps)
	if err != nil {
		return err
	}
	cl := caller{answer: a, method: m.Method,
		params: Payload{Content: m.Params.Content, CapTable: caps, Size: m.Params.Size}}
	switch m.Target.Kind {
	case ImportedCap:
		e := c.exports.Get(m.Target.ID)
		if e == nil {
			c.releaseCaps(caps)
			return protocolErrorf(ErrUnknownID, "call on export %d, which we do not export (released?)", m.Target.ID)
		}
		c.route(cl, e.cap, 0)
	case PromisedAnswer:
		pa := c.answers.At(m.Target.ID)
		if pa == nil || pa == a {
			c.releaseCaps(caps)
			return protocolErrorf(ErrUnknownID, "call pipelined on question %d, which is not in flight", m.Target.ID)
		}
		if !pa.returned {
			pa.held = append(pa.held, heldCall{caller: cl, transform: m.Target.Transform})
			return nil
		}
		to, err := pa.resultCap(m.Target.Transform)
		if err != nil {
			c.fail(cl, err)
			return nil
		}
		c.route(cl, to, 0)
	default:
		c.releaseCaps(caps)
		return protocolErrorf(ErrMalformed, "call target of unknown kind %d", m.Target.Kind)
	}
	return nil
}

// returned: a call we delivered has returned.
func (c *Core) returned(m Returned) {
	a := c.answers.At(m.Answer)
	if a == nil || a.returned || !a.delivered {
		return // abandoned (the connection is ending), or not ours to answer
	}
	results := m.Results
	if results != nil {
		a.resultsVal = *results
		a.resultsVal.CapTable = slices.Clone(results.CapTable)
		c.retainCaps(a.resultsVal.CapTable)
		results = &a.resultsVal
	}
	c.answerReturn(a, results, m.Err)
}

// answerReturn sends a's Return: results (whose references it takes) or
// err. The calls held on it go on to the capabilities in its results.
func (c *Core) answerReturn(a *answer, results *Payload, err error) {
	if a.returned {
		if results != nil {
			c.releaseCaps(results.CapTable)
		}
		return
	}
	a.returned = true
	c.running--
	c.callBytes -= a.callBytes
	var ret Return
	ret.AnswerID = a.id
	ret.ReleaseParamCaps = a.releaseParams
	if err == nil {
		if results == nil {
			results = &Payload{}
		}
		descs, ids, eerr := c.encodeCaps(a.wireDescs, results.CapTable)
		a.wireDescs = descs
		if eerr != nil {
			c.releaseCaps(results.CapTable)
			results, err = nil, eerr
		} else {
			a.resultExports = ids
			a.wireVal = Payload{Content: results.Content, Caps: descs, Size: results.Size}
			ret.Results = &a.wireVal
			// Calls pipelined on the results go where the Return said.
			c.innermostCaps(results.CapTable)
		}
	}
	if err != nil {
		ex := exceptionOf(err)
		ex.Epitaph = a.epitaph
		ret.Exception = ex
	}
	a.results, a.err = results, err
	c.send(put(&c.o.ret, ret))
	held := a.held
	a.held = nil
	for _, h := range held {
		to, err := a.resultCap(h.transform)
		if err != nil {
			c.fail(h.caller, err)
			continue
		}
		c.route(h.caller, to, 0)
	}
	// Returned, it holds no more calls: its storage is kept, for the
	// answer's next use.
	clear(held)
	a.held = held[:0]
	c.resolveAnswerExports(a)
	if a.finished {
		c.dropAnswer(a)
		return
	}
	if results != nil {
		a.heldBytes = int64(results.Size)
		c.answerBytes += a.heldBytes
		if lim := c.cfg.Limits.MaxAnswerBytes; c.answerBytes > lim {
			c.protocolError(budgetErrorf("MaxAnswerBytes", lim, "%d bytes of results held for calls the peer has not finished", c.answerBytes))
		}
	}
}

// receiveFinish: the peer is done with one of its questions.
func (c *Core) receiveFinish(f Finish) error {
	a := c.answers.At(f.QuestionID)
	if a == nil {
		return protocolErrorf(ErrUnknownID, "finish for question %d, which is not in flight", f.QuestionID)
	}
	if a.finished {
		return protocolErrorf(ErrDuplicateID, "second finish for question %d", a.id)
	}
	a.finished = true
	a.releaseResults = f.ReleaseResultCaps
	if a.returned {
		c.dropAnswer(a)
		return nil
	}
	// Still running: the callee is told; its Return is still sent.
	if a.delivered {
		c.emit(put(&c.o.cancel, CancelAnswer{Answer: a.id}))
	}
	if q := a.forward; q != nil {
		c.sendFinish(q, true)
	}
	return nil
}

// dropAnswer removes a returned answer once its Finish is in: the
// references its results gave the peer (if the Finish dropped them) and
// the answer's own.
func (c *Core) dropAnswer(a *answer) {
	c.answerBytes -= a.heldBytes
	a.heldBytes = 0
	if a.releaseResults && !c.life.phase.closing() {
		for _, id := range a.resultExports {
			if id != noExport {
				_ = c.releaseExport(id, 1)
			}
		}
	}
	a.resultExports = nil
	if c.answers.At(a.id) == a {
		c.answers.Delete(a.id)
		c.emit(put(&c.o.done, AnswerDone{Answer: a.id}))
	}
	if a.capRefs > 0 {
		peakmap.Set(&c.retired, a.seq, a) // CapAnswer caps still name its results
		return
	}
	if a.results != nil {
		c.releaseCaps(a.results.CapTable)
		a.results = nil
	}
	if a.returned && a.forward == nil && len(a.held) == 0 {
		// Returned, so no queue holds its call; nothing else names it
		// (what this Step handed out of it is the runner's until the
		// next Step).
		c.retiredA = append(c.retiredA, a)
	}
}
