package sim

import (
	"errors"

	"github.com/vatactor/vatactor/conn/core"
	"github.com/vatactor/vatactor/supervisor"
)

// What local code does, chosen by the scheduler.

// live reports whether e still takes calls.
func (e *end) live() bool { return e.down == nil && !e.finQueued && !e.reset && e.core.Reason() == nil }

// call makes a call on one of the vat's clients, maybe passing
// capabilities, maybe pipelined.
func (v *vat) call() bool {
	if len(v.clients) == 0 {
		return false
	}
	cl := v.clients[v.w.rng.IntN(len(v.clients))]
	if cl.call != nil && cl.call.finished {
		return false
	}
	cl.seq++
	v.w.nextUID++
	ct := &content{tag: tag{vat: v.id, client: cl.key, seq: cl.seq, uid: v.w.nextUID}}
	inv := &invocation{content: ct, method: methodCall}
	for range v.w.rng.IntN(3) {
		ct.fields = append(ct.fields, len(inv.params))
		inv.params = append(inv.params, v.someCap())
	}
	ac := &appCall{}
	v.w.logf("v%d calls %v: client %d seq %d uid %d", v.id, cl.cap, cl.key, cl.seq, ct.tag.uid)
	inv.done = func(results []vcap, rc core.Content, err error) {
		ac.settled = true
		if err == nil && len(results) > 0 && v.w.rng.IntN(3) == 0 {
			c := results[v.w.rng.IntN(len(results))]
			v.retain(c)
			v.adopt(c, nil)
		}
	}
	v.appCall = append(v.appCall, ac)
	if cl.cap.end == nil {
		ac.settled = false
		v.deliverLocal(cl.cap.ref, inv)
		return true
	}
	r := &callRec{end: cl.cap.end, inv: inv, app: ac, uid: ct.tag.uid}
	ac.id = v.w.newCallID(r)
	ac.end = cl.cap.end
	p := cl.cap.end.payloadFor(inv.params, ct)
	cl.cap.end.post(&core.LocalCall{Call: ac.id, Target: cl.cap.cap, Method: methodCall, Params: *p})
	if v.w.rng.IntN(3) == 0 {
		v.pipelineLater = append(v.pipelineLater, ac)
	}
	return true
}

// someCap picks a capability to pass: a new object, a new promise, or
// one the vat holds.
func (v *vat) someCap() vcap {
	switch n := v.w.rng.IntN(4); {
	case n == 0:
		return vcap{ref: v.newObj(object).ref}
	case n == 1:
		return vcap{ref: v.newObj(promise).ref}
	case len(v.clients) > 0:
		// Not a pipelined capability: two vats whose answers hold each
		// other's pipelined capabilities make a cycle no Cap'n Proto
		// implementation collects.
		if c := v.clients[v.w.rng.IntN(len(v.clients))]; c.call == nil {
			return c.cap
		}
	}
	return vcap{ref: v.boot}
}

// pipeline makes a client of a capability in the answer of a call still
// in flight (promise pipelining).
func (v *vat) pipeline() bool {
	for len(v.pipelineLater) > 0 {
		ac := v.pipelineLater[0]
		v.pipelineLater = v.pipelineLater[1:]
		if ac.hasQ && !ac.finished {
			c := vcap{end: ac.end, cap: core.Cap{Kind: core.CapQuestion, Call: ac.id, Transform: []uint16{uint16(v.w.rng.IntN(2))}}}
			v.retain(c) // it keeps the question (its Finish waits)
			v.adopt(c, ac)
			return true
		}
	}
	return false
}

// complete ends one call an object is executing, with results that may
// carry capabilities, or an error.
func (v *vat) complete() bool {
	if len(v.running) == 0 {
		return false
	}
	i := v.w.rng.IntN(len(v.running))
	if v.w.rng.IntN(2) == 0 {
		i = 0 // mostly in order
	}
	x := v.running[i]
	v.running = append(v.running[:i], v.running[i+1:]...)
	if v.w.rng.IntN(8) == 0 {
		v.finish(x.inv, nil, nil, errors.New("the object failed the call"))
		return true
	}
	rc := &content{}
	var results []vcap
	for range v.w.rng.IntN(3) {
		if v.w.rng.IntN(5) == 0 {
			rc.fields = append(rc.fields, -1)
			continue
		}
		rc.fields = append(rc.fields, len(results))
		switch {
		case len(x.inv.params) > 0 && v.w.rng.IntN(3) == 0:
			results = append(results, x.inv.params[v.w.rng.IntN(len(x.inv.params))])
		default:
			results = append(results, v.someCap())
		}
	}
	if len(x.inv.params) > 0 && v.w.rng.IntN(3) == 0 {
		c := x.inv.params[v.w.rng.IntN(len(x.inv.params))]
		v.retain(c)
		v.adopt(c, nil)
	}
	v.finish(x.inv, results, rc, nil)
	return true
}

