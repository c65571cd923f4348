package tracing

import (
	"context"
	"errors"
	"fmt"
	"net"
	"reflect"
	"strconv"
	"strings"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// ScopeName is the instrumentation scope of every span vatactor makes.
const ScopeName = "github.com/vatactor/vatactor"

// Tracer returns vatactor's tracer from tp, or from the global provider
// when tp is nil.
func Tracer(tp trace.TracerProvider) trace.Tracer {
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	return tp.Tracer(ScopeName)
}

// Noop reports whether tp (nil: the global provider as it is now) is
// known to record nothing and to add no context of its own:
// OpenTelemetry's no-op providers, and the global provider before
// otel.SetTracerProvider. A connection checks this once, when it starts,
// and then skips the per-call span work; so set the global provider
// before dialing or serving.
func Noop(tp trace.TracerProvider) bool {
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	switch tp.(type) {
	case noop.TracerProvider, *noop.TracerProvider:
		return true
	}
	switch reflect.TypeOf(tp).String() {
	case "*global.tracerProvider", // otel's global before SetTracerProvider
		"trace.noopTracerProvider": // trace.NewNoopTracerProvider
		return true
	}
	return false
}

// Names of the spans that are not calls.
const (
	ConnSpan     = "capnp.conn"
	ShutdownSpan = "shutdown"
	ExportSpan   = "capnp.export"
	// BootstrapSpan names the client and server spans of a Bootstrap.
	BootstrapSpan = "Bootstrap"
)

// Attributes of the span model beyond OpenTelemetry's semantic conventions.
const (
	AttrPeer          = attribute.Key("capnp.conn.peer")        // the other side's address
	AttrRole          = attribute.Key("capnp.conn.role")        // client (dialed) or server (accepted)
	AttrReason        = attribute.Key("capnp.conn.reason")      // why it ended, as text
	AttrReasonKind    = attribute.Key("capnp.conn.reason.kind") // LocalShutdown, PeerEOF, PeerEpitaph, PeerAbort, TransportError, ProtocolError
	AttrExpected      = attribute.Key("capnp.conn.expected")    // the reason is an expected end
	AttrPeerReason    = attribute.Key("capnp.conn.peer_reason") // what the peer did after our reason
	AttrEpitaphCode   = attribute.Key("capnp.epitaph.code")     // e.g. OK, UNAVAILABLE
	AttrEpitaphText   = attribute.Key("capnp.epitaph.message")
	AttrQuestions     = attribute.Key("capnp.conn.questions") // table counts
	AttrAnswers       = attribute.Key("capnp.conn.answers")
	AttrExports       = attribute.Key("capnp.conn.exports")
	AttrImports       = attribute.Key("capnp.conn.imports")
	AttrEmbargoes     = attribute.Key("capnp.conn.embargoes")
	AttrQuestionID    = attribute.Key("capnp.question.id")
	AttrAnswerID      = attribute.Key("capnp.answer.id")
	AttrExportID      = attribute.Key("capnp.export.id")
	AttrInterfaceID   = attribute.Key("capnp.interface.id") // hexadecimal, as in schemas
	AttrMethodID      = attribute.Key("capnp.method.id")
	AttrPipelined     = attribute.Key("capnp.pipelined")     // the call targets a promised answer
	AttrNotProcessed  = attribute.Key("capnp.not_processed") // refused or lost before any processing: safe to retry
	AttrPhaseCutShort = attribute.Key("capnp.phase.cut_short")
	AttrPhaseSkipped  = attribute.Key("capnp.phase.skipped")
	AttrPhaseNote     = attribute.Key("capnp.phase.note")
	AttrActor         = attribute.Key("capnp.actor") // a protoactor PID
	// A supervised dial's steps, as events "redial" of the caller's span.
	AttrRedialStep    = attribute.Key("capnp.redial.step") // dialing, connected, down, waiting, escalated, stopped
	AttrRedialAttempt = attribute.Key("capnp.redial.attempt")
	AttrRedialBackoff = attribute.Key("capnp.redial.backoff_ms") // waiting: before the next dial
	AttrError         = attribute.Key("capnp.error")             // a failed dial, an escalation
)

// PeerAttributes are the network attributes of a connection's call spans,
// from its role ("client": it dialed; "server": it accepted) and its
// peer's address (host:port): network.peer.address and .port, and on a
// client's spans server.address and .port, as the RPC conventions ask.
// An address that is not host:port gives only network.peer.address.
func PeerAttributes(role, peer string) []attribute.KeyValue {
	host, port, err := net.SplitHostPort(peer)
	if err != nil {
		if peer == "" {
			return nil
		}
		return []attribute.KeyValue{semconv.NetworkPeerAddress(peer)}
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		return []attribute.KeyValue{semconv.NetworkPeerAddress(host)}
	}
	attrs := []attribute.KeyValue{semconv.NetworkPeerAddress(host), semconv.NetworkPeerPort(n)}
	if role == "client" {
		attrs = append(attrs, semconv.ServerAddress(host), semconv.ServerPort(n))
	}
	return attrs
}

// SystemName is the rpc.system.name of every call span.
var SystemName = semconv.RPCSystemNameKey.String("capnp")

// SpanName is the name of a call's span: "Interface.method", the
// interface's name without its file ("Calculator.evaluate"). A method
// whose names are unknown is UnknownMethodSpan: its ids are the peer's
// choice, and a name per id would make a tracing backend list an
// operation per id a peer sends (its ids stay on the span, in
// rpc.method_original and capnp.interface.id/capnp.method.id).
func SpanName(m capnp.Method) string { return Names(m).Span }

// UnknownMethodSpan names the span of a call whose method's names are
// unknown: the RPC system's name, as the conventions name an operation
// they cannot name otherwise.
const UnknownMethodSpan = "capnp"

// MethodName is m as logs and inspection pages show it: "Interface.method"
// as SpanName, or, for a method whose names are unknown, its ids
// ("@0x97983392df35cc36/0").
func MethodName(m capnp.Method) string {
	if m.InterfaceName != "" && m.MethodName != "" {
		return spanName(m)
	}
	return idsName(m)
}

// MethodAttributes are the attributes naming m on a call span: rpc.method
// is the span's name ("Calculator.evaluate"). An unknown method is
// rpc.method=_OTHER with its ids in rpc.method_original, as the semantic
// conventions ask. The slice is shared: do not modify it.
func MethodAttributes(m capnp.Method) []attribute.KeyValue { return Names(m).Attrs }

// CallNames are how a method's calls are named on their spans: made once
// for a method whose names are known (RegisterMethods, Names), and kept;
// made anew each time for one whose names are not (its ids may come from
// any peer). A connection finds them once per call, as the call's span
// starts, and ends the span with them. Shared: do not modify.
type CallNames struct {
	Method capnp.Method         // with its names when they are known
	Span   string               // the span's name, as SpanName
	Attrs  []attribute.KeyValue // the attributes naming it, as MethodAttributes
}

// Names are the names of m's calls. A method that has its names is
// registered (RegisterMethods) as it is named: the server spans of
// calls to it from other vats are named alike. One whose names are
// empty is not looked up: NamesByID finds names for ids.
func Names(m capnp.Method) *CallNames {
	if m.InterfaceName == "" || m.MethodName == "" {
		return newNames(m)
	}
	k := methodKey{m.InterfaceID, m.MethodID}
	if n, ok := methods.Load(k); ok {
		if n := n.(*CallNames); n.Method.InterfaceName == m.InterfaceName && n.Method.MethodName == m.MethodName {
			return n
		}
		return newNames(m) // the same ids under other names: as this caller names them, not kept
	}
	n, _ := methods.LoadOrStore(k, newNames(m))
	return n.(*CallNames)
}

// BootstrapNames name the spans of a Bootstrap: BootstrapSpan, with
// rpc.method "Bootstrap.bootstrap" (not registered: a Bootstrap has no
// ids of its own).
var BootstrapNames = func() *CallNames {
	n := newNames(capnp.Method{InterfaceName: "Bootstrap", MethodName: "bootstrap"})
	n.Span = BootstrapSpan
	return n
}()

// newNames makes m's names.
func newNames(m capnp.Method) *CallNames {
	known := m.InterfaceName != "" && m.MethodName != ""
	n := &CallNames{Method: m, Span: UnknownMethodSpan}
	name := semconv.RPCMethod("_OTHER")
	if known {
		n.Span = spanName(m)
		name = semconv.RPCMethod(n.Span) // the span's name, as the conventions ask
	}
	n.Attrs = []attribute.KeyValue{
		SystemName,
		name,
		AttrInterfaceID.String(fmt.Sprintf("%#x", m.InterfaceID)),
		AttrMethodID.Int(int(m.MethodID)),
	}
	if !known {
		n.Attrs = append(n.Attrs, semconv.RPCMethodOriginal(idsName(m)))
	}
	return n
}

// idsName names a method by its ids: "@0x97983392df35cc36/0".
func idsName(m capnp.Method) string { return fmt.Sprintf("@%#x/%d", m.InterfaceID, m.MethodID) }

// spanName is a known method's "Interface.method".
func spanName(m capnp.Method) string {
	iface := m.InterfaceName
	if i := strings.LastIndexByte(iface, ':'); i >= 0 {
		iface = iface[i+1:]
	}
	return iface + "." + m.MethodName
}

// StatusCode is a call's rpc.response.status_code: OK, the exception type
// in capitals (FAILED, OVERLOADED, DISCONNECTED, UNIMPLEMENTED), or
// CANCELED / DEADLINE_EXCEEDED when the caller's context ended.
func StatusCode(err error) string {
	switch {
	case err == nil:
		return "OK"
	case errors.Is(err, context.Canceled):
		return "CANCELED"
	case errors.Is(err, context.DeadlineExceeded):
		return "DEADLINE_EXCEEDED"
	}
	var e *exc.Exception
	if errors.As(err, &e) {
		return strings.ToUpper(e.Type.String())
	}
	return "FAILED" // what capnp makes of any other error
}

// EndCall ends a call's span: attrs, then rpc.response.status_code (and
// error.type and an error status when err is not nil), in one
// SetAttributes. Callers check span.IsRecording first: on a span that
// records nothing this is wasted work.
func EndCall(span trace.Span, err error, attrs ...attribute.KeyValue) {
	code := StatusCode(err)
	attrs = append(attrs, semconv.RPCResponseStatusCode(code))
	if err != nil {
		attrs = append(attrs, semconv.ErrorTypeKey.String(code))
	}
	span.SetAttributes(attrs...)
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}
