package conn

import (
	"fmt"
	"strings"

	"capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

// DescribeMessage returns a one-line description of an rpc message, for
// logs, test output and span events: "call q3 → import 1 @0x…/2 caps=[sh4]".
func DescribeMessage(m rpccp.Message) string {
	if !capnp.Struct(m).IsValid() {
		// A null pointer reads as an empty struct, whose union says
		// "unimplemented" of another null pointer: stop here.
		return "(null message)"
	}
	switch m.Which() {
	case rpccp.Message_Which_bootstrap:
		b, _ := m.Bootstrap()
		return fmt.Sprintf("bootstrap q%d", b.QuestionId())
	case rpccp.Message_Which_call:
		c, _ := m.Call()
		t, _ := c.Target()
		p, _ := c.Params()
		return fmt.Sprintf("call q%d → %s %#x/%d caps=%s", c.QuestionId(), describeTarget(t), c.InterfaceId(), c.MethodId(), describeCaps(p))
	case rpccp.Message_Which_return:
		r, _ := m.Return()
		switch r.Which() {
		case rpccp.Return_Which_results:
			p, _ := r.Results()
			return fmt.Sprintf("return q%d results caps=%s", r.AnswerId(), describeCaps(p))
		case rpccp.Return_Which_exception:
			e, _ := r.Exception()
			reason, _ := e.Reason()
			return fmt.Sprintf("return q%d exception %v %q", r.AnswerId(), e.Type(), reason)
		default:
			return fmt.Sprintf("return q%d %v", r.AnswerId(), r.Which())
		}
	case rpccp.Message_Which_finish:
		f, _ := m.Finish()
		return finishFrame{questionID: f.QuestionId(), releaseResultCaps: f.ReleaseResultCaps()}.describe()
	case rpccp.Message_Which_resolve:
		r, _ := m.Resolve()
		if r.Which() == rpccp.Resolve_Which_cap {
			d, _ := r.Cap()
			return fmt.Sprintf("resolve p%d → %s", r.PromiseId(), describeCap(d))
		}
		return fmt.Sprintf("resolve p%d → exception", r.PromiseId())
	case rpccp.Message_Which_release:
		r, _ := m.Release()
		return fmt.Sprintf("release e%d ×%d", r.Id(), r.ReferenceCount())
	case rpccp.Message_Which_disembargo:
		d, _ := m.Disembargo()
		t, _ := d.Target()
		switch d.Context().Which() {
		case rpccp.Disembargo_context_Which_senderLoopback:
			return fmt.Sprintf("disembargo senderLoopback %d → %s", d.Context().SenderLoopback(), describeTarget(t))
		case rpccp.Disembargo_context_Which_receiverLoopback:
			return fmt.Sprintf("disembargo receiverLoopback %d → %s", d.Context().ReceiverLoopback(), describeTarget(t))
		}
		return "disembargo " + d.Context().Which().String()
	case rpccp.Message_Which_abort:
		e, _ := m.Abort()
		reason, _ := e.Reason()
		return fmt.Sprintf("abort %v %q", e.Type(), reason)
	case rpccp.Message_Which_unimplemented:
		u, _ := m.Unimplemented()
		return "unimplemented (" + DescribeMessage(u) + ")"
	}
	return m.Which().String()
}

func describeTarget(t rpccp.MessageTarget) string {
	switch t.Which() {
	case rpccp.MessageTarget_Which_importedCap:
		return fmt.Sprintf("import %d", t.ImportedCap())
	case rpccp.MessageTarget_Which_promisedAnswer:
	default:
		return fmt.Sprintf("target of unknown kind %d", t.Which())
	}
	pa, _ := t.PromisedAnswer()
	ops, _ := decodeTransform(pa)
	var b strings.Builder
	fmt.Fprintf(&b, "answer q%d", pa.QuestionId())
	for _, op := range ops {
		fmt.Fprintf(&b, ".%d", op)
	}
	return b.String()
}

func describeCaps(p rpccp.Payload) string {
	l, _ := p.CapTable()
	parts := make([]string, l.Len())
	for i := range parts {
		parts[i] = describeCap(l.At(i))
	}
	return "[" + strings.Join(parts, " ") + "]"
}

func describeCap(d rpccp.CapDescriptor) string {
	switch d.Which() {
	case rpccp.CapDescriptor_Which_senderHosted:
		return fmt.Sprintf("sh%d", d.SenderHosted())
	case rpccp.CapDescriptor_Which_senderPromise:
		return fmt.Sprintf("sp%d", d.SenderPromise())
	case rpccp.CapDescriptor_Which_receiverHosted:
		return fmt.Sprintf("rh%d", d.ReceiverHosted())
	case rpccp.CapDescriptor_Which_receiverAnswer:
		pa, _ := d.ReceiverAnswer()
		return fmt.Sprintf("ra q%d", pa.QuestionId())
	case rpccp.CapDescriptor_Which_none:
		return "none"
	}
	return d.Which().String()
}

// describe is DescribeMessage of a Finish.
func (f finishFrame) describe() string {
	return fmt.Sprintf("finish q%d releaseResultCaps=%v", f.questionID, f.releaseResultCaps)
}
