package sim

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"time"

	"github.com/vatactor/vatactor/conn/core"
	"github.com/vatactor/vatactor/supervisor"
)

// event is one thing the scheduler may do next.
type event struct {
	weight int
	name   string
	do     func()
}

// maxSteps bounds a whole run, wind-down included.
const maxSteps = 200000

func (w *world) run() {
	for w.steps = 0; w.steps < maxSteps; w.steps++ {
		if w.steps == w.cfg.Steps {
			w.logf("--- wind-down: local code finishes and releases everything")
			w.winding = true
		}
		evs := w.events()
		if len(evs) == 0 {
			if !w.winding {
				w.winding = true
				continue
			}
			if w.windDown() {
				continue
			}
			break
		}
		w.pick(evs).do()
		w.checkStep()
		if len(w.failures) > 0 {
			return
		}
	}
	if w.steps >= maxSteps {
		w.failf("the run did not end within %d steps", maxSteps)
		return
	}
	w.checkEnd()
}

func (w *world) pick(evs []event) event {
	total := 0
	for _, e := range evs {
		total += e.weight
	}
	n := w.rng.IntN(total)
	for _, e := range evs {
		if n < e.weight {
			return e
		}
		n -= e.weight
	}
	return evs[len(evs)-1]
}

// events lists what may happen now.
func (w *world) events() []event {
	var evs []event
	add := func(weight int, name string, do func()) { evs = append(evs, event{weight, name, do}) }
	for _, c := range w.conns {
		for _, e := range c.ends {
			e := e
			if len(e.inbox) > 0 {
				add(30, "run", e.runOne)
			}
			if len(e.out) > 0 && !e.reset {
				add(30, "deliver", func() { w.deliver(e) })
			}
			if e.finQueued && len(e.out) == 0 && !e.finDelivered && !e.reset && !e.other.closed {
				add(10, "fin", func() {
					e.finDelivered = true
					w.logf("%s: FIN reaches %s", e.name, e.other.name)
					e.other.post(&core.ReadEnded{EOF: true})
				})
			}
			if e.lingering && !e.closed && (e.other.finDelivered || e.reset || !w.now.Before(e.lingerUntil)) {
				add(10, "closeSocket", func() { w.closeSocket(e) })
			}
			if len(e.stopping) > 0 {
				add(8, "childStopped", func() {
					ch := e.stopping[0]
					e.stopping = e.stopping[1:]
					e.post(&core.ChildStopped{Child: ch})
				})
			}
		}
	}
	for _, v := range w.vats {
		v := v
		if len(v.running) > 0 {
			add(12, "complete", func() { v.complete() })
		}
		if w.winding {
			continue
		}
		if len(v.clients) > 0 {
			add(14, "call", func() { v.call() })
			add(2, "dropClient", func() { v.dropClient() })
		}
		if len(v.pipelineLater) > 0 {
			add(4, "pipeline", func() { v.pipeline() })
		}
		if len(v.appCall) > 0 {
			add(4, "finishCall", func() { v.finishCall() })
		}
		add(2, "resolve", func() { v.resolve() })
	}
	if !w.winding {
		for _, c := range w.conns {
			if c.ends[0].live() && c.ends[1].live() {
				c := c
				add(1, "fault", func() { w.fault(c) })
			}
		}
	}
	if t, ok := w.nextDeadline(); ok && (len(evs) == 0 || w.rng.IntN(20) == 0) {
		add(3, "time", func() { w.jumpTo(t) })
	}
	return evs
}

// deliver moves e's first message in flight to the other end (its
// reader posts it), or, if the other end's socket is closed, resets e.
func (w *world) deliver(e *end) {
	m := e.out[0]
	e.out = e.out[1:]
	o := e.other
	if o.closed {
		w.rst(e, fmt.Sprintf("%v found the socket closed", m))
		return
	}
	o.post(&core.Received{Msg: m})
}

// rst: e wrote into a closed socket; its reads and writes fail.
func (w *world) rst(e *end, why string) {
	w.resets++
	w.logf("RST to %s: %s", e.name, why)
	e.reset, e.out = true, nil
	if !e.closed {
		e.post(&core.WriteFailed{Err: errors.New("connection reset by peer")})
	}
}

