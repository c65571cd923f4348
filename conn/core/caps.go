package core

import (
	"slices"

	"github.com/vatactor/vatactor/internal/peakmap"
)

// An export is a capability of ours that the peer holds references to.
type export struct {
	id       uint32
	cap      Cap    // where calls on it go: the capability, or a promise's resolution
	ref      Ref    // the identity it is exported under (0: none, never reused)
	promise  bool   // exported as a promise (senderPromise)
	resolved bool   // the promise has resolved (cap is what to)
	wireRefs uint32 // descriptors sent, less the peer's Releases
	seq      uint64
	held     []caller // a promise's: the peer's calls on it until it resolves
}

// An importEntry is a capability of the peer that we hold.
type importEntry struct {
	id        uint32
	promise   bool
	wireRefs  uint32 // descriptors received: the count our Release gives back
	localRefs int    // references held on our side (Caps handed out, resolutions, embargoes)
	callsSent bool   // calls went to the peer on it (an embargo is needed if it resolves to us)
	resolved  *Cap   // a promise's resolution (it holds a reference if an import)
	broken    error  // a promise that broke
	embargo   *embargo
}

// An embargo holds our calls on a capability that has turned out to be
// ours, until the peer reflects the Disembargo sent after the calls that
// went to it before (rpc.capnp, Disembargo).
type embargo struct {
	id        uint32
	imp       *importEntry // an import resolved to one of ours, or
	question  *question    // the capability at transform of a question's results
	transform []uint16
	held      []caller // in the order they were made
}

// encodeCaps describes the capabilities of a payload we send, in dst's
// storage (nil: new). ids has the export each descriptor counted
// (noExport: none), nil if none did.
func (c *Core) encodeCaps(dst []CapDescriptor, caps []Cap) ([]CapDescriptor, []uint32, error) {
	if len(caps) == 0 {
		return nil, nil, nil
	}
	descs := slices.Grow(dst[:0], len(caps))[:len(caps)]
	var ids []uint32
	for i, cp := range caps {
		d, id, err := c.encodeCap(cp)
		if err != nil {
			for _, id := range ids {
				if id != noExport {
					_ = c.releaseExport(id, 1)
				}
			}
			return nil, nil, err
		}
		descs[i] = d
		if id != noExport && ids == nil {
			ids = make([]uint32, len(caps))
			for j := range ids {
				ids[j] = noExport
			}
		}
		if ids != nil {
			ids[i] = id
		}
	}
	return descs, ids, nil
}

// encodeCap describes one capability for the peer, exporting it if it is
// ours; it returns the export it counted, or noExport.
func (c *Core) encodeCap(cp Cap) (CapDescriptor, uint32, error) {
	switch cp.Kind {
	case CapNone:
		return CapDescriptor{Kind: NoCap}, noExport, nil
	case CapImport:
		if im := c.imports[cp.ID]; im != nil {
			return CapDescriptor{Kind: ReceiverHosted, ID: cp.ID}, noExport, nil
		}
		return c.exportNew(Cap{Kind: CapBroken, Err: newError(ExcFailed, "capability released (import %d)", cp.ID)}, false)
	case CapQuestion:
		if q := c.byCall[cp.Call]; q != nil && !q.finishSent() {
			return CapDescriptor{Kind: ReceiverAnswer, ID: q.id, Transform: cp.Transform}, noExport, nil
		}
		return c.exportNew(Cap{Kind: CapBroken, Err: newError(ExcFailed, "capability of an answer already finished")}, false)
	case CapAnswer:
		a := c.answerOf(cp)
		switch {
		case a == nil:
			return c.exportNew(Cap{Kind: CapBroken, Err: newError(ExcFailed, "capability of an answer that is gone")}, false)
		case a.returned:
			to, err := a.resultCap(cp.Transform)
			if err != nil {
				to = Cap{Kind: CapBroken, Err: err}
			}
			return c.encodeCap(to)
		}
		c.retainCap(cp) // the export's
		c.answerExports++
		return c.exportNew(cp, true) // a promise, resolved when the answer returns
	case CapLocal:
		if id, ok := c.exportKey.Get(cp.Ref); ok {
			e := c.exports.Get(id)
			if e.resolved {
				return c.encodeCap(e.cap)
			}
			e.wireRefs++
			return e.descriptor(), id, nil
		}
		return c.exportNew(cp, cp.Promise)
	case CapBroken:
		return c.exportNew(cp, false)
	}
	return CapDescriptor{}, noExport, newError(ExcFailed, "capability of unknown kind %d", cp.Kind)
}

