package conn

import (
	"context"
	"sync"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
)

// This file holds calls that cannot be delivered yet, in vatactor's own
// queues: go-capnp's AnswerQueue, fed a call whose delivery fails (a null
// capability, an unknown method), dereferences a nil PipelineCaller, and a
// peer can arrange both. Nothing here hands a call to another queue's
// pipeline: a call pipelined on an answer waits until that answer has
// returned, then goes to the capability in its results, and a capability
// that is missing or null answers with an exception.
//
// A heldCap is a capability that holds the calls made on it until it
// resolves (an embargo; a capability inside one of our answers still being
// computed), then delivers them in the order they were made. A heldCall is
// one call delivered through it: it wraps the call's Returner, so that the
// calls pipelined on the call's answer wait for its results.

// heldCap is the ClientHook of a capability that is not there yet.
type heldCap struct {
	name string // for String

	mu       sync.Mutex // guards the following
	resolved bool
	target   capnp.Client // once resolved (owned)
	err      error        // once resolved to an error
	calls    []*heldCall  // in arrival order, until resolved
}

// newHeldCap returns a client that holds its calls until resolve.
func newHeldCap(name string) (capnp.Client, *heldCap, capnp.Resolver[capnp.Client]) {
	h := &heldCap{name: name}
	c, r := capnp.NewPromisedClient(h)
	return c, h, r
}

// resolve delivers the held calls to target (or fails them with err), in
// order, then lets later calls through: resolver is fulfilled only once
// every held call has been delivered, so none overtakes them. It takes
// target's reference.
func (h *heldCap) resolve(r capnp.Resolver[capnp.Client], target capnp.Client, err error) {
	h.mu.Lock()
	if h.resolved {
		h.mu.Unlock()
		target.Release()
		return
	}
	calls := h.calls
	h.calls = nil
	for _, hc := range calls {
		hc.deliverTo(target, err)
	}
	h.resolved, h.target, h.err = true, target, err
	h.mu.Unlock()
	if err != nil {
		r.Reject(err)
		return
	}
	r.Fulfill(target)
}

func (h *heldCap) Send(ctx context.Context, s capnp.Send) (*capnp.Answer, capnp.ReleaseFunc) {
	h.mu.Lock()
	if h.resolved {
		target, err := h.target, h.err
		h.mu.Unlock()
		if err != nil {
			return capnp.ErrorAnswer(s.Method, err), func() {}
		}
		return target.SendCall(ctx, s)
	}
	defer h.mu.Unlock()
	hc, ans, release, err := heldSend(ctx, s)
	if err != nil {
		return capnp.ErrorAnswer(s.Method, err), func() {}
	}
	h.calls = append(h.calls, hc)
	return ans, release
}

func (h *heldCap) Recv(ctx context.Context, r capnp.Recv) capnp.PipelineCaller {
	hc := newHeldCall(ctx, r)
	h.mu.Lock()
	if h.resolved {
		target, err := h.target, h.err
		h.mu.Unlock()
		hc.deliverTo(target, err)
		return hc
	}
	h.calls = append(h.calls, hc)
	h.mu.Unlock()
	return hc
}

func (h *heldCap) Brand() capnp.Brand { return capnp.Brand{Value: h} }
func (h *heldCap) String() string     { return h.name }

// Shutdown fails the calls still held (the last reference is gone, or the
// promise has resolved and they were delivered already).
func (h *heldCap) Shutdown() {
	h.mu.Lock()
	calls := h.calls
	h.calls = nil
	h.resolved = true
	if h.err == nil && !h.target.IsValid() {
		h.err = exc.New(exc.Disconnected, "capnp", h.name+": released before it resolved")
	}
	err, target := h.err, h.target
	h.target = capnp.Client{}
	h.mu.Unlock()
	for _, hc := range calls {
		hc.deliverTo(capnp.Client{}, err)
	}
	target.Release()
}

// heldSend turns a Send into a held call: its arguments are placed now
// into a message of its own, and its answer is a promise that the held
// call resolves when it returns.
func heldSend(ctx context.Context, s capnp.Send) (*heldCall, *capnp.Answer, capnp.ReleaseFunc, error) {
	ret := new(capnp.StructReturner)
	r := capnp.Recv{Method: s.Method, Returner: ret, ReleaseArgs: func() {}}
	_, seg := capnp.NewMultiSegmentMessage(nil)
	args, err := capnp.NewRootStruct(seg, s.ArgsSize)
	if err == nil && s.PlaceArgs != nil {
		err = s.PlaceArgs(args)
	}
	if err != nil {
		seg.Message().Release()
		return nil, nil, nil, exc.WrapError("place args", err)
	}
	r.Args, r.ReleaseArgs = args, seg.Message().Release
	hc := newHeldCall(ctx, r)
	ans, release := ret.Answer(s.Method, hc)
	return hc, ans, release, nil
}

// heldCall is one call on a held capability, or one call pipelined on
// such a call. It is the call's Returner (wrapping the caller's) and the
// PipelineCaller of its answer: calls pipelined on it wait for its
// results.
type heldCall struct {
	ctx   context.Context
	recv  capnp.Recv // Returner: the heldCall itself
	inner capnp.Returner

	mu        sync.Mutex // guards the following
	results   capnp.Struct
	err       error
	returned  bool
	pipelined []pipelinedCall
}

