package core

import (
	"fmt"
	"slices"
	"strings"

	"github.com/vatactor/vatactor/supervisor"
)

// A Message is one Cap'n Proto RPC message as the core reads and writes
// it: one of Bootstrap, Call, Return, Finish, Resolve, Release,
// Disembargo, Abort, Unimplemented, or Unknown (a message the runner could
// read but that is of a kind we do not implement). Its String is its
// one-line description, used by logs, scripts and the simulation.
type Message interface {
	fmt.Stringer
	message()
}

// Bootstrap asks for the receiver's bootstrap capability.
type Bootstrap struct{ QuestionID uint32 }

// Call is a method call on a capability of the receiver.
type Call struct {
	QuestionID uint32
	Target     Target
	Method     Method
	Params     Payload
	// ResultsElsewhere: the caller asked for the results to go somewhere
	// other than back to it (three-party handoff); we answer it with
	// unimplemented.
	ResultsElsewhere bool
}

// Return answers a Call or a Bootstrap: results, an exception, or
// canceled.
type Return struct {
	AnswerID uint32
	// ReleaseParamCaps: the receiver of the Return drops its references
	// to the capabilities of the call's params (sender: we will not send
	// Release for them).
	ReleaseParamCaps bool
	Results          *Payload   // set for results
	Exception        *Exception // set for an exception
	Canceled         bool       // neither: the call was canceled
	// Other: a kind of Return we never ask for (results sent elsewhere,
	// taken from another question); a protocol error.
	Other bool
}

// Finish tells the callee that the caller is done with a question.
type Finish struct {
	QuestionID uint32
	// ReleaseResultCaps: the caller will not use (and drops) the
	// capabilities in the results.
	ReleaseResultCaps bool
	// Early (not on the wire): the core finishes an answer nobody
	// needs before its caller releases it; nobody waits for it, so it may
	// wait for company longer than another.
	Early bool
}

// Resolve tells the receiver what one of the sender's promises (an
// export the receiver imported as senderPromise) has become.
type Resolve struct {
	PromiseID uint32
	Cap       *CapDescriptor // set when it resolved to a capability
	Exception *Exception     // set when it broke
}

// Release drops Count references to one of the receiver's exports.
type Release struct {
	ID    uint32
	Count uint32
}

// DisembargoContext says which way a Disembargo goes.
type DisembargoContext uint8

const (
	// SenderLoopback: sent by the side holding an embargo, along the
	// path its earlier calls took; the receiver reflects it back.
	SenderLoopback DisembargoContext = iota + 1
	// ReceiverLoopback: the reflection; it lifts the embargo named.
	ReceiverLoopback
	// OtherContext: a kind of Disembargo of three-party handoff (accept,
	// provide), which we do not implement.
	OtherContext
)

// Disembargo is the message that ends an embargo (rpc.capnp explains why).
type Disembargo struct {
	Target    Target
	Context   DisembargoContext
	EmbargoID uint32
}

// Abort is the sender's last message; with an epitaph in its exception it
// is a graceful end.
type Abort struct{ Exception Exception }

// Unimplemented echoes back a message the sender does not implement.
type Unimplemented struct{ Message Message }

// Unknown is a message of a kind the core does not implement. Raw is the
// runner's copy of it (echoed back in an Unimplemented), Size its bytes.
type Unknown struct {
	Kind int
	Size int
	Raw  any
}

func (*Bootstrap) message()     {}
func (*Call) message()          {}
func (*Return) message()        {}
func (*Finish) message()        {}
func (*Resolve) message()       {}
func (*Release) message()       {}
func (*Disembargo) message()    {}
func (*Abort) message()         {}
func (*Unimplemented) message() {}
func (*Unknown) message()       {}

// Method names a method by interface and ordinal.
type Method struct {
	InterfaceID uint64
	MethodID    uint16
}

func (m Method) String() string { return fmt.Sprintf("@%#x.%d", m.InterfaceID, m.MethodID) }

// TargetKind says what a call is addressed to.
type TargetKind uint8

const (
	// ImportedCap: an export of the receiver, by id.
	ImportedCap TargetKind = iota + 1
	// PromisedAnswer: a capability in the results of one of the
	// receiver's answers, by question id and transform.
	PromisedAnswer
)

// Target is where a Call or Disembargo is addressed.
type Target struct {
	Kind      TargetKind
	ID        uint32   // the export id or the question id
	Transform []uint16 // PromisedAnswer: pointer fields to follow in the results
}

