package sim

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/vatactor/vatactor/conn/core"
)

// carryOut does what one output of e's core asks, as package conn's
// actor does: nothing here feeds a core directly (inputs are posted).
func (e *end) carryOut(o core.Output) {
	w := e.w
	switch o := o.(type) {
	case *core.Send:
		switch {
		case e.lingering || e.closed:
			w.failf("%s sent %v after its EOF", e.name, o.Msg)
			return
		case e.finQueued || e.reset:
			return // the socket is shut down under the core: the write fails
		}
		if a, ok := o.Msg.(*core.Abort); ok {
			if e.peerEnded {
				w.failf("%s answered the peer's end with %v", e.name, a)
			}
			e.sentAborts++
			if ep := a.Exception.Epitaph; ep != nil {
				e.sentEpitaphs = append(e.sentEpitaphs, *ep)
			}
		}
		e.out = append(e.out, core.Copy(o.Msg)) // o.Msg lives until the core's storage is reused
		w.messages++
		w.kinds[messageKind(o.Msg)]++
	case *core.Deliver:
		inv := &invocation{content: o.Params.Content.(*content), method: o.Method, owned: true}
		inv.params = e.vcaps(o.Params.CapTable)
		answer := o.Answer
		inv.done = func(results []vcap, rc core.Content, err error) {
			e.post(&core.Returned{Answer: answer, Results: e.payloadFor(results, rc), Err: err})
		}
		e.vat.deliverLocal(o.To.Ref, inv)
	case *core.Redirect:
		r := w.calls[o.Call]
		if r == nil || r.inv == nil {
			w.failf("%s redirected call c%d, which it was not given", e.name, o.Call)
			return
		}
		r.settles++
		r.redirect = true
		if r.settles > 1 {
			w.failf("%s settled call c%d twice (redirect)", e.name, o.Call)
			return
		}
		e.vat.deliverLocal(o.To.Ref, r.inv)
	case *core.Settle:
		e.settle(*o)
	case *core.SpawnChild:
		if o.Child.Kind == core.QuestionChild {
			if r := w.calls[o.Child.Call]; r != nil && r.app != nil {
				r.app.question, r.app.hasQ = o.Child.ID, true
			}
		}
	case *core.StopChild:
		e.stopping = append(e.stopping, o.Child)
	case *core.Arm:
		e.timers[o.Deadline] = *o
	case *core.CloseSocket:
		e.finQueued = true
		e.lingering = true
		e.lingerUntil = w.now.Add(lingerTimeout)
		if o.Hard || e.reset {
			e.lingerUntil = w.now
		}
	case *core.Emit:
		if d, ok := o.Event.(*core.Down); ok {
			e.downs++
			r := d.Report
			e.down = &r
			if e.downs > 1 {
				w.failf("%s went down twice", e.name)
			}
		}
	case *core.CancelAnswer, *core.AnswerDone, *core.ImportResolved, *core.Closing, *core.Log:
	default:
		w.failf("%s: output of unknown type %T", e.name, o)
	}
}

// messageKind names a message's kind for the run's figures.
func messageKind(m core.Message) string {
	switch m := m.(type) {
	case *core.Disembargo:
		if m.Context == core.SenderLoopback {
			return "disembargo.senderLoopback"
		}
		return "disembargo.receiverLoopback"
	case *core.Call:
		if m.Target.Kind == core.PromisedAnswer {
			return "call.pipelined"
		}
		return "call"
	case *core.Abort:
		if m.Exception.Epitaph != nil {
			return "abort.epitaph"
		}
		return "abort"
	}
	return strings.ToLower(strings.TrimPrefix(fmt.Sprintf("%T", m), "core."))
}

// settle: a call given to e's core has its outcome.
func (e *end) settle(o core.Settle) {
	w := e.w
	r := w.calls[o.Call]
	if r == nil {
		w.failf("%s settled call c%d, which it was not given", e.name, o.Call)
		return
	}
	r.settles++
	if r.settles > 1 {
		w.failf("%s settled call c%d twice (last: %v)", e.name, o.Call, o.Err)
		return
	}
	if errors.Is(o.Err, core.ErrNotProcessed) && r.uid != 0 && w.received[r.uid] {
		w.failf("%s: call c%d (uid %d) was reported not processed, but its callee executed it", e.name, o.Call, r.uid)
	}
	var results []vcap
	var rc core.Content
	if o.Results != nil {
		results = e.vcaps(o.Results.CapTable)
		rc = o.Results.Content
	}
	switch {
	case o.Call == e.bootstrap:
		if o.Err == nil && len(results) == 1 {
			e.vat.adopt(results[0], nil)
		} else {
			e.vat.releaseAll(results)
		}
		e.post(&core.LocalFinish{Call: o.Call})
	case r.inv != nil:
		e.vat.finish(r.inv, results, rc, o.Err)
		e.vat.releaseAll(results) // finish borrowed them
		if r.app == nil {
			// A call forwarded for another: its answer is passed on, done.
			e.post(&core.LocalFinish{Call: o.Call})
		}
	}
	if r.app != nil {
		r.app.settled = true
	}
}

