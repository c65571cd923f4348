package supervisor

import (
	"fmt"
)

// A Reason says why a connection ended. Every reason is an error so that it
// can be returned, wrapped and inspected with errors.As; Expected tells a
// normal end (OTP's normal/shutdown) from a failure.
type Reason interface {
	error
	// Expected reports whether the end is a normal one that should not be
	// logged as an error nor trigger a transient restart.
	Expected() bool
}

// LocalShutdown: we closed the connection ourselves.
type LocalShutdown struct {
	Epitaph Epitaph
}

func (r LocalShutdown) Error() string {
	return "closed locally (epitaph " + r.Epitaph.String() + ")"
}

// Expected reports true: a local close is always deliberate.
func (r LocalShutdown) Expected() bool { return true }

// PeerEpitaph: the peer's last message was an epitaph.
type PeerEpitaph struct {
	Epitaph Epitaph
}

func (r PeerEpitaph) Error() string { return "peer closed with epitaph " + r.Epitaph.String() }

// Expected reports whether the peer reached its designated end (code OK).
func (r PeerEpitaph) Expected() bool { return r.Epitaph.Code == OK }

// PeerEOF: the peer closed its write side without an epitaph. Idle tells
// whether its end lost us nothing: no call in flight either way (none of
// our questions waiting for its Return, none of its calls running) and
// none of its capabilities held by us. Its references to our capabilities
// end with it, which is how a peer that hangs up lets go of them, so they
// do not make the end unexpected; a server that vanishes under a client
// still holding its capabilities does.
type PeerEOF struct {
	Idle bool
}

func (r PeerEOF) Error() string {
	if r.Idle {
		return "peer closed the connection while idle"
	}
	return "peer closed the connection with work in flight (PEER_CLOSED)"
}

// Expected reports true only for an idle EOF.
func (r PeerEOF) Expected() bool { return r.Idle }

// PeerAbort: the peer sent an Abort message that carried no epitaph.
type PeerAbort struct {
	Type   string // the exception type: failed, overloaded, disconnected, unimplemented
	Reason string
	Idle   bool // its end lost us nothing (as for PeerEOF)
}

// GoCapnpCloseReason is the reason of the Abort that go-capnp's
// rpc.Conn.Close sends: its way to hang up.
const GoCapnpCloseReason = "connection closed"

func (r PeerAbort) Error() string { return "peer aborted (" + r.Type + "): " + r.Reason }

// Expected reports true only for go-capnp's hang-up with no call in
// flight (an Abort of type failed whose reason is GoCapnpCloseReason):
// any other Abort says something went wrong.
func (r PeerAbort) Expected() bool {
	return r.Idle && r.Type == "failed" && r.Reason == GoCapnpCloseReason
}

// TransportError: the socket failed (reset, timeout, write failure).
type TransportError struct {
	Err error
}

func (r TransportError) Error() string { return "transport: " + r.Err.Error() }
func (r TransportError) Unwrap() error { return r.Err }

// Expected reports false.
func (r TransportError) Expected() bool { return false }

// ProtocolError: the peer broke the protocol; we sent it an Abort that
// names the problem.
type ProtocolError struct {
	Err error
}

func (r ProtocolError) Error() string { return "protocol: " + r.Err.Error() }
func (r ProtocolError) Unwrap() error { return r.Err }

// Expected reports false.
func (r ProtocolError) Expected() bool { return false }

// Epitaph is the last word of a connection: a FIDL-style status code and a
// short message.
type Epitaph struct {
	Code    Code
	Message string
}

func (e Epitaph) String() string {
	if e.Message == "" {
		return e.Code.String()
	}
	return fmt.Sprintf("%v: %s", e.Code, e.Message)
}