func (t Target) String() string {
	if t.Kind == PromisedAnswer {
		return fmt.Sprintf("answer %d%s", t.ID, transformString(t.Transform))
	}
	return fmt.Sprintf("export %d", t.ID)
}

func transformString(tr []uint16) string {
	if len(tr) == 0 {
		return ""
	}
	var b strings.Builder
	for _, f := range tr {
		fmt.Fprintf(&b, ".%d", f)
	}
	return b.String()
}

// DescriptorKind is the kind of a capability descriptor on the wire.
type DescriptorKind uint8

const (
	// NoCap: a null capability.
	NoCap DescriptorKind = iota
	// SenderHosted: an export of the sender (not a promise).
	SenderHosted
	// SenderPromise: an export of the sender that may resolve later.
	SenderPromise
	// ReceiverHosted: one of the receiver's own exports.
	ReceiverHosted
	// ReceiverAnswer: a capability in one of the receiver's answers.
	ReceiverAnswer
	// ThirdPartyHosted: three-party handoff, not implemented.
	ThirdPartyHosted
)

var descriptorNames = [...]string{"none", "senderHosted", "senderPromise", "receiverHosted", "receiverAnswer", "thirdPartyHosted"}

func (k DescriptorKind) String() string {
	if int(k) < len(descriptorNames) {
		return descriptorNames[k]
	}
	return fmt.Sprintf("descriptor(%d)", k)
}

// CapDescriptor is one entry of a payload's capability table on the wire.
type CapDescriptor struct {
	Kind      DescriptorKind
	ID        uint32   // the export or import id, or ReceiverAnswer's question id
	Transform []uint16 // ReceiverAnswer
}

func (d CapDescriptor) String() string {
	switch d.Kind {
	case NoCap, ThirdPartyHosted:
		return d.Kind.String()
	case ReceiverAnswer:
		return fmt.Sprintf("%v %d%s", d.Kind, d.ID, transformString(d.Transform))
	}
	return fmt.Sprintf("%v %d", d.Kind, d.ID)
}

// Payload is the params of a Call or the results of a Return: content the
// core does not read, and the capability table.
type Payload struct {
	// Content is the runner's (a capnp pointer, or the simulation's
	// value); the core reads it only through Locate.
	Content Content
	// Caps is the table on the wire (in messages) or the capabilities as
	// local code sees them (CapTable: in calls delivered and results).
	Caps []CapDescriptor
	// CapTable is the payload's capabilities on our side of the wire: set
	// by the runner in a local call's params and a Return's results,
	// and by the core in calls it delivers and results it settles.
	CapTable []Cap
	// Size is the payload's message in bytes (for budgets); 0 if unknown.
	Size int
}

// Content is a payload's content, opaque to the core.
type Content interface {
	// Locate returns the index in the payload's capability table of the
	// capability reached by following transform's pointer fields from the
	// root; ok is false when that pointer is null. err says why there is
	// no capability there (not a struct, not a capability, out of range).
	Locate(transform []uint16) (index int, ok bool, err error)
}

// ExceptionType is an exception's kind, as on the wire.
type ExceptionType uint8

const (
	ExcFailed ExceptionType = iota
	ExcOverloaded
	ExcDisconnected
	ExcUnimplemented
)

var exceptionTypeNames = [...]string{"failed", "overloaded", "disconnected", "unimplemented"}

func (t ExceptionType) String() string {
	if int(t) < len(exceptionTypeNames) {
		return exceptionTypeNames[t]
	}
	return fmt.Sprintf("exception(%d)", t)
}

// Exception is an exception on the wire: a type, a reason and, in an
// Abort or a call refused by a draining connection, an epitaph.
type Exception struct {
	Type    ExceptionType
	Reason  string
	Epitaph *supervisor.Epitaph
}

func (e Exception) String() string {
	s := e.Type.String() + " " + quote(e.Reason)
	if e.Epitaph != nil {
		s += " epitaph " + e.Epitaph.String()
	}
	return s
}

func quote(s string) string { return fmt.Sprintf("%q", s) }

func (m Bootstrap) String() string { return fmt.Sprintf("bootstrap q%d", m.QuestionID) }

func (m Call) String() string {
	s := fmt.Sprintf("call q%d %v %v", m.QuestionID, m.Target, m.Method)
	if len(m.Params.Caps) > 0 {
		s += " caps" + descriptorsString(m.Params.Caps)
	}
	if m.ResultsElsewhere {
		s += " results-elsewhere"
	}
	return s
}