// innermost is the capability a descriptor of cp denotes: what cp has
// resolved to, as far as the peer is told. Calls that the peer makes on
// what we described (a promise's resolution, a capability in our results)
// go there, and nowhere cp resolves to later: a Disembargo the peer sends
// after them must find them on the same path (the Tribble rule).
func (c *Core) innermost(cp Cap) Cap {
	for range maxRouteDepth {
		switch cp.Kind {
		case CapAnswer:
			a := c.answerOf(cp)
			if a == nil || !a.returned {
				return cp
			}
			to, err := a.resultCap(cp.Transform)
			if err != nil {
				return Cap{Kind: CapBroken, Err: err}
			}
			cp = to
		case CapLocal:
			id, ok := c.exportKey.Get(cp.Ref)
			e := c.exports.Get(id)
			if !ok || e == nil || !e.resolved {
				return cp
			}
			cp = e.cap
		default:
			return cp
		}
	}
	return cp
}

// innermostCaps replaces each capability of caps (whose references it
// holds) by its innermost.
func (c *Core) innermostCaps(caps []Cap) {
	for i, cp := range caps {
		if in := c.innermost(cp); !in.Equal(cp) {
			c.retainCap(in)
			c.releaseCap(cp)
			caps[i] = in
		}
	}
}

// Equal reports whether a and b are the same capability (errors aside).
func (a Cap) Equal(b Cap) bool {
	return a.Kind == b.Kind && a.Ref == b.Ref && a.Promise == b.Promise && a.ID == b.ID && a.Call == b.Call &&
		a.Gen == b.Gen && slices.Equal(a.Transform, b.Transform)
}

func (e *export) descriptor() CapDescriptor {
	if e.promise {
		return CapDescriptor{Kind: SenderPromise, ID: e.id}
	}
	return CapDescriptor{Kind: SenderHosted, ID: e.id}
}

// exportNew adds an export of cp with one reference.
func (c *Core) exportNew(cp Cap, promise bool) (CapDescriptor, uint32, error) {
	if c.exports.Len() >= c.cfg.MaxExports {
		return CapDescriptor{}, noExport, newError(ExcFailed, "%v (MaxExports %d)", ErrTooManyExports, c.cfg.MaxExports)
	}
	c.seq++
	e := &export{cap: cp, promise: promise, wireRefs: 1, seq: c.seq}
	e.id = c.exports.Add(e)
	switch cp.Kind {
	case CapLocal:
		e.ref = cp.Ref
		c.exportKey.Set(cp.Ref, e.id)
	}
	c.emit(put(&c.o.spawn, SpawnChild{Child: Child{Kind: ExportChild, ID: e.id, Ref: e.ref}}))
	return e.descriptor(), e.id, nil
}

