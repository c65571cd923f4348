package conn

import (
	"context"
	"fmt"
	"reflect"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	"capnproto.org/go/capnp/v3/server"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
	"github.com/asynkron/protoactor-go/actor"
	"go.opentelemetry.io/otel/trace"
)

// An export is a capability of ours that the peer holds references to.
// It is an actor, a child of the connection, alive while the peer's
// reference count is above zero; stopping it releases the capability.
type export struct {
	c        *Conn
	id       uint32
	client   capnp.Client // our reference
	key      any          // identity, for reusing the id when sent again
	wireRefs uint32
	promise  bool
	seq      uint64 // creation order
	pid      *actor.PID
	span     trace.Span // the export's lifetime

	stopResolve context.CancelFunc // export actor only
}

// exportResolved: an exported promise has resolved (export actor → conn).
type exportResolved struct{ e *export }

// Receive is the export actor.
func (e *export) Receive(ctx actor.Context) {
	switch ctx.Message().(type) {
	case *actor.Started:
		if e.promise {
			rctx, cancel := context.WithCancel(context.Background())
			e.stopResolve = cancel
			client := e.client.AddRef()
			go func() {
				defer client.Release()
				if client.Resolve(rctx) == nil {
					_ = e.c.post(exportResolved{e: e})
				}
			}()
		}
	case *actor.Stopping:
		if e.stopResolve != nil {
			e.stopResolve()
		}
		e.release()
		e.span.End()
	}
}

// release drops our reference to the exported capability. A panic in the
// capability's Shutdown is logged, never allowed to hang the connection's
// ordered stop.
func (e *export) release() {
	defer func() {
		if r := recover(); r != nil {
			e.c.opts.Logger.Error("capnp: exported capability panicked while shutting down", "peer", e.c.opts.Peer, "export", e.id, "panic", r)
		}
	}()
	e.client.Release()
}

// exportKeyOf returns an identity for the capability behind brand, or
// nil when it has none we can trust (then every send exports anew).
func exportKeyOf(b capnp.Brand) any {
	v := b.Value
	if x, ok := server.IsServer(b); ok {
		v = x // the implementation behind a generated server
	}
	if rv := reflect.ValueOf(v); rv.IsValid() && rv.Kind() == reflect.Pointer && !rv.IsNil() {
		return v
	}
	return nil
}

// describeCap writes the descriptor of c (ours to send to the peer) into
// d, exporting c if it is neither the peer's own capability nor one of its
// answers. It returns the export id, or noExport.
func (s *state) describeCap(d rpccp.CapDescriptor, c capnp.Client) (uint32, error) {
	if !c.IsValid() {
		d.SetNone()
		return noExport, nil
	}
	snap := c.Snapshot()
	brand := snap.Brand()
	isPromise := snap.IsPromise()
	snap.Release()
	switch h := brand.Value.(type) {
	case *importHook:
		if h.c == s.c {
			if _, ok := s.imports[h.id]; ok {
				d.SetReceiverHosted(h.id)
				return noExport, nil
			}
		}
	case capnp.PipelineClient:
		if q := s.byAnswer[h.Answer()]; q != nil && q.sent() && !q.finishSent() {
			pa, err := d.NewReceiverAnswer()
			if err != nil {
				return noExport, err
			}
			pa.SetQuestionId(q.id)
			return noExport, encodeTransform(pa, h.Transform())
		}
	}
	key := exportKeyOf(brand)
	if key != nil {
		if id, ok := s.exportKey[key]; ok {
			e := s.exports.Get(id)
			e.wireRefs++
			setExportDescriptor(d, e)
			return id, nil
		}
	}
	if s.exports.Len() >= s.c.opts.MaxExports {
		return noExport, exc.New(exc.Overloaded, "capnp", fmt.Sprintf("%v (limit %d)", ErrTooManyExports, s.c.opts.MaxExports))
	}
	e := &export{c: s.c, client: c.AddRef(), key: key, wireRefs: 1, promise: isPromise}
	e.id = s.exports.Add(e)
	if key != nil {
		s.exportKey[key] = e.id
	}
	s.seq++
	e.seq = s.seq
	e.span = s.startExportSpan(e)
	e.pid = s.spawnChild(e)
	setExportDescriptor(d, e)
	return e.id, nil
}

func setExportDescriptor(d rpccp.CapDescriptor, e *export) {
	if e.promise {
		d.SetSenderPromise(e.id)
	} else {
		d.SetSenderHosted(e.id)
	}
}