// closeSocket: e's linger is over; the socket closes.
func (w *world) closeSocket(e *end) {
	e.closed, e.lingering = true, false
	e.post(&core.SocketClosed{Steps: []core.PhaseReport{
		{Phase: core.PhaseCloseWrite, Start: w.now},
		{Phase: core.PhaseLinger, Start: w.now},
		{Phase: core.PhaseCloseSocket, Start: w.now},
	}})
	if o := e.other; !o.reset && (len(o.out) > 0 || (!o.finQueued && !o.closed)) && o.down == nil {
		// Unread bytes, or a peer that may still write: it is told so by
		// a reset when it next writes; here, when it reads next.
		if len(o.out) > 0 {
			w.rst(o, "unread bytes at close")
		}
	}
}

func (w *world) nextDeadline() (time.Time, bool) {
	var best time.Time
	found := false
	consider := func(t time.Time) {
		if !found || t.Before(best) {
			best, found = t, true
		}
	}
	for _, c := range w.conns {
		for _, e := range c.ends {
			if e.down != nil {
				continue
			}
			for _, a := range e.timers {
				consider(a.At)
			}
			if e.lingering && !e.closed {
				consider(e.lingerUntil)
			}
		}
	}
	return best, found
}

// jumpTo moves time to t and fires every deadline passed.
func (w *world) jumpTo(t time.Time) {
	if t.After(w.now) {
		w.now = t
	}
	w.logf("--- time is now +%v", w.now.Sub(epoch))
	for _, c := range w.conns {
		for _, e := range c.ends {
			ds := make([]core.Deadline, 0, len(e.timers))
			for d, a := range e.timers {
				if !a.At.After(w.now) {
					ds = append(ds, d)
				}
			}
			sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
			for _, d := range ds {
				a := e.timers[d]
				delete(e.timers, d)
				e.post(&core.DeadlineFired{Deadline: d, Gen: a.Gen})
			}
		}
	}
}

// fault ends connection c in one of the ways a connection ends.
func (w *world) fault(c *connection) {
	e := c.ends[w.rng.IntN(2)]
	var what string
	switch w.rng.IntN(6) {
	case 0, 1:
		w.shutdownEnd(e, true)
		what = "shutdown with drain"
	case 2:
		w.shutdownEnd(e, false)
		what = "close without drain"
	case 3:
		e.stoppedBy = true
		e.post(&core.Stopped{})
		what = "actor stopped from outside"
	case 4:
		// Both sides see the socket fail.
		what = "reset"
		for _, x := range c.ends {
			x.reset, x.out = true, nil
			x.post(&core.ReadEnded{Err: errors.New("connection reset")})
		}
	case 5:
		// The runner of e half-closes at once: e's core hears its writes
		// failed; the other end reads what was queued, then EOF.
		what = "vanish (EOF mid-call)"
		e.finQueued = true
		e.post(&core.WriteFailed{Err: errors.New("the socket was shut down")})
	}
	if c.fault == "" {
		c.fault = what
	}
	w.faults = append(w.faults, fmt.Sprintf("c%d %s: %s", c.id, e.name, what))
	w.logf("FAULT c%d %s: %s", c.id, e.name, what)
}

// windDown, once nothing else can happen, finishes local work: it
// completes what objects run, resolves promises, finishes calls, drops
// clients and proxies; then, with every table checked empty, shuts every
// connection down. It reports whether it did anything.
func (w *world) windDown() bool {
	did := false
	for _, v := range w.vats {
		for v.complete() {
			did = true
		}
		for v.resolve() {
			did = true
		}
		for len(v.appCall) > 0 && v.finishAll() {
			did = true
		}
		for v.dropClient() {
			did = true
		}
		if did {
			continue
		}
		for _, o := range v.sortedObjs() {
			switch {
			case o.kind == proxy:
				v.release(vcap{end: o.end, cap: o.cap})
				delete(v.objs, o.ref)
				did = true
			case o.kind == promise && o.resolved && o.to.end != nil && o.to.cap.Kind != core.CapBroken:
				// The resolution's reference.
				v.release(o.to)
				o.to = vcap{end: o.to.end, cap: core.Cap{Kind: core.CapBroken, Err: errors.New("released")}}
				did = true
			}
		}
	}
	if did {
		return true
	}
	if !w.quiesced {
		w.quiesced = true
		w.checkEmpty()
	}
	for _, c := range w.conns {
		for _, e := range c.ends {
			if e.live() {
				w.shutdownEnd(e, true)
				did = true
			}
		}
	}
	return did
}

// finishAll finishes every call of the vat, settled or not.
func (v *vat) finishAll() bool {
	if len(v.appCall) == 0 {
		return false
	}
	for _, ac := range v.appCall {
		if ac.end != nil && !ac.finished {
			ac.finished = true
			ac.end.post(&core.LocalFinish{Call: ac.id})
		}
	}
	v.appCall = v.appCall[:0]
	return true
}