// releaseExport drops n of the peer's references to export id; at none
// the export is gone and its actor stops.
func (c *Core) releaseExport(id uint32, n uint32) error {
	e := c.exports.Get(id)
	if e == nil {
		return protocolErrorf(ErrUnknownID, "release of export %d, which we do not export", id)
	}
	if n > e.wireRefs {
		return protocolErrorf(ErrMalformed, "release of export %d ×%d, which the peer holds %d times", id, n, e.wireRefs)
	}
	e.wireRefs -= n
	if e.wireRefs > 0 {
		return nil
	}
	c.exports.Remove(id)
	if e.ref != 0 && c.exportKey.At(e.ref) == id {
		c.exportKey.Delete(e.ref)
	}
	// Calls the peer made on the promise before it let go of it: the
	// runner's promise takes them now (nothing can follow them here).
	held := e.held
	e.held = nil
	for _, cl := range held {
		if a := cl.answer; a != nil {
			a.delivered = true
			c.emit(put(&c.o.deliver, Deliver{Answer: a.id, To: e.cap, Method: cl.method, Params: cl.params}))
			continue
		}
		c.emit(put(&c.o.redirect, Redirect{Call: cl.local, To: e.cap, Method: cl.method, Params: cl.params}))
	}
	if e.resolved || e.cap.Kind == CapAnswer {
		if !e.resolved {
			c.answerExports--
		}
		c.releaseCap(e.cap)
	}
	c.emit(put(&c.o.stop, StopChild{Child: Child{Kind: ExportChild, ID: id, Ref: e.ref}}))
	return nil
}

// decodeCaps turns the descriptors the peer sent into capabilities on our
// side; each import in them gets one reference, the payload's.
func (c *Core) decodeCaps(dst []Cap, descs []CapDescriptor) ([]Cap, error) {
	if len(descs) == 0 {
		return nil, nil
	}
	if lim := c.cfg.Limits.MaxCapsPerMessage; len(descs) > lim {
		return nil, budgetErrorf("MaxCapsPerMessage", int64(lim), "a message with %d capabilities", len(descs))
	}
	caps := slices.Grow(dst[:0], len(descs))[:len(descs)]
	for i, d := range descs {
		cp, err := c.decodeCap(d)
		if err != nil {
			c.releaseCaps(caps[:i])
			return nil, err
		}
		caps[i] = cp
	}
	return caps, nil
}

func (c *Core) decodeCap(d CapDescriptor) (Cap, error) {
	switch d.Kind {
	case NoCap:
		return Cap{}, nil
	case SenderHosted, SenderPromise:
		im := c.imports[d.ID]
		if im == nil {
			if lim := c.cfg.Limits.MaxImports; len(c.imports) >= lim {
				return Cap{}, budgetErrorf("MaxImports", int64(lim), "the peer sent a %d-th capability", len(c.imports)+1)
			}
			im = &importEntry{id: d.ID, promise: d.Kind == SenderPromise}
			peakmap.Set(&c.imports, d.ID, im)
		}
		im.wireRefs++
		im.localRefs++
		return Cap{Kind: CapImport, ID: d.ID, Promise: im.promise && im.resolved == nil && im.broken == nil}, nil
	case ReceiverHosted:
		e := c.exports.Get(d.ID)
		if e == nil {
			return Cap{}, protocolErrorf(ErrUnknownID, "receiverHosted capability %d, which we do not export", d.ID)
		}
		c.retainCap(e.cap)
		return e.cap, nil
	case ReceiverAnswer:
		a := c.answers.At(d.ID)
		if a == nil {
			return Cap{}, protocolErrorf(ErrUnknownID, "receiverAnswer in question %d, which is not in flight", d.ID)
		}
		if !a.returned {
			return c.capAnswer(a, d.Transform), nil
		}
		to, err := a.resultCap(d.Transform)
		if err != nil {
			return Cap{Kind: CapBroken, Err: err}, nil
		}
		c.retainCap(to)
		return to, nil
	case ThirdPartyHosted:
		return Cap{Kind: CapBroken, Err: newError(ExcUnimplemented, "three-party handoff is not supported")}, nil
	}
	return Cap{}, protocolErrorf(ErrMalformed, "capability descriptor of unknown kind %d", d.Kind)
}

// retainCap takes one more reference to cp (imports and answers' results
// are counted).
func (c *Core) retainCap(cp Cap) {
	switch cp.Kind {
	case CapImport:
		if im := c.imports[cp.ID]; im != nil {
			im.localRefs++
		}
	case CapAnswer:
		if a := c.answerOf(cp); a != nil {
			a.capRefs++
		}
	case CapQuestion:
		if q := c.byCall[cp.Call]; q != nil {
			q.capRefs++
		}
	}
}

