package conn

import (
	"fmt"
	"slices"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
	"go.opentelemetry.io/otel/attribute"

	"github.com/vatactor/vatactor/conn/core"
)

// This file turns rpc.capnp messages into the core's messages and back.
// Payload contents stay in their capnp messages: the core sees them
// through core.Content and never copies them.

// inPayload is the content of a payload the peer sent: in msg, which the
// payload's user releases.
type inPayload struct {
	msg     *capnp.Message
	content capnp.Ptr
}

// outCall is the content of a local call's params, in its own Call
// message (the question's), filled in place when it is sent.
type outCall struct {
	q       *question
	content capnp.Ptr
}

// outReturn is the content of a Return the callee wrote (the answer's
// message), filled in place when it is sent.
type outReturn struct{ a *answer }

func (p *inPayload) Locate(tr []uint16) (int, bool, error) { return locate(p.content, p.msg, tr) }
func (p *outCall) Locate(tr []uint16) (int, bool, error)   { return locate(p.content, p.q.msg, tr) }
func (p *outReturn) Locate(tr []uint16) (int, bool, error) {
	return locate(p.a.results.ToPtr(), p.a.msg, tr)
}

// locate finds the capability at transform from root, as an index in
// msg's cap table.
func locate(root capnp.Ptr, msg *capnp.Message, tr []uint16) (int, bool, error) {
	ops := make([]capnp.PipelineOp, len(tr))
	for i, f := range tr {
		ops[i].Field = f
	}
	p, err := capnp.Transform(root, ops)
	if err != nil {
		return 0, false, err
	}
	if !p.IsValid() {
		return 0, false, nil
	}
	iface := p.Interface()
	if !iface.IsValid() {
		return 0, false, fmt.Errorf("the field is not a capability")
	}
	return int(iface.Capability()), true, nil
}

// decode reads one message of the peer's. The shell's side of an
// incoming call (its answer) is made here.
func (s *state) decode(msg *capnp.Message, sc *Sidecar) (core.Message, error) {
	m, err := rpccp.ReadRootMessage(msg)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedFrame, err)
	}
	if s.c.trace {
		s.c.opts.Logger.Debug("capnp recv", "peer", s.c.opts.Peer, "msg", DescribeMessage(m))
	}
	release := true // the message is not kept by what it became
	defer func() {
		if release {
			msg.Release()
		}
	}()
	switch m.Which() {
	case rpccp.Message_Which_call:
		call, err := m.Call()
		if err != nil {
			return nil, malformed("call", err)
		}
		out := &s.in.call
		*out = core.Call{QuestionID: call.QuestionId(),
			Method:           core.Method{InterfaceID: call.InterfaceId(), MethodID: call.MethodId()},
			ResultsElsewhere: call.SendResultsTo().Which() != rpccp.Call_sendResultsTo_Which_caller}
		tgt, err := call.Target()
		if err != nil {
			return nil, malformed("call target", err)
		}
		if out.Target, err = decodeTarget(tgt); err != nil {
			return nil, err
		}
		params, err := call.Params()
		if err != nil {
			return nil, malformed("call params", err)
		}
		if out.Params, err = s.decodePayload(msg, params); err != nil {
			return nil, err
		}
		out.Params.Size = heldBytes(msg)
		a := s.newAnswer(out.QuestionID, capnp.Method{InterfaceID: out.Method.InterfaceID, MethodID: out.Method.MethodID}, false, sc)
		if a.args == nil {
			a.args = msg
			release = false
			a.in = s.scratch // the call's content lives in its answer
			out.Params.Content = &a.in
		}
		return out, nil
	case rpccp.Message_Which_return:
		ret, err := m.Return()
		if err != nil {
			return nil, malformed("return", err)
		}
		out := &s.in.ret
		*out = core.Return{AnswerID: ret.AnswerId(), ReleaseParamCaps: ret.ReleaseParamCaps()}
		switch ret.Which() {
		case rpccp.Return_Which_results:
			payload, err := ret.Results()
			if err != nil {
				return nil, malformed("return results", err)
			}
			p, err := s.decodePayload(msg, payload)
			if err != nil {
				return nil, err
			}
			if q := s.byQID[out.AnswerID]; q != nil {
				q.in = s.scratch // the results' content lives in their question
				p.Content = &q.in
			} else {
				in := s.scratch
				p.Content = &in
			}
			s.in.payload = p
			out.Results = &s.in.payload
			release = false // the question's results (or the garbage collector's)
		case rpccp.Return_Which_exception:
			e, err := ret.Exception()
			if err != nil {
				return nil, malformed("return exception", err)
			}
			ex, err := decodeException(e)
			if err != nil {
				return nil, err
			}
			out.Exception = &ex
		case rpccp.Return_Which_canceled:
			out.Canceled = true
		default:
			out.Other = true
		}
		return out, nil
	default:
		return s.decodeRare(m, msg, sc, &release)
	}
}