// resolve resolves one of the vat's promises: to an object, to one of
// the vat's clients, to an older promise, or to an error. The calls it
// held go on first, then every connection is told.
func (v *vat) resolve() bool {
	var ps []*obj
	for _, o := range v.sortedObjs() {
		if o.kind == promise && !o.resolved {
			ps = append(ps, o)
		}
	}
	if len(ps) == 0 {
		return false
	}
	p := ps[v.w.rng.IntN(len(ps))]
	for _, o := range ps {
		if o.ref < p.ref {
			p = o // the oldest first, mostly: resolutions only point back in time
			break
		}
	}
	var to vcap
	switch n := v.w.rng.IntN(4); {
	case n == 0 && len(v.clients) > 0:
		// Not to a pipelined capability: its answer may be this very
		// promise, a loop of the application's making that the runner
		// would chase for ever.
		if c := v.clients[v.w.rng.IntN(len(v.clients))]; c.call == nil {
			to = c.cap
			v.retain(to)
		}
	case n == 1:
		for _, o := range v.sortedObjs() {
			if o.kind == promise && o.ref < p.ref {
				to = vcap{ref: o.ref}
				break
			}
		}
	case n == 2:
		to = vcap{end: v.ends[0], cap: core.Cap{Kind: core.CapBroken, Err: errors.New("the promise broke")}}
	}
	if to.end == nil && (to.ref == 0 || v.leadsTo(to.ref, p.ref)) {
		to = vcap{ref: v.newObj(object).ref} // (a promise never resolves to itself)
	}
	v.settlePromise(p, to)
	return true
}

// leadsTo reports whether following local resolutions from ref reaches
// target.
func (v *vat) leadsTo(ref, target core.Ref) bool {
	for range len(v.objs) + 1 {
		if ref == target {
			return true
		}
		o := v.objs[ref]
		if o == nil || o.kind != promise || !o.resolved || o.to.end != nil {
			return false
		}
		ref = o.to.ref
	}
	return true
}

func (v *vat) settlePromise(p *obj, to vcap) {
	v.w.logf("v%d resolves promise #%d to %v (holding %d calls)", v.id, p.ref, to, len(p.held))
	p.resolved, p.to = true, to
	held := p.held
	p.held = nil
	for _, inv := range held {
		if to.end != nil && to.cap.Kind == core.CapBroken {
			v.finish(inv, nil, nil, to.cap.Err)
			continue
		}
		v.deliverTo(to, inv)
	}
	for _, e := range v.ends {
		if to.end != nil && to.cap.Kind == core.CapBroken {
			e.post(&core.LocalResolved{Ref: p.ref, To: to.cap})
			continue
		}
		e.post(&core.LocalResolved{Ref: p.ref, To: e.capFor(to)})
	}
}

// dropClient releases one of the vat's clients.
func (v *vat) dropClient() bool {
	if len(v.clients) == 0 {
		return false
	}
	i := v.w.rng.IntN(len(v.clients))
	c := v.clients[i]
	v.clients = append(v.clients[:i], v.clients[i+1:]...)
	v.release(c.cap)
	return true
}

// finishCall finishes (or, not yet settled, cancels) one of the vat's
// calls.
func (v *vat) finishCall() bool {
	for i, ac := range v.appCall {
		if ac.end == nil {
			if ac.settled {
				v.appCall = append(v.appCall[:i], v.appCall[i+1:]...)
				return true
			}
			continue
		}
		if !ac.settled && v.w.rng.IntN(2) == 0 {
			ac.end.post(&core.LocalCancel{Call: ac.id, Err: errors.New("context canceled")})
			continue
		}
		ac.finished = true
		ac.end.post(&core.LocalFinish{Call: ac.id})
		v.appCall = append(v.appCall[:i], v.appCall[i+1:]...)
		return true
	}
	return false
}

// shutdownEnd closes one end, with or without drain.
func (w *world) shutdownEnd(e *end, drain bool) {
	ep := okEpitaph
	if w.rng.IntN(3) == 0 {
		ep = supervisor.Epitaph{Code: supervisor.Unavailable, Message: "going away"}
	}
	e.shutdownBy = append(e.shutdownBy, ep)
	e.post(&core.Shutdown{Epitaph: ep, Drain: drain})
}