func (c *Core) retainCaps(caps []Cap) {
	for _, cp := range caps {
		c.retainCap(cp)
	}
}

func (c *Core) releaseCaps(caps []Cap) {
	for _, cp := range caps {
		c.releaseCap(cp)
	}
}

// releaseCap drops one reference to cp; an import whose last reference
// goes is released to the peer with every reference it sent us.
func (c *Core) releaseCap(cp Cap) {
	switch cp.Kind {
	case CapAnswer:
		if a := c.answerOf(cp); a != nil {
			c.releaseAnswerRef(a)
		}
		return
	case CapQuestion:
		if q := c.byCall[cp.Call]; q != nil {
			q.capRefs--
			if q.capRefs == 0 && q.finishLater && len(q.embargoes) == 0 {
				q.finishLater = false
				c.localFinish(q.call)
			}
		}
		return
	}
	if cp.Kind != CapImport {
		return
	}
	im := c.imports[cp.ID]
	if im == nil {
		return
	}
	im.localRefs--
	if im.localRefs > 0 {
		return
	}
	delete(c.imports, im.id)
	if !c.life.peerGone {
		c.send(put(&c.o.release, Release{ID: im.id, Count: im.wireRefs}))
	}
	if im.resolved != nil {
		r := *im.resolved
		im.resolved = nil
		c.releaseCap(r)
	}
}

// localRelease: local code drops one reference.
func (c *Core) localRelease(cp Cap) { c.releaseCap(cp) }

// localResolved: one of our promises has resolved. Each export of it
// tells the peer with a Resolve; calls on it from now on go to to (and,
// where to is the peer's, to exactly that capability: see route).
func (c *Core) localResolved(ref Ref, to Cap) {
	id, ok := c.exportKey.Get(ref)
	e := c.exports.Get(id)
	if !ok || e == nil || !e.promise || e.resolved {
		return
	}
	if c.reaches(to, func(cp Cap) bool { return cp.Kind == CapLocal && cp.Ref == ref }) {
		// Resolved to itself through capabilities of the peer (a
		// question's results that name this promise): calls on it would
		// go between the vats for ever.
		to = Cap{Kind: CapBroken, Err: newError(ExcFailed, "%w: a promise resolved to itself through the peer's capabilities", ErrResolveLoop)}
	}
	c.retainCap(to)
	c.resolveExport(e, to)
}

// resolveExport sends the Resolve of promise export e to to (whose
// reference it takes).
func (c *Core) resolveExport(e *export, to Cap) {
	if in := c.innermost(to); !in.Equal(to) {
		c.retainCap(in)
		c.releaseCap(to)
		to = in
	}
	e.resolved = true
	e.cap = to
	held := e.held
	e.held = nil
	for _, cl := range held {
		c.route(cl, to, 1)
	}
	r := Resolve{PromiseID: e.id}
	if to.Kind == CapBroken {
		r.Exception = exceptionOf(to.Err)
	} else {
		d, _, err := c.encodeCap(to)
		if err != nil {
			r.Exception = exceptionOf(err)
		} else {
			r.Cap = &d
		}
	}
	c.send(put(&c.o.resolve, r))
}

// resolveAnswerExports resolves the exports that stand for capabilities
// in a's results, now that it has returned.
func (c *Core) resolveAnswerExports(a *answer) {
	if c.answerExports == 0 {
		return
	}
	var es []*export
	c.exports.Each(func(_ uint32, e *export) {
		if !e.resolved && e.cap.Kind == CapAnswer && e.cap.ID == a.id && e.cap.Gen == a.seq {
			es = append(es, e)
		}
	})
	for _, e := range es {
		to, err := a.resultCap(e.cap.Transform)
		if err != nil {
			to = Cap{Kind: CapBroken, Err: err}
		}
		c.retainCap(to)
		held := e.cap
		c.answerExports--
		c.resolveExport(e, to)
		c.releaseCap(held) // the export's reference to the answer
	}
}