// vcaps is a payload's capabilities as the vat holds them.
func (e *end) vcaps(caps []core.Cap) []vcap {
	out := make([]vcap, len(caps))
	for i, c := range caps {
		if c.Kind == core.CapLocal {
			out[i] = vcap{ref: c.Ref}
		} else {
			out[i] = vcap{end: e, cap: c}
		}
	}
	return out
}

// capFor is c as e's core is to be told it: a capability of e's
// connection as it is, a local one by its Ref, and one of another
// connection through a proxy.
func (e *end) capFor(c vcap) core.Cap {
	switch {
	case c.end == e:
		return c.cap
	case c.end == nil:
		o := e.vat.objs[c.ref]
		if o != nil && o.kind == promise && !o.resolved {
			return core.LocalPromise(c.ref)
		}
		return core.Local(c.ref)
	}
	if c.cap.Kind == core.CapNone || c.cap.Kind == core.CapBroken {
		return c.cap
	}
	p := e.vat.proxyFor(c)
	return core.Local(p.ref)
}

func (e *end) payloadFor(caps []vcap, rc core.Content) *core.Payload {
	p := &core.Payload{Content: rc}
	for _, c := range caps {
		p.CapTable = append(p.CapTable, e.capFor(c))
	}
	return p
}

// proxyFor returns the proxy standing for c (a capability of another
// connection) among the vat's local capabilities; it holds a reference.
func (v *vat) proxyFor(c vcap) *obj {
	for _, o := range v.sortedObjs() {
		if o.kind == proxy && o.end == c.end && o.cap.Equal(c.cap) {
			return o
		}
	}
	p := v.newObj(proxy)
	p.end, p.cap = c.end, c.cap
	c.end.post(&core.LocalRetain{Cap: c.cap})
	return p
}

// deliverLocal hands inv to a local capability.
func (v *vat) deliverLocal(ref core.Ref, inv *invocation) {
	o := v.objs[ref]
	if o == nil {
		v.w.failf("v%d: a call for #%d, which the vat does not have", v.id, ref)
		v.finish(inv, nil, nil, fmt.Errorf("no such capability #%d", ref))
		return
	}
	switch o.kind {
	case object:
		t := inv.content.tag
		v.w.logf("v%d #%d executes uid %d (client %d seq %d of v%d)", v.id, o.ref, t.uid, t.client, t.seq, t.vat)
		if t.client != 0 {
			if last, ok := o.lastSeq[t.client]; ok && t.seq <= last {
				v.w.failf("E-order: #%d of v%d executed call seq %d of client %d (v%d) after seq %d", o.ref, v.id, t.seq, t.client, t.vat, last)
			}
			o.lastSeq[t.client] = t.seq
		}
		if t.uid != 0 {
			v.w.received[t.uid] = true
		}
		v.running = append(v.running, &execution{obj: o, inv: inv})
	case promise:
		if !o.resolved {
			o.held = append(o.held, inv)
			return
		}
		v.deliverTo(o.to, inv)
	case proxy:
		v.deliverTo(vcap{end: o.end, cap: o.cap}, inv)
	}
}

// deliverTo hands inv to c, local or on a connection.
func (v *vat) deliverTo(c vcap, inv *invocation) {
	if c.end == nil {
		v.deliverLocal(c.ref, inv)
		return
	}
	e := c.end
	r := &callRec{end: e, inv: inv, uid: inv.content.tag.uid}
	id := v.w.newCallID(r)
	p := e.payloadFor(inv.params, inv.content)
	e.post(&core.LocalCall{Call: id, Target: c.cap, Method: inv.method, Params: *p})
}

// finish ends inv with its outcome and drops what it owned.
func (v *vat) finish(inv *invocation, results []vcap, rc core.Content, err error) {
	inv.done(results, rc, err)
	if inv.owned {
		v.releaseAll(inv.params)
		inv.params = nil
	}
}

// adopt makes c one of the clients local code holds (taking its
// reference).
func (v *vat) adopt(c vcap, call *appCall) {
	v.w.nextClient++
	v.clients = append(v.clients, &client{key: v.w.nextClient, cap: c, call: call})
}

// retain takes a reference to c for a new holder (the core counts the
// kinds it must).
func (v *vat) retain(c vcap) {
	if c.end != nil {
		c.end.post(&core.LocalRetain{Cap: c.cap})
	}
}

func (v *vat) release(c vcap) {
	if c.end != nil {
		c.end.post(&core.LocalRelease{Cap: c.cap})
	}
}

func (v *vat) releaseAll(cs []vcap) {
	for _, c := range cs {
		v.release(c)
	}
}

// sortedObjs returns the vat's local capabilities in creation order: a
// run must not depend on map order.
func (v *vat) sortedObjs() []*obj {
	os := make([]*obj, 0, len(v.objs))
	for _, o := range v.objs {
		os = append(os, o)
	}
	slices.SortFunc(os, func(a, b *obj) int { return cmp.Compare(a.ref, b.ref) })
	return os
}