func descriptorsString(ds []CapDescriptor) string {
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = d.String()
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

func (m Return) String() string {
	s := fmt.Sprintf("return a%d", m.AnswerID)
	switch {
	case m.Results != nil:
		s += " results"
		if len(m.Results.Caps) > 0 {
			s += " caps" + descriptorsString(m.Results.Caps)
		}
	case m.Exception != nil:
		s += " exception " + m.Exception.String()
	case m.Canceled:
		s += " canceled"
	default:
		s += " other"
	}
	if m.ReleaseParamCaps {
		s += " releaseParamCaps"
	}
	return s
}

func (m Finish) String() string {
	s := fmt.Sprintf("finish q%d", m.QuestionID)
	if m.ReleaseResultCaps {
		s += " releaseResultCaps"
	}
	return s
}

func (m Resolve) String() string {
	if m.Cap != nil {
		return fmt.Sprintf("resolve promise %d to %v", m.PromiseID, *m.Cap)
	}
	if m.Exception != nil {
		return fmt.Sprintf("resolve promise %d to exception %v", m.PromiseID, *m.Exception)
	}
	return fmt.Sprintf("resolve promise %d to nothing", m.PromiseID)
}

func (m Release) String() string { return fmt.Sprintf("release export %d ×%d", m.ID, m.Count) }

func (m Disembargo) String() string {
	switch m.Context {
	case SenderLoopback:
		return fmt.Sprintf("disembargo %v senderLoopback %d", m.Target, m.EmbargoID)
	case ReceiverLoopback:
		return fmt.Sprintf("disembargo %v receiverLoopback %d", m.Target, m.EmbargoID)
	}
	return fmt.Sprintf("disembargo %v (three-party)", m.Target)
}

func (m Abort) String() string { return "abort " + m.Exception.String() }

func (m Unimplemented) String() string {
	if m.Message == nil {
		return "unimplemented (empty)"
	}
	return "unimplemented (" + m.Message.String() + ")"
}

func (m Unknown) String() string {
	return fmt.Sprintf("unknown message kind %d (%d bytes)", m.Kind, m.Size)
}

// Copy returns a copy of m that outlives the Step that made it: a Send's
// message lives in the core's storage, and its slices and payload in
// records the core reuses (a retired answer's descriptors), possibly for
// another connection's turn (Scratch). Everything m points to is copied.
func Copy(m Message) Message {
	switch m := m.(type) {
	case *Bootstrap:
		v := *m
		return &v
	case *Call:
		v := *m
		v.Target = copyTarget(m.Target)
		v.Params = copyPayload(m.Params)
		return &v
	case *Return:
		v := *m
		if m.Results != nil {
			p := copyPayload(*m.Results)
			v.Results = &p
		}
		v.Exception = copyException(m.Exception)
		return &v
	case *Finish:
		v := *m
		return &v
	case *Resolve:
		v := *m
		if m.Cap != nil {
			d := copyDescriptor(*m.Cap)
			v.Cap = &d
		}
		v.Exception = copyException(m.Exception)
		return &v
	case *Release:
		v := *m
		return &v
	case *Disembargo:
		v := *m
		v.Target = copyTarget(m.Target)
		return &v
	case *Abort:
		v := *m
		if ep := m.Exception.Epitaph; ep != nil {
			e := *ep
			v.Exception.Epitaph = &e
		}
		return &v
	case *Unimplemented:
		v := *m
		v.Message = Copy(m.Message)
		return &v
	case *Unknown:
		v := *m
		return &v
	}
	return m
}

func copyTarget(t Target) Target {
	t.Transform = slices.Clone(t.Transform)
	return t
}

func copyDescriptor(d CapDescriptor) CapDescriptor {
	d.Transform = slices.Clone(d.Transform)
	return d
}

func copyPayload(p Payload) Payload {
	if p.Caps != nil {
		caps := make([]CapDescriptor, len(p.Caps))
		for i, d := range p.Caps {
			caps[i] = copyDescriptor(d)
		}
		p.Caps = caps
	}
	if p.CapTable != nil {
		table := make([]Cap, len(p.CapTable))
		for i, c := range p.CapTable {
			c.Transform = slices.Clone(c.Transform)
			table[i] = c
		}
		p.CapTable = table
	}
	return p
}

func copyException(e *Exception) *Exception {
	if e == nil {
		return nil
	}
	v := *e
	if e.Epitaph != nil {
		ep := *e.Epitaph
		v.Epitaph = &ep
	}
	return &v
}