// receiveResolve: the peer's promise import has become something.
func (c *Core) receiveResolve(r Resolve) error {
	im := c.imports[r.PromiseID]
	if d := r.Cap; d != nil && (d.Kind == SenderHosted || d.Kind == SenderPromise) && d.ID == r.PromiseID {
		return protocolErrorf(ErrResolveLoop, "promise %d resolved to itself", r.PromiseID)
	}
	var to Cap
	if r.Cap != nil {
		var err error
		if to, err = c.decodeCap(*r.Cap); err != nil {
			return err
		}
	}
	if im == nil {
		// Released before the Resolve came: what it resolved to is not
		// wanted either.
		c.releaseCap(to)
		return nil
	}
	if !im.promise {
		c.releaseCap(to)
		return protocolErrorf(ErrMalformed, "resolve of import %d, which is not a promise", im.id)
	}
	if im.resolved != nil || im.broken != nil {
		c.releaseCap(to)
		return protocolErrorf(ErrDuplicateID, "second resolve of promise %d", im.id)
	}
	if r.Cap == nil {
		ex := Exception{Type: ExcFailed, Reason: "resolved to nothing"}
		if r.Exception != nil {
			ex = *r.Exception
		}
		im.broken = decodeException(ex, c.cfg.Limits.MaxReasonLength)
		c.emit(put(&c.o.resolved, ImportResolved{ID: im.id, To: Cap{Kind: CapBroken, Err: im.broken}}))
		return nil
	}
	if c.resolvesTo(to, im.id) {
		// A loop through other promises or answers may be of two vats'
		// making, not the peer's alone: the promise breaks, the
		// connection stays. An export of ours in the loop breaks too, or
		// the peer's calls on it would go round for ever.
		c.releaseCap(to)
		im.broken = newError(ExcFailed, "%w: promise %d resolves to itself through other promises", ErrResolveLoop, im.id)
		if d := r.Cap; d.Kind == ReceiverHosted {
			if e := c.exports.Get(d.ID); e != nil && e.resolved && e.cap.Kind == CapImport {
				c.releaseCap(e.cap)
				e.cap = Cap{Kind: CapBroken, Err: im.broken}
			}
		}
		c.emit(put(&c.o.resolved, ImportResolved{ID: im.id, To: Cap{Kind: CapBroken, Err: im.broken}}))
		return nil
	}
	im.resolved = &to
	if pointsBack(r.Cap.Kind) && im.callsSent {
		// Our calls on it are on their way to the peer, which will
		// reflect them back to us: later ones wait for them.
		e := &embargo{imp: im}
		e.id = c.embargoes.Add(e)
		im.embargo = e
		im.localRefs++ // the embargo's
		c.send(put(&c.o.disembargo, Disembargo{Target: Target{Kind: ImportedCap, ID: im.id}, Context: SenderLoopback, EmbargoID: e.id}))
		return nil
	}
	c.emit(put(&c.o.resolved, ImportResolved{ID: im.id, To: to}))
	return nil
}

// resolvesTo reports whether following to's resolutions reaches import id.
func (c *Core) resolvesTo(to Cap, id uint32) bool {
	return c.reaches(to, func(cp Cap) bool { return cp.Kind == CapImport && cp.ID == id })
}