// checkStep runs the oracles that hold after every step.
func (w *world) checkStep() {
	for _, c := range w.conns {
		a, b := c.ends[0], c.ends[1]
		if !quiet(a) || !quiet(b) || !a.live() || !b.live() {
			continue
		}
		// Nothing in flight between them: what one exports, the other
		// imports, with the same count; one's questions are the other's
		// answers.
		ta, tb := a.core.Tables(), b.core.Tables()
		checkAgree(w, a, b, ta, tb)
		checkAgree(w, b, a, tb, ta)
	}
}

func quiet(e *end) bool { return len(e.inbox) == 0 && len(e.out) == 0 }

func checkAgree(w *world, a, b *end, ta, tb core.Tables) {
	for id, n := range ta.Exports {
		if m, ok := tb.Imports[id]; !ok || m != n {
			w.failf("%s exports %d ×%d; %s imports it ×%d (present %v)", a.name, id, n, b.name, m, ok)
		}
	}
	for id, m := range tb.Imports {
		if _, ok := ta.Exports[id]; !ok {
			w.failf("%s imports %d ×%d, which %s does not export", b.name, id, m, a.name)
		}
	}
	qa, ab := slices.Sorted(slices.Values(ta.Questions)), slices.Sorted(slices.Values(tb.Answers))
	if !slices.Equal(qa, ab) {
		w.failf("%s's questions %v are not %s's answers %v", a.name, qa, b.name, ab)
	}
}

// checkEmpty: with local code done and every message delivered, no table
// holds anything (no leaked export, import, question or answer).
func (w *world) checkEmpty() {
	for _, c := range w.conns {
		for _, e := range c.ends {
			if e.down != nil || !e.live() {
				continue
			}
			t := e.core.Tables()
			if len(t.Questions)+len(t.Answers)+len(t.Exports)+len(t.Imports)+t.Embargoes > 0 {
				w.failf("%s holds %+v with all local code done", e.name, t)
			}
		}
	}
}

// checkEnd runs the oracles of a finished run.
func (w *world) checkEnd() {
	for _, id := range slices.Sorted(maps.Keys(w.calls)) {
		if r := w.calls[id]; r.settles == 0 && r.app != nil {
			w.failf("call c%d (on %s) never settled", id, r.end.name)
		}
	}
	for _, c := range w.conns {
		for _, e := range c.ends {
			if e.down == nil {
				w.failf("%s never went down", e.name)
				continue
			}
			w.checkReason(c, e)
			if st := e.core.Stats(); !st.Idle() {
				w.failf("%s ended with tables %v", e.name, st)
			}
		}
	}
}

// checkReason: the reason an end reports is one the schedule explains.
func (w *world) checkReason(c *connection, e *end) {
	o := e.other
	switch r := e.down.Reason.(type) {
	case supervisor.ProtocolError:
		w.failf("%s: protocol error between two correct cores: %v", e.name, r.Err)
	case supervisor.LocalShutdown:
		ok := slices.Contains(e.shutdownBy, r.Epitaph) ||
			(e.stoppedBy && r.Epitaph.Code == supervisor.Canceled) ||
			(r.Epitaph.Code == supervisor.OK && r.Epitaph.Message == "idle timeout")
		if !ok {
			w.failf("%s reports %v, which nothing asked for", e.name, r)
		}
	case supervisor.PeerEpitaph:
		if !slices.Contains(o.sentEpitaphs, r.Epitaph) {
			w.failf("%s reports %v, which %s never sent", e.name, r, o.name)
		}
	case supervisor.PeerAbort:
		if o.sentAborts <= len(o.sentEpitaphs) {
			w.failf("%s reports %v, which %s never sent", e.name, r, o.name)
		}
	case supervisor.PeerEOF:
		if !o.finQueued {
			w.failf("%s reports %v, but %s sent no FIN", e.name, r, o.name)
		}
	case supervisor.TransportError:
		if c.fault == "" && w.resets == 0 {
			w.failf("%s reports %v with no fault on the connection", e.name, r)
		}
	default:
		w.failf("%s ended with reason %v", e.name, r)
	}
}

func (w *world) result() Result {
	r := Result{Steps: w.steps, Calls: len(w.calls), Messages: w.messages, Faults: w.faults, Failures: w.failures, Kinds: w.kinds}
	r.Transcript = w.trace
	if !w.cfg.Trace && len(r.Transcript) > TraceTail {
		r.Transcript = r.Transcript[len(r.Transcript)-TraceTail:]
	}
	return r
}