// decodeRare decodes every message but a Call and a Return: kept
// out of decode, whose frame is on the stack of every call a reader
// handles in place (a switch's frame holds every case's locals). release
// is decode's: whether the message is released once decoded.
//
//go:noinline
func (s *state) decodeRare(m rpccp.Message, msg *capnp.Message, sc *Sidecar, release *bool) (core.Message, error) {
	switch m.Which() {
	case rpccp.Message_Which_bootstrap:
		bs, err := m.Bootstrap()
		if err != nil {
			return nil, malformed("bootstrap", err)
		}
		s.traceEvent("bootstrap", attribute.String("direction", "received"))
		s.newAnswer(bs.QuestionId(), bootstrapMethod, true, sc)
		return &core.Bootstrap{QuestionID: bs.QuestionId()}, nil
	case rpccp.Message_Which_finish:
		f, err := m.Finish()
		if err != nil {
			return nil, malformed("finish", err)
		}
		return &core.Finish{QuestionID: f.QuestionId(), ReleaseResultCaps: f.ReleaseResultCaps()}, nil
	case rpccp.Message_Which_resolve:
		res, err := m.Resolve()
		if err != nil {
			return nil, malformed("resolve", err)
		}
		out := &core.Resolve{PromiseID: res.PromiseId()}
		switch res.Which() {
		case rpccp.Resolve_Which_cap:
			d, err := res.Cap()
			if err != nil {
				return nil, malformed("resolve cap", err)
			}
			cd, err := decodeDescriptor(d)
			if err != nil {
				return nil, err
			}
			out.Cap = &cd
		case rpccp.Resolve_Which_exception:
			e, err := res.Exception()
			if err != nil {
				return nil, malformed("resolve exception", err)
			}
			ex, err := decodeException(e)
			if err != nil {
				return nil, err
			}
			out.Exception = &ex
		default:
			return nil, fmt.Errorf("%w: resolve of unknown kind %d", ErrMalformedFrame, res.Which())
		}
		return out, nil
	case rpccp.Message_Which_release:
		rel, err := m.Release()
		if err != nil {
			return nil, malformed("release", err)
		}
		return &core.Release{ID: rel.Id(), Count: rel.ReferenceCount()}, nil
	case rpccp.Message_Which_disembargo:
		d, err := m.Disembargo()
		if err != nil {
			return nil, malformed("disembargo", err)
		}
		tgt, err := d.Target()
		if err != nil {
			return nil, malformed("disembargo target", err)
		}
		out := &core.Disembargo{}
		if out.Target, err = decodeTarget(tgt); err != nil {
			return nil, err
		}
		switch ctx := d.Context(); ctx.Which() {
		case rpccp.Disembargo_context_Which_senderLoopback:
			out.Context, out.EmbargoID = core.SenderLoopback, ctx.SenderLoopback()
		case rpccp.Disembargo_context_Which_receiverLoopback:
			out.Context, out.EmbargoID = core.ReceiverLoopback, ctx.ReceiverLoopback()
		default:
			return s.unknown(m, msg, release), nil
		}
		return out, nil
	case rpccp.Message_Which_abort:
		e, err := m.Abort()
		if err != nil {
			return &core.Abort{Exception: core.Exception{Type: core.ExcFailed, Reason: "(unreadable abort: " + err.Error() + ")"}}, nil
		}
		ex, err := decodeException(e)
		if err != nil {
			ex = core.Exception{Type: core.ExcFailed, Reason: "(unreadable abort: " + err.Error() + ")"}
		}
		return &core.Abort{Exception: ex}, nil
	case rpccp.Message_Which_unimplemented:
		inner, err := m.Unimplemented()
		if err != nil {
			return nil, malformed("unimplemented", err)
		}
		return &core.Unimplemented{Message: decodeEchoed(inner)}, nil
	}
	return s.unknown(m, msg, release), nil
}