// encodeCapTableIDs writes the descriptors of msg's cap table into payload
// and returns the export id of each entry (noExport for none). On error,
// the references taken so far are given back.
func (s *state) encodeCapTableIDs(payload rpccp.Payload, msg *capnp.Message) ([]uint32, error) {
	ct := msg.CapTable()
	n := ct.Len()
	if n == 0 {
		return nil, nil
	}
	list, err := payload.CapTable()
	if err != nil || list.Len() != n {
		// Not prepared by PrepareReturn (a Call's params, a Bootstrap).
		if list, err = payload.NewCapTable(int32(n)); err != nil {
			return nil, err
		}
	}
	ids := make([]uint32, n)
	for i := 0; i < n; i++ {
		if ids[i], err = s.describeCap(list.At(i), ct.At(i)); err != nil {
			for _, id := range ids[:i] {
				if id != noExport {
					_ = s.releaseExport(id, 1)
				}
			}
			return nil, err
		}
	}
	return ids, nil
}

// decodeCapTable turns payload's descriptors into clients in msg's cap
// table.
func (s *state) decodeCapTable(msg *capnp.Message, payload rpccp.Payload) error {
	list, err := payload.CapTable()
	if err != nil {
		return fmt.Errorf("%w: cap table: %v", ErrMalformedFrame, err)
	}
	if lim := s.c.opts.Limits.MaxCapsPerMessage; list.Len() > lim {
		return budgetErrorf("MaxCapsPerMessage", int64(lim), "a message with %d capabilities", list.Len())
	}
	caps := make([]capnp.Client, list.Len())
	for i := range caps {
		if caps[i], err = s.importCap(list.At(i)); err != nil {
			for _, c := range caps[:i] {
				c.Release()
			}
			return err
		}
	}
	msg.CapTable().Reset(caps...)
	return nil
}

// importCap returns a client for a descriptor the peer sent.
func (s *state) importCap(d rpccp.CapDescriptor) (capnp.Client, error) {
	switch d.Which() {
	case rpccp.CapDescriptor_Which_none:
		return capnp.Client{}, nil
	case rpccp.CapDescriptor_Which_senderHosted:
		return s.addImport(d.SenderHosted(), false)
	case rpccp.CapDescriptor_Which_senderPromise:
		return s.addImport(d.SenderPromise(), true)
	case rpccp.CapDescriptor_Which_receiverHosted:
		e := s.exports.Get(d.ReceiverHosted())
		if e == nil {
			return capnp.Client{}, fmt.Errorf("%w: descriptor names export %d, which we do not export", ErrUnknownID, d.ReceiverHosted())
		}
		return e.client.AddRef(), nil
	case rpccp.CapDescriptor_Which_receiverAnswer:
		pa, err := d.ReceiverAnswer()
		if err != nil {
			return capnp.Client{}, fmt.Errorf("%w: receiverAnswer: %v", ErrMalformedFrame, err)
		}
		a := s.answers[pa.QuestionId()]
		if a == nil {
			return capnp.Client{}, fmt.Errorf("%w: descriptor names answer %d, which is not in flight", ErrUnknownID, pa.QuestionId())
		}
		transform, err := decodeTransform(pa)
		if err != nil {
			return capnp.Client{}, err
		}
		if !a.returned {
			c, h, r := newHeldCap(fmt.Sprintf("capnp answer %d of %s", a.id, s.c.opts.Peer))
			a.held = append(a.held, heldResult{transform: transform, cap: h, resolver: r})
			return c, nil
		}
		c, err := s.resultCap(a, transform)
		if err != nil {
			return capnp.ErrorClient(err), nil
		}
		return c.AddRef(), nil
	default:
		return capnp.ErrorClient(exc.New(exc.Unimplemented, "capnp", "third-party capabilities are not supported")), nil
	}
}

// An importEntry is a capability of the peer that we hold.
type importEntry struct {
	hook      *importHook
	client    *capnp.WeakClient
	wireRefs  uint32                       // descriptors received, to give back in Release
	resolver  capnp.Resolver[capnp.Client] // set while a promise is unresolved
	callsSent bool                         // a call targeted it (embargo needed on local resolution)
}

// importHook is the capnp.ClientHook of an import: calls become Call
// messages on this connection.
type importHook struct {
	c    *Conn
	id   uint32
	flow *window // nil: no flow control
}

// importShutdown: the last local reference to an import is gone.
type importShutdown struct{ hook *importHook }

