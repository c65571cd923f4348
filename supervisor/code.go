package supervisor

import "strconv"

// Code is an epitaph status: 0 is OK, negative values are system codes with
// zircon's numbers, positive values belong to the application.
type Code int32

// System codes (zircon's values).
const (
	OK           Code = 0
	Internal     Code = -1
	NotSupported Code = -2
	NoResources  Code = -3
	InvalidArgs  Code = -10
	BadState     Code = -20
	TimedOut     Code = -21
	Canceled     Code = -23
	PeerClosed   Code = -24
	AccessDenied Code = -30
	Unavailable  Code = -28
)

var codeNames = map[Code]string{
	OK:           "OK",
	Internal:     "INTERNAL",
	NotSupported: "NOT_SUPPORTED",
	NoResources:  "NO_RESOURCES",
	InvalidArgs:  "INVALID_ARGS",
	BadState:     "BAD_STATE",
	TimedOut:     "TIMED_OUT",
	Canceled:     "CANCELED",
	PeerClosed:   "PEER_CLOSED",
	AccessDenied: "ACCESS_DENIED",
	Unavailable:  "UNAVAILABLE",
}

// String returns the system code's name, or APP(n) for application codes.
func (c Code) String() string {
	if n, ok := codeNames[c]; ok {
		return n
	}
	if c > 0 {
		return "APP(" + strconv.Itoa(int(c)) + ")"
	}
	return "SYSTEM(" + strconv.Itoa(int(c)) + ")"
}

// Class is c's name when it is one of the system codes above, APP for an
// application code and SYSTEM for any other system code: one of a few
// values, for metrics, where a code the peer chose must not make a new
// series (String keeps the number).
func (c Code) Class() string {
	if n, ok := codeNames[c]; ok {
		return n
	}
	if c > 0 {
		return "APP"
	}
	return "SYSTEM"
}
