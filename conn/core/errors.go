package core

import (
	"errors"
	"fmt"
)

// Sentinels of the protocol. Check them with errors.Is.
var (
	// ErrMalformed: a message breaks the protocol's rules on its own.
	ErrMalformed = errors.New("malformed message")
	// ErrUnknownID: the peer named a question, answer, export, import or
	// embargo id that is not in our tables.
	ErrUnknownID = errors.New("unknown id")
	// ErrDuplicateID: the peer reused an id that is still in use.
	ErrDuplicateID = errors.New("duplicate id")
	// ErrTooManyCalls: the peer has more calls running than
	// Config.MaxAnswers, or more bytes of them than Limits.MaxCallBytes.
	ErrTooManyCalls = errors.New("too many calls in flight")
	// ErrTooManyExports: the connection would export more than
	// Config.MaxExports capabilities.
	ErrTooManyExports = errors.New("too many exported capabilities")
	// ErrBudgetExceeded: the peer made the connection hold more than one
	// of its Limits allows; a *BudgetError says which.
	ErrBudgetExceeded = errors.New("connection budget exceeded")
	// ErrResolveLoop: the peer resolved a promise to itself, directly or
	// through other promises.
	ErrResolveLoop = errors.New("promise resolution loop")
	// ErrPeerUnresponsive: the peer sent nothing within KeepAlive.Timeout
	// of a probe (a TransportError wraps it).
	ErrPeerUnresponsive = errors.New("peer unresponsive")
	// ErrNotProcessed marks a call that failed with disconnected without
	// being processed: refused by a draining connection (ours or the
	// peer's), or left unanswered by a peer that drained before its
	// epitaph. It is safe to retry.
	ErrNotProcessed = errors.New("call not processed, safe to retry")
	// ErrOutcomeUnknown marks a call that failed with disconnected after
	// it was sent: the peer may or may not have processed it.
	ErrOutcomeUnknown = errors.New("call may have been processed")
	// ErrClosed: the connection is closing or closed.
	ErrClosed = errors.New("connection closed")
)

// Error is an exception as local code sees it: its type and what
// happened. It wraps Cause (one of the sentinels above, or the peer's
// reason).
type Error struct {
	Type   ExceptionType
	Prefix string // who says so: "remote" for the peer's exceptions, "capnp" for ours
	Cause  error
}

func (e *Error) Error() string {
	if e.Prefix == "" {
		return e.Cause.Error()
	}
	return e.Prefix + ": " + e.Cause.Error()
}
func (e *Error) Unwrap() error { return e.Cause }

// TypeOf returns err's exception type: Failed unless err is (or wraps)
// an *Error.
func TypeOf(err error) ExceptionType {
	var e *Error
	if errors.As(err, &e) {
		return e.Type
	}
	return ExcFailed
}

func newError(t ExceptionType, format string, args ...any) *Error {
	return &Error{Type: t, Prefix: "capnp", Cause: fmt.Errorf(format, args...)}
}

// notProcessed returns a disconnected error that wraps ErrNotProcessed.
func notProcessed(format string, args ...any) error {
	return &Error{Type: ExcDisconnected, Prefix: "disconnected",
		Cause: fmt.Errorf("%w: "+format, append([]any{ErrNotProcessed}, args...)...)}
}

// outcomeUnknown returns a disconnected error that wraps ErrOutcomeUnknown.
func outcomeUnknown(format string, args ...any) error {
	return &Error{Type: ExcDisconnected, Prefix: "disconnected",
		Cause: fmt.Errorf("%w: "+format, append([]any{ErrOutcomeUnknown}, args...)...)}
}

// protocolErrorf is a violation by the peer: it ends the connection.
func protocolErrorf(sentinel error, format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{sentinel}, args...)...)
}

// BudgetError says which budget the peer went past. It wraps
// ErrBudgetExceeded.
type BudgetError struct {
	Budget string // the Limits field, e.g. "MaxHeldAnswers"
	Limit  int64
	Detail string // what the peer did, with its figure
}

func (e *BudgetError) Error() string {
	return fmt.Sprintf("%v: %s (%s %d)", ErrBudgetExceeded, e.Detail, e.Budget, e.Limit)
}
func (e *BudgetError) Unwrap() error { return ErrBudgetExceeded }

func budgetErrorf(budget string, limit int64, format string, args ...any) error {
	return &BudgetError{Budget: budget, Limit: limit, Detail: fmt.Sprintf(format, args...)}
}