// malformed is the error of a frame whose what cannot be read.
func malformed(what string, err error) error {
	return fmt.Errorf("%w: %s: %v", ErrMalformedFrame, what, err)
}

// unknown is a message we do not implement; the core echoes it back
// (within MaxUnimplementedEcho), so its message is kept.
func (s *state) unknown(m rpccp.Message, msg *capnp.Message, release *bool) core.Message {
	size, _ := msg.TotalSize()
	*release = false
	return &core.Unknown{Kind: int(m.Which()), Size: int(size), Raw: m}
}

// decodeEchoed reads what the peer echoed in an Unimplemented: the kind
// and ids the core needs.
func decodeEchoed(m rpccp.Message) core.Message {
	switch m.Which() {
	case rpccp.Message_Which_call:
		if call, err := m.Call(); err == nil {
			return &core.Call{QuestionID: call.QuestionId()}
		}
	case rpccp.Message_Which_bootstrap:
		if bs, err := m.Bootstrap(); err == nil {
			return &core.Bootstrap{QuestionID: bs.QuestionId()}
		}
	case rpccp.Message_Which_resolve:
		if res, err := m.Resolve(); err == nil && res.Which() == rpccp.Resolve_Which_cap {
			if d, err := res.Cap(); err == nil {
				if cd, err := decodeDescriptor(d); err == nil {
					return &core.Resolve{PromiseID: res.PromiseId(), Cap: &cd}
				}
			}
		}
	}
	return &core.Unknown{Kind: int(m.Which())}
}

func (s *state) decodePayload(msg *capnp.Message, p rpccp.Payload) (core.Payload, error) {
	content, err := p.Content()
	if err != nil {
		return core.Payload{}, fmt.Errorf("%w: payload content: %v", ErrMalformedFrame, err)
	}
	out := core.Payload{Content: s.newInPayload(msg, content)}
	if !p.HasCapTable() {
		return out, nil
	}
	list, err := p.CapTable()
	if err != nil {
		return core.Payload{}, fmt.Errorf("%w: cap table: %v", ErrMalformedFrame, err)
	}
	if lim := s.c.opts.Limits.MaxCapsPerMessage; list.Len() > lim {
		return core.Payload{}, budgetErrorf("MaxCapsPerMessage", int64(lim), "a message with %d capabilities", list.Len())
	}
	t := s.storage()
	out.Caps = slices.Grow(t.descs[:0], list.Len())[:list.Len()]
	t.descs = out.Caps
	for i := range out.Caps {
		if out.Caps[i], err = decodeDescriptor(list.At(i)); err != nil {
			return core.Payload{}, err
		}
	}
	return out, nil
}

// newInPayload is the content of a payload the peer sent; a pool of one
// is enough while the caller moves it into its answer or question.
func (s *state) newInPayload(msg *capnp.Message, content capnp.Ptr) *inPayload {
	s.scratch = inPayload{msg: msg, content: content}
	return &s.scratch
}

func decodeDescriptor(d rpccp.CapDescriptor) (core.CapDescriptor, error) {
	switch d.Which() {
	case rpccp.CapDescriptor_Which_none:
		return core.CapDescriptor{Kind: core.NoCap}, nil
	case rpccp.CapDescriptor_Which_senderHosted:
		return core.CapDescriptor{Kind: core.SenderHosted, ID: d.SenderHosted()}, nil
	case rpccp.CapDescriptor_Which_senderPromise:
		return core.CapDescriptor{Kind: core.SenderPromise, ID: d.SenderPromise()}, nil
	case rpccp.CapDescriptor_Which_receiverHosted:
		return core.CapDescriptor{Kind: core.ReceiverHosted, ID: d.ReceiverHosted()}, nil
	case rpccp.CapDescriptor_Which_receiverAnswer:
		pa, err := d.ReceiverAnswer()
		if err != nil {
			return core.CapDescriptor{}, fmt.Errorf("%w: receiverAnswer: %v", ErrMalformedFrame, err)
		}
		tr, err := decodeTransform(pa)
		if err != nil {
			return core.CapDescriptor{}, err
		}
		return core.CapDescriptor{Kind: core.ReceiverAnswer, ID: pa.QuestionId(), Transform: tr}, nil
	}
	return core.CapDescriptor{Kind: core.ThirdPartyHosted}, nil
}