func (h *importHook) Send(ctx context.Context, s capnp.Send) (*capnp.Answer, capnp.ReleaseFunc) {
	return h.c.sendLocalCall(ctx, callTarget{importID: h.id, flow: h.flow}, s)
}
func (h *importHook) Recv(ctx context.Context, r capnp.Recv) capnp.PipelineCaller {
	return h.c.forwardRecv(ctx, callTarget{importID: h.id}, r)
}
func (h *importHook) Brand() capnp.Brand { return capnp.Brand{Value: h} }
func (h *importHook) Shutdown()          { _ = h.c.post(importShutdown{hook: h}) }
func (h *importHook) String() string {
	return fmt.Sprintf("capnp import %d from %s", h.id, h.c.opts.Peer)
}

// addImport returns a client for the peer's capability id, counting one
// more reference to it; a new import past Limits.MaxImports is refused.
func (s *state) addImport(id uint32, promise bool) (capnp.Client, error) {
	ie := s.imports[id]
	if ie != nil {
		ie.wireRefs++
		if c, ok := ie.client.AddRef(); ok {
			return c, nil
		}
		// The last client is gone but its Release is still in our mailbox:
		// a new hook takes over the entry and its count.
	} else {
		if lim := s.c.opts.Limits.MaxImports; len(s.imports) >= lim {
			return capnp.Client{}, budgetErrorf("MaxImports", int64(lim), "the peer exports %d capabilities to us at once", len(s.imports)+1)
		}
		ie = &importEntry{wireRefs: 1}
		s.imports[id] = ie
	}
	h := &importHook{c: s.c, id: id, flow: newWindow(s.c.opts.FlowWindow)}
	ie.hook = h
	var c capnp.Client
	if promise {
		c, ie.resolver = capnp.NewPromisedClient(h)
	} else {
		c = capnp.NewClient(h)
	}
	w := c.WeakRef()
	ie.client = &w
	return c, nil
}

func (s *state) importShutdown(h *importHook) {
	ie := s.imports[h.id]
	if ie == nil || ie.hook != h {
		return
	}
	delete(s.imports, h.id)
	s.sendRelease(h.id, ie.wireRefs)
}

// sendRelease gives n references to import id back to the peer.
func (s *state) sendRelease(id, n uint32) {
	out, m := newMessage()
	rel, err := m.NewRelease()
	if err != nil {
		out.Release()
		return
	}
	rel.SetId(id)
	rel.SetReferenceCount(n)
	s.sendLazy(out)
}

// releaseExport drops n of the peer's references to export id.
func (s *state) releaseExport(id uint32, n uint32) error {
	e := s.exports.Get(id)
	if e == nil {
		return fmt.Errorf("%w: release of export %d, which we do not export", ErrUnknownID, id)
	}
	if n > e.wireRefs {
		return fmt.Errorf("%w: release of %d references to export %d, which has %d", ErrMalformedFrame, n, id, e.wireRefs)
	}
	e.wireRefs -= n
	if e.wireRefs == 0 {
		s.exports.Remove(id)
		if e.key != nil && s.exportKey[e.key] == id {
			delete(s.exportKey, e.key)
		}
		s.ctx.Stop(e.pid)
	}
	return nil
}

func (s *state) handleRelease(m rpccp.Message) error {
	rel, err := m.Release()
	if err != nil {
		return fmt.Errorf("%w: release: %v", ErrMalformedFrame, err)
	}
	return s.releaseExport(rel.Id(), rel.ReferenceCount())
}

// exportResolved sends the Resolve for an exported promise.
func (s *state) exportResolved(e *export) {
	if s.exports.Get(e.id) != e {
		return // released meanwhile
	}
	out, m := newMessage()
	res, err := m.NewResolve()
	if err != nil {
		out.Release()
		return
	}
	res.SetPromiseId(e.id)
	d, err := res.NewCap()
	if err == nil {
		_, err = s.describeCap(d, e.client)
	}
	if err != nil {
		ex, _ := res.NewException()
		encodeException(ex, err)
	}
	e.promise = false
	s.send(out)
}