// pipelinedCall waits for the results of the call it is pipelined on.
type pipelinedCall struct {
	transform []capnp.PipelineOp
	call      *heldCall
}

func newHeldCall(ctx context.Context, r capnp.Recv) *heldCall {
	hc := new(heldCall)
	hc.init(ctx, r)
	return hc
}

// init makes hc the Returner of r (a heldCall can live inside another
// struct: an answer).
func (hc *heldCall) init(ctx context.Context, r capnp.Recv) {
	hc.ctx, hc.inner = ctx, r.Returner
	hc.recv = r
	hc.recv.Returner = hc
}

// fail fails the calls pipelined on this one, whose results will never
// come (the connection abandoned the call); they go nowhere afterwards.
func (hc *heldCall) fail(err error) {
	hc.mu.Lock()
	pending := hc.pipelined
	hc.pipelined = nil
	hc.err = err
	hc.returned, hc.results = true, capnp.Struct{}
	hc.mu.Unlock()
	for _, p := range pending {
		p.call.deliverTo(capnp.Client{}, err)
	}
}

// deliverTo hands the call to target, or fails it with err.
func (hc *heldCall) deliverTo(target capnp.Client, err error) {
	if err != nil {
		hc.recv.Reject(err)
		return
	}
	target.RecvCall(hc.ctx, hc.recv) // a failure comes back through Return
}

func (hc *heldCall) AllocResults(sz capnp.ObjectSize) (capnp.Struct, error) {
	st, err := hc.inner.AllocResults(sz)
	if err == nil {
		hc.mu.Lock()
		if !hc.returned {
			hc.results = st
		}
		hc.mu.Unlock()
	}
	return st, err
}

func (hc *heldCall) PrepareReturn(e error) {
	hc.mu.Lock()
	if !hc.returned {
		hc.err = e
	}
	hc.mu.Unlock()
	hc.inner.PrepareReturn(e)
}

// Return delivers the calls pipelined on this one to the capabilities in
// its results (or fails them), then returns to the caller.
func (hc *heldCall) Return() {
	hc.mu.Lock()
	// Already returned if the call was abandoned (fail): nothing is
	// pipelined then. Delivered under mu: a later pipelined call waits
	// its turn.
	hc.returned = true
	for _, p := range hc.pipelined {
		hc.deliverPipelined(p)
	}
	hc.pipelined = nil
	hc.mu.Unlock()
	hc.inner.Return()
}

func (hc *heldCall) ReleaseResults() { hc.inner.ReleaseResults() }

// deliverPipelined sends p to the capability at p.transform in the
// results; called once the call has returned.
func (hc *heldCall) deliverPipelined(p pipelinedCall) {
	c, err := pipelineTarget(hc.results.ToPtr(), hc.err, p.transform)
	p.call.deliverTo(c, err)
}

// PipelineRecv implements capnp.PipelineCaller.
func (hc *heldCall) PipelineRecv(ctx context.Context, transform []capnp.PipelineOp, r capnp.Recv) capnp.PipelineCaller {
	next := newHeldCall(ctx, r)
	hc.pipeline(pipelinedCall{transform: transform, call: next})
	return next
}

// PipelineSend implements capnp.PipelineCaller.
func (hc *heldCall) PipelineSend(ctx context.Context, transform []capnp.PipelineOp, s capnp.Send) (*capnp.Answer, capnp.ReleaseFunc) {
	next, ans, release, err := heldSend(ctx, s)
	if err != nil {
		return capnp.ErrorAnswer(s.Method, err), func() {}
	}
	hc.pipeline(pipelinedCall{transform: transform, call: next})
	return ans, release
}

// pipeline queues p until the call returns, or delivers it at once.
func (hc *heldCall) pipeline(p pipelinedCall) {
	hc.mu.Lock()
	defer hc.mu.Unlock()
	if !hc.returned {
		hc.pipelined = append(hc.pipelined, p)
		return
	}
	hc.deliverPipelined(p)
}

// pipelineTarget returns (borrowed) the capability at transform in the
// results root, or why a call pipelined there must fail: the call failed,
// the field is missing or null, or it is not a capability.
func pipelineTarget(root capnp.Ptr, callErr error, transform []capnp.PipelineOp) (capnp.Client, error) {
	if callErr != nil {
		return capnp.Client{}, callErr
	}
	p, err := capnp.Transform(root, transform)
	if err != nil {
		return capnp.Client{}, exc.WrapError("pipelined call", err)
	}
	if !p.IsValid() {
		return capnp.Client{}, exc.New(exc.Failed, "capnp", "pipelined call on a field that is null")
	}
	iface := p.Interface()
	if !iface.IsValid() {
		return capnp.Client{}, exc.New(exc.Failed, "capnp", "pipelined call on a field that is not a capability")
	}
	c := iface.Client()
	if !c.IsValid() {
		return capnp.Client{}, exc.New(exc.Failed, "capnp", "pipelined call on a null capability")
	}
	return c, nil
}