func decodeTarget(t rpccp.MessageTarget) (core.Target, error) {
	switch t.Which() {
	case rpccp.MessageTarget_Which_importedCap:
		return core.Target{Kind: core.ImportedCap, ID: t.ImportedCap()}, nil
	case rpccp.MessageTarget_Which_promisedAnswer:
		pa, err := t.PromisedAnswer()
		if err != nil {
			return core.Target{}, fmt.Errorf("%w: call target: %v", ErrMalformedFrame, err)
		}
		tr, err := decodeTransform(pa)
		if err != nil {
			return core.Target{}, err
		}
		return core.Target{Kind: core.PromisedAnswer, ID: pa.QuestionId(), Transform: tr}, nil
	}
	return core.Target{}, fmt.Errorf("%w: call target of unknown kind %d", ErrMalformedFrame, t.Which())
}

func decodeTransform(pa rpccp.PromisedAnswer) ([]uint16, error) {
	ops, err := pa.Transform()
	if err != nil {
		return nil, fmt.Errorf("%w: transform: %v", ErrMalformedFrame, err)
	}
	if ops.Len() == 0 {
		return nil, nil
	}
	out := make([]uint16, 0, ops.Len())
	for i := 0; i < ops.Len(); i++ {
		op := ops.At(i)
		switch op.Which() {
		case rpccp.PromisedAnswer_Op_Which_noop:
		case rpccp.PromisedAnswer_Op_Which_getPointerField:
			out = append(out, op.GetPointerField())
		default:
			return nil, fmt.Errorf("%w: unknown transform op %d", ErrMalformedFrame, op.Which())
		}
	}
	return out, nil
}

func decodeException(e rpccp.Exception) (core.Exception, error) {
	reason, _ := e.ReasonBytes()
	ex := core.Exception{Type: core.ExceptionType(e.Type()), Reason: string(reason)}
	ep, ok, err := epitaphOf(e, 1<<20)
	if err != nil {
		return core.Exception{}, err
	}
	if ok {
		ex.Epitaph = &ep
	}
	return ex, nil
}

// encode builds the capnp message of one of the core's messages. owner is
// the answer a Return belongs to (it keeps the message); sc the sidecar of
// a call.
func (s *state) encode(m core.Message) (msg *capnp.Message, owner *answer, sc *Sidecar, err error) {
	switch m := m.(type) {
	case *core.Call:
		return s.encodeCall(*m)
	case *core.Return:
		return s.encodeReturn(*m)
	}
	msg, rm := newMessage()
	defer func() {
		if err != nil {
			msg.Release()
		}
	}()
	switch m := m.(type) {
	case *core.Bootstrap:
		var bs rpccp.Bootstrap
		if bs, err = rm.NewBootstrap(); err == nil {
			bs.SetQuestionId(m.QuestionID)
			if q := s.byQID[m.QuestionID]; q != nil {
				sc = q.sidecar
			}
		}
	case *core.Finish:
		var f rpccp.Finish
		if f, err = rm.NewFinish(); err == nil {
			f.SetQuestionId(m.QuestionID)
			f.SetReleaseResultCaps(m.ReleaseResultCaps)
			f.SetRequireEarlyCancellationWorkaround(false)
		}
	case *core.Release:
		var rel rpccp.Release
		if rel, err = rm.NewRelease(); err == nil {
			rel.SetId(m.ID)
			rel.SetReferenceCount(m.Count)
		}
	case *core.Resolve:
		var res rpccp.Resolve
		if res, err = rm.NewResolve(); err == nil {
			res.SetPromiseId(m.PromiseID)
			if m.Cap != nil {
				var d rpccp.CapDescriptor
				if d, err = res.NewCap(); err == nil {
					err = encodeDescriptor(d, *m.Cap)
				}
			} else {
				var e rpccp.Exception
				if e, err = res.NewException(); err == nil {
					err = encodeException(e, *m.Exception)
				}
			}
		}
	case *core.Disembargo:
		var d rpccp.Disembargo
		if d, err = rm.NewDisembargo(); err == nil {
			var t rpccp.MessageTarget
			if t, err = d.NewTarget(); err == nil {
				err = encodeTarget(t, m.Target)
			}
			switch m.Context {
			case core.SenderLoopback:
				d.Context().SetSenderLoopback(m.EmbargoID)
			case core.ReceiverLoopback:
				d.Context().SetReceiverLoopback(m.EmbargoID)
			}
		}
	case *core.Abort:
		var e rpccp.Exception
		if e, err = rm.NewAbort(); err == nil {
			err = encodeException(e, m.Exception)
		}
	case *core.Unimplemented:
		u, ok := m.Message.(*core.Unknown)
		raw, isRaw := u.Raw.(rpccp.Message)
		if !ok || !isRaw {
			return nil, nil, nil, fmt.Errorf("unimplemented echo of %v", m.Message)
		}
		lim := s.c.opts.Limits.MaxUnimplementedEcho
		src := capnp.Struct(raw).Message()
		src.ResetReadLimit(lim)
		err = rm.SetUnimplemented(raw)
		src.Release()
		if err != nil {
			err = budgetErrorf("MaxUnimplementedEcho", int64(lim), "a message we do not implement too large to echo: %v", err)
		}
	default:
		err = fmt.Errorf("message of unknown type %T", m)
	}
	return msg, nil, sc, err
}