// handleResolve: a promise the peer exported to us has resolved.
func (s *state) handleResolve(msg *capnp.Message, m rpccp.Message) error {
	res, err := m.Resolve()
	if err != nil {
		return fmt.Errorf("%w: resolve: %v", ErrMalformedFrame, err)
	}
	var c capnp.Client
	var rerr error
	local := false
	switch res.Which() {
	case rpccp.Resolve_Which_cap:
		d, err := res.Cap()
		if err != nil {
			return fmt.Errorf("%w: resolve cap: %v", ErrMalformedFrame, err)
		}
		if c, err = s.importCap(d); err != nil {
			return err
		}
		w := d.Which()
		local = w == rpccp.CapDescriptor_Which_receiverHosted || w == rpccp.CapDescriptor_Which_receiverAnswer
	case rpccp.Resolve_Which_exception:
		e, err := res.Exception()
		if err != nil {
			return fmt.Errorf("%w: resolve exception: %v", ErrMalformedFrame, err)
		}
		rerr = decodeException(e, s.c.opts.Limits.MaxReasonLength)
	default:
		return fmt.Errorf("%w: resolve of unknown kind %d", ErrMalformedFrame, res.Which())
	}
	ie := s.imports[res.PromiseId()]
	if ie == nil || ie.resolver == nil {
		// We have released the promise already (or it was not one): what
		// the Resolve carries is not wanted.
		c.Release()
		return nil
	}
	if rerr == nil && s.resolvesTo(c, ie.hook) {
		c.Release()
		return fmt.Errorf("%w: promise %d resolved to itself", ErrResolveLoop, res.PromiseId())
	}
	resolver := ie.resolver
	ie.resolver = nil
	if rerr != nil {
		resolver.Reject(rerr)
		return nil
	}
	if local && ie.callsSent {
		// Calls we sent to the promise are on their way back to us; new
		// calls must wait behind them (E-order): embargo.
		c = s.embargo(c, func(t rpccp.MessageTarget) { t.SetImportedCap(res.PromiseId()) })
	}
	resolver.Fulfill(c)
	return nil
}

// resolvesTo reports whether c is, or resolves to, the promise whose hook
// is h: fulfilling h's promise with c would close a loop (capnp would
// follow it forever). The promises fulfilled so far form no loop, so c's
// current resolution is found in a finite walk; it ends at h exactly when
// the new resolution would make one.
func (s *state) resolvesTo(c capnp.Client, h *importHook) bool {
	snap := c.Snapshot()
	defer snap.Release()
	return snap.Brand().Value == h
}

// An embargo holds calls to a local capability until the calls sent
// earlier on the path that led to it have come back (Disembargo).
type embargo struct {
	target   capnp.Client
	cap      *heldCap
	resolver capnp.Resolver[capnp.Client]
}

// lift ends the embargo: the calls it held go to the target, in order.
func (e *embargo) lift() { e.cap.resolve(e.resolver, e.target, nil) }

// fail ends the embargo with err: the calls it held fail.
func (e *embargo) fail(err error) {
	e.target.Release()
	e.cap.resolve(e.resolver, capnp.Client{}, err)
}

// embargo returns a client that queues calls until the peer echoes the
// Disembargo sent now on the target that setTarget writes; then they go to
// target. It takes target's reference.
func (s *state) embargo(target capnp.Client, setTarget func(rpccp.MessageTarget)) capnp.Client {
	p, h, r := newHeldCap("capnp embargo")
	e := &embargo{target: target, cap: h, resolver: r}
	id := s.embargoes.Add(e)
	out, m := newMessage()
	d, err := m.NewDisembargo()
	if err == nil {
		var t rpccp.MessageTarget
		if t, err = d.NewTarget(); err == nil {
			setTarget(t)
			d.Context().SetSenderLoopback(id)
		}
	}
	if err != nil {
		out.Release()
		s.embargoes.Remove(id)
		e.lift()
		return p
	}
	s.send(out)
	return p
}

// embargoResults embargoes the capabilities of q's results that are ours
// and were reached by calls pipelined on q.
func (s *state) embargoResults(q *question, msg *capnp.Message, content capnp.Ptr) {
	if len(q.pipelined) == 0 {
		return
	}
	ct := msg.CapTable()
	done := map[capnp.CapabilityID]bool{}
	for _, path := range q.pipelined {
		p, err := capnp.Transform(content, path)
		if err != nil {
			continue
		}
		iface := p.Interface()
		if !iface.IsValid() || !ct.Contains(iface) || done[iface.Capability()] {
			continue
		}
		idx := iface.Capability()
		done[idx] = true
		c := ct.At(int(idx))
		if !c.IsValid() || s.isOurImport(c) {
			continue
		}
		qid, path := q.id, path
		ct.Set(idx, s.embargo(c, func(t rpccp.MessageTarget) {
			pa, err := t.NewPromisedAnswer()
			if err == nil {
				pa.SetQuestionId(qid)
				_ = encodeTransform(pa, path)
			}
		}))
	}
}

// isOurImport reports whether c is a capability of the peer, imported on
// this connection.
func (s *state) isOurImport(c capnp.Client) bool {
	snap := c.Snapshot()
	defer snap.Release()
	h, ok := snap.Brand().Value.(*importHook)
	return ok && h.c == s.c
}