// reaches reports whether following cp's resolutions comes to a
// capability for which is returns true, or goes round for longer than
// the tables are long (a loop elsewhere). It follows the peer's promises
// that it resolved, our exported promises that resolved, and the results
// of answers and questions that returned: every link of a loop that two
// vats can make between them, one resolution on each side.
func (c *Core) reaches(cp Cap, is func(Cap) bool) bool {
	for range len(c.imports) + c.exports.Len() + c.answers.Len() + c.questions.Len() + 1 {
		if is(cp) {
			return true
		}
		var err error
		switch cp.Kind {
		case CapImport:
			im := c.imports[cp.ID]
			if im == nil || im.resolved == nil {
				return false
			}
			cp = *im.resolved
		case CapLocal:
			id, ok := c.exportKey.Get(cp.Ref)
			e := c.exports.Get(id)
			if !ok || e == nil || !e.resolved {
				return false
			}
			cp = e.cap
		case CapAnswer:
			a := c.answerOf(cp)
			if a == nil || !a.returned {
				return false
			}
			if cp, err = a.resultCap(cp.Transform); err != nil {
				return false
			}
		case CapQuestion:
			q := c.byCall[cp.Call]
			if q == nil || q.results == nil {
				return false
			}
			if cp, err = locate(q.results, cp.Transform); err != nil {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// receiveDisembargo: a senderLoopback is reflected back along the path
// our forwarded calls took; a receiverLoopback lifts one of our embargoes.
func (c *Core) receiveDisembargo(d Disembargo) error {
	switch d.Context {
	case SenderLoopback:
		var to Cap
		switch d.Target.Kind {
		case ImportedCap:
			e := c.exports.Get(d.Target.ID)
			if e == nil {
				return protocolErrorf(ErrUnknownID, "disembargo of export %d, which we do not export", d.Target.ID)
			}
			if !e.resolved {
				return protocolErrorf(ErrMalformed, "disembargo of export %d, which has not resolved", d.Target.ID)
			}
			to = e.cap
		case PromisedAnswer:
			a := c.answers.At(d.Target.ID)
			if a == nil || !a.returned {
				return protocolErrorf(ErrUnknownID, "disembargo of question %d, which has not returned", d.Target.ID)
			}
			var err error
			if to, err = a.resultCap(d.Target.Transform); err != nil {
				return protocolErrorf(ErrMalformed, "disembargo of a capability that is not there: %v", err)
			}
		default:
			return protocolErrorf(ErrMalformed, "disembargo target of unknown kind %d", d.Target.Kind)
		}
		var back Target
		switch to.Kind {
		case CapImport:
			back = Target{Kind: ImportedCap, ID: to.ID}
		case CapQuestion:
			q := c.byCall[to.Call]
			if q == nil {
				return protocolErrorf(ErrMalformed, "disembargo of %v, whose question is finished", d.Target)
			}
			back = Target{Kind: PromisedAnswer, ID: q.id, Transform: to.Transform}
		default:
			return protocolErrorf(ErrMalformed, "disembargo of %v, which does not point back to the peer", d.Target)
		}
		c.send(put(&c.o.disembargo, Disembargo{Target: back, Context: ReceiverLoopback, EmbargoID: d.EmbargoID}))
	case ReceiverLoopback:
		e := c.embargoes.Get(d.EmbargoID)
		if e == nil {
			return protocolErrorf(ErrUnknownID, "disembargo of embargo %d, which is not up", d.EmbargoID)
		}
		c.lift(e)
	default:
		c.send(put(&c.o.unimpl, Unimplemented{Message: put(&c.o.disembargo, d)}))
	}
	return nil
}

// lift ends embargo e: the calls it held go on, in order, to where its
// capability is now.
func (c *Core) lift(e *embargo) {
	c.embargoes.Remove(e.id)
	held := e.held
	e.held = nil
	if im := e.imp; im != nil {
		im.embargo = nil
		to := *im.resolved
		for _, cl := range held {
			c.route(cl, to, 1)
		}
		c.emit(put(&c.o.resolved, ImportResolved{ID: im.id, To: to}))
		c.releaseCap(Cap{Kind: CapImport, ID: im.id}) // the embargo's reference
		return
	}
	q := e.question
	for i, x := range q.embargoes {
		if x == e {
			q.embargoes = append(q.embargoes[:i], q.embargoes[i+1:]...)
			break
		}
	}
	to, err := q.resultCap(e.transform)
	for _, cl := range held {
		if err != nil {
			c.fail(cl, err)
			continue
		}
		c.route(cl, to, 1)
	}
	if q.finishLater && len(q.embargoes) == 0 {
		q.finishLater = false
		c.localFinish(q.call)
	}
}

// receiveRelease: the peer drops references to one of our exports.
func (c *Core) receiveRelease(r Release) error { return c.releaseExport(r.ID, r.Count) }