// encodeCall fills in a local call's own message, or copies a call of
// the peer's that goes back to it.
func (s *state) encodeCall(m core.Call) (*capnp.Message, *answer, *Sidecar, error) {
	if oc, ok := m.Params.Content.(*outCall); ok && oc.q.msg != nil {
		q := oc.q
		msg, call := q.msg, q.rcall
		q.msg = nil
		call.SetQuestionId(m.QuestionID)
		tgt, err := call.NewTarget()
		if err == nil {
			err = encodeTarget(tgt, m.Target)
		}
		if err == nil {
			params, _ := call.Params()
			err = encodeCapTable(params, m.Params.Caps)
		}
		if err != nil {
			msg.Release()
			return nil, nil, nil, err
		}
		return msg, nil, q.sidecar, nil
	}
	msg, rm := newMessage()
	call, err := rm.NewCall()
	if err == nil {
		call.SetQuestionId(m.QuestionID)
		call.SetInterfaceId(m.Method.InterfaceID)
		call.SetMethodId(m.Method.MethodID)
		var tgt rpccp.MessageTarget
		if tgt, err = call.NewTarget(); err == nil {
			err = encodeTarget(tgt, m.Target)
		}
	}
	if err == nil {
		var params rpccp.Payload
		if params, err = call.NewParams(); err == nil {
			err = copyPayload(params, m.Params)
		}
	}
	if err != nil {
		msg.Release()
		return nil, nil, nil, err
	}
	return msg, nil, nil, nil
}

// encodeReturn fills in the Return the callee wrote, or builds one.
func (s *state) encodeReturn(m core.Return) (*capnp.Message, *answer, *Sidecar, error) {
	a := s.answers.At(m.AnswerID)
	if a != nil {
		var err error
		if m.Exception != nil {
			err = excError(exceptionError(*m.Exception))
		}
		endAnswerSpan(a, err, m.Exception != nil && m.Exception.Epitaph != nil)
		if a.start != 0 {
			s.metered = append(s.metered, meteredCall{server: true, took: s.meterSince(a.start), method: a.method, err: err})
			a.start = 0
		}
	}
	if r := m.Results; r != nil {
		if or, ok := r.Content.(*outReturn); ok && or.a.msg != nil {
			a := or.a
			payload, _ := a.ret.Results()
			if err := encodeCapTable(payload, r.Caps); err != nil {
				return nil, nil, nil, err
			}
			a.retMsg.Store(a.msg)
			return a.msg, a, nil, nil
		}
	}
	if a != nil && a.returned && a.msg != nil {
		a.msg.Release() // written by the callee, not sent: an exception goes instead
		a.msg = nil
	}
	msg, rm := newMessage()
	ret, err := rm.NewReturn()
	if err == nil {
		ret.SetAnswerId(m.AnswerID)
		ret.SetReleaseParamCaps(m.ReleaseParamCaps)
		switch {
		case m.Results != nil:
			var payload rpccp.Payload
			if payload, err = ret.NewResults(); err == nil {
				err = copyPayload(payload, *m.Results)
			}
		case m.Exception != nil:
			var e rpccp.Exception
			if e, err = ret.NewException(); err == nil {
				err = encodeException(e, *m.Exception)
			}
		default:
			ret.SetCanceled()
		}
	}
	if err != nil {
		msg.Release()
		return nil, nil, nil, err
	}
	return msg, nil, nil, nil
}