// disembargoReply is a receiverLoopback Disembargo queued behind the calls
// the connection forwarded before it (actor → itself).
type disembargoReply struct{ msg *capnp.Message }

func (s *state) handleDisembargo(m rpccp.Message) error {
	d, err := m.Disembargo()
	if err != nil {
		return fmt.Errorf("%w: disembargo: %v", ErrMalformedFrame, err)
	}
	switch d.Context().Which() {
	case rpccp.Disembargo_context_Which_senderLoopback:
		tgt, err := d.Target()
		if err != nil {
			return fmt.Errorf("%w: disembargo target: %v", ErrMalformedFrame, err)
		}
		var c capnp.Client
		switch tgt.Which() {
		case rpccp.MessageTarget_Which_importedCap:
			e := s.exports.Get(tgt.ImportedCap())
			if e == nil {
				return fmt.Errorf("%w: disembargo on export %d, which we do not export", ErrUnknownID, tgt.ImportedCap())
			}
			c = e.client
		case rpccp.MessageTarget_Which_promisedAnswer:
			pa, err := tgt.PromisedAnswer()
			if err != nil {
				return fmt.Errorf("%w: disembargo target: %v", ErrMalformedFrame, err)
			}
			a := s.answers[pa.QuestionId()]
			if a == nil || !a.returned {
				return fmt.Errorf("%w: disembargo on question %d, which has no answer", ErrUnknownID, pa.QuestionId())
			}
			transform, err := decodeTransform(pa)
			if err != nil {
				return err
			}
			if c, err = s.resultCap(a, transform); err != nil {
				return fmt.Errorf("%w: disembargo target: %v", ErrMalformedFrame, err)
			}
		default:
			return fmt.Errorf("%w: disembargo target of unknown kind", ErrMalformedFrame)
		}
		snap := c.Snapshot()
		h, ok := snap.Brand().Value.(*importHook)
		snap.Release()
		if !ok || h.c != s.c {
			return fmt.Errorf("%w: senderLoopback disembargo on a capability that does not point back to the sender", ErrMalformedFrame)
		}
		out, om := newMessage()
		rd, _ := om.NewDisembargo()
		t, _ := rd.NewTarget()
		t.SetImportedCap(h.id)
		rd.Context().SetReceiverLoopback(d.Context().SenderLoopback())
		// Behind the calls already forwarded to that import, which sit in
		// our mailbox as callOut messages.
		s.ctx.Send(s.ctx.Self(), disembargoReply{msg: out})
	case rpccp.Disembargo_context_Which_receiverLoopback:
		id := d.Context().ReceiverLoopback()
		e := s.embargoes.Get(id)
		if e == nil {
			return fmt.Errorf("%w: disembargo for embargo %d, which we did not send", ErrUnknownID, id)
		}
		s.embargoes.Remove(id)
		e.lift()
	default:
		return s.replyUnimplemented(m)
	}
	return nil
}

// handleUnimplemented: the peer did not understand something we sent.
func (s *state) handleUnimplemented(m rpccp.Message) error {
	inner, err := m.Unimplemented()
	if err != nil {
		return fmt.Errorf("%w: unimplemented: %v", ErrMalformedFrame, err)
	}
	failQuestion := func(id uint32) {
		q := s.questions.Get(id)
		if q == nil || q.returned() {
			return
		}
		q.state = questionDone // the peer never knew it: no Return to wait for, no Finish to send
		s.settleQuestion(q, settleQuestion{err: exc.New(exc.Unimplemented, "capnp", "the peer does not implement this message")})
		if q.released {
			s.retireQuestion(q)
		}
	}
	switch inner.Which() {
	case rpccp.Message_Which_call:
		if call, err := inner.Call(); err == nil {
			failQuestion(call.QuestionId())
		}
	case rpccp.Message_Which_bootstrap:
		if bs, err := inner.Bootstrap(); err == nil {
			failQuestion(bs.QuestionId())
		}
	case rpccp.Message_Which_resolve:
		if res, err := inner.Resolve(); err == nil && res.Which() == rpccp.Resolve_Which_cap {
			if d, err := res.Cap(); err == nil {
				switch d.Which() {
				case rpccp.CapDescriptor_Which_senderHosted:
					_ = s.releaseExport(d.SenderHosted(), 1)
				case rpccp.CapDescriptor_Which_senderPromise:
					_ = s.releaseExport(d.SenderPromise(), 1)
				}
			}
		}
	}
	return nil
}