// copyPayload writes p into dst: content copied from the message it is
// in (or the bootstrap's one capability), and the descriptors.
func copyPayload(dst rpccp.Payload, p core.Payload) error {
	switch c := p.Content.(type) {
	case *inPayload:
		if err := dst.SetContent(c.content); err != nil {
			return err
		}
	case *outReturn:
		if err := dst.SetContent(c.a.results.ToPtr()); err != nil {
			return err
		}
	case core.RootCap:
		if err := dst.SetContent(capnp.NewInterface(dst.Segment(), 0).ToPtr()); err != nil {
			return err
		}
	case nil:
		st, err := capnp.NewStruct(dst.Segment(), capnp.ObjectSize{})
		if err != nil {
			return err
		}
		if err := dst.SetContent(st.ToPtr()); err != nil {
			return err
		}
	default:
		return fmt.Errorf("payload content of type %T", c)
	}
	// A copied content's interface pointers keep their indices: the
	// descriptors below are that table.
	return encodeCapTable(dst, p.Caps)
}

func encodeCapTable(p rpccp.Payload, caps []core.CapDescriptor) error {
	if len(caps) == 0 {
		return nil
	}
	list, err := p.CapTable()
	if err != nil || list.Len() != len(caps) {
		if list, err = p.NewCapTable(int32(len(caps))); err != nil {
			return err
		}
	}
	for i, d := range caps {
		if err := encodeDescriptor(list.At(i), d); err != nil {
			return err
		}
	}
	return nil
}

func encodeDescriptor(d rpccp.CapDescriptor, cd core.CapDescriptor) error {
	switch cd.Kind {
	case core.NoCap:
		d.SetNone()
	case core.SenderHosted:
		d.SetSenderHosted(cd.ID)
	case core.SenderPromise:
		d.SetSenderPromise(cd.ID)
	case core.ReceiverHosted:
		d.SetReceiverHosted(cd.ID)
	case core.ReceiverAnswer:
		pa, err := d.NewReceiverAnswer()
		if err != nil {
			return err
		}
		pa.SetQuestionId(cd.ID)
		return encodeTransform(pa, cd.Transform)
	default:
		return fmt.Errorf("capability descriptor of kind %v", cd.Kind)
	}
	return nil
}

func encodeTarget(t rpccp.MessageTarget, tg core.Target) error {
	if tg.Kind == core.ImportedCap {
		t.SetImportedCap(tg.ID)
		return nil
	}
	pa, err := t.NewPromisedAnswer()
	if err != nil {
		return err
	}
	pa.SetQuestionId(tg.ID)
	return encodeTransform(pa, tg.Transform)
}

func encodeTransform(pa rpccp.PromisedAnswer, transform []uint16) error {
	if len(transform) == 0 {
		return nil
	}
	ops, err := pa.NewTransform(int32(len(transform)))
	if err != nil {
		return err
	}
	for i, f := range transform {
		ops.At(i).SetGetPointerField(f)
	}
	return nil
}

func encodeException(e rpccp.Exception, ex core.Exception) error {
	e.SetType(rpccp.Exception_Type(ex.Type))
	if err := e.SetReason(ex.Reason); err != nil {
		return err
	}
	if ex.Epitaph != nil {
		return setEpitaph(e, *ex.Epitaph)
	}
	return nil
}

// exceptionError is a wire exception as an error (for the answer's span).
func exceptionError(ex core.Exception) error {
	return &core.Error{Type: ex.Type, Cause: fmt.Errorf("%s", ex.Reason)}
}

// coreError is a callee's error as the core reads it: its capnp
// exception type, and its text as it goes on the wire.
func coreError(err error) error {
	return &core.Error{Type: core.ExceptionType(exc.TypeOf(err)), Cause: err}
}
