package conn

import (
	"errors"
	"fmt"

	"capnproto.org/go/capnp/v3/exc"

	"github.com/vatactor/vatactor/conn/core"
)

// Sentinels of package conn. Check them with errors.Is. Those the
// protocol shares with package core are core's.
var (
	// ErrFrameTooLarge: a frame's declared size is above Limits.MaxFrameSize.
	ErrFrameTooLarge = errors.New("frame too large")
	// ErrTooManySegments: a frame declares more than Limits.MaxSegments segments.
	ErrTooManySegments = errors.New("too many segments in frame")
	// ErrMalformedFrame: a frame or the message in it cannot be decoded.
	ErrMalformedFrame = core.ErrMalformed
	// ErrUnknownID: the peer named a question, answer, export or import id
	// that is not in our tables.
	ErrUnknownID = core.ErrUnknownID
	// ErrDuplicateID: the peer reused an id that is still in use.
	ErrDuplicateID = core.ErrDuplicateID
	// ErrTooManyQuestions: the peer has more calls in flight than
	// Options.MaxAnswers allows.
	ErrTooManyQuestions = core.ErrTooManyCalls
	// ErrTooManyExports: the connection would export more than
	// Options.MaxExports capabilities.
	ErrTooManyExports = core.ErrTooManyExports
	// ErrBudgetExceeded: the peer made the connection hold more than one
	// of its Limits allows (answers, result bytes, capabilities, an echo);
	// a *BudgetError says which.
	ErrBudgetExceeded = core.ErrBudgetExceeded
	// ErrPeerNotReading: the peer took none of the bytes queued for it
	// for Options.WriteTimeout.
	ErrPeerNotReading = errors.New("the peer stopped reading")
	// ErrFrameTimeout: a frame did not arrive whole within
	// Limits.FrameTimeout of its first bytes.
	ErrFrameTimeout = errors.New("frame not complete in time")
	// ErrResolveLoop: the peer resolved a promise to itself, directly or
	// through other promises.
	ErrResolveLoop = core.ErrResolveLoop
	// ErrClosed: the connection has ended; the reason is in Conn.Err.
	ErrClosed = core.ErrClosed
	// ErrNotProcessed marks a call that failed with disconnected without
	// being processed: refused by a draining connection (ours or the
	// peer's), or left unanswered by a peer that drained before its
	// epitaph. It is safe to retry.
	ErrNotProcessed = core.ErrNotProcessed
	// ErrOutcomeUnknown marks a call that failed with disconnected after
	// it was sent: the peer may or may not have processed it.
	ErrOutcomeUnknown = core.ErrOutcomeUnknown
	// ErrPeerUnresponsive: the peer sent nothing within KeepAlive.Timeout
	// of a probe; the connection's reason is a TransportError wrapping it.
	ErrPeerUnresponsive = core.ErrPeerUnresponsive
)

// KeepAlive is Options.KeepAlive (the core's: package core).
type KeepAlive = core.KeepAlive

// notProcessed returns a disconnected exception that wraps ErrNotProcessed.
func notProcessed(format string, args ...any) error {
	return &exc.Exception{Type: exc.Disconnected, Prefix: "disconnected",
		Cause: fmt.Errorf("%w: "+format, append([]any{ErrNotProcessed}, args...)...)}
}

// outcomeUnknown returns a disconnected exception that wraps
// ErrOutcomeUnknown.
func outcomeUnknown(format string, args ...any) error {
	return &exc.Exception{Type: exc.Disconnected, Prefix: "disconnected",
		Cause: fmt.Errorf("%w: "+format, append([]any{ErrOutcomeUnknown}, args...)...)}
}

// FrameError reports a bad frame: what was wrong and the figures involved.
type FrameError struct {
	Err    error  // one of the sentinels above
	Detail string // e.g. "declared 70000000 bytes, limit 67108864"
}

func (e *FrameError) Error() string { return e.Err.Error() + ": " + e.Detail }
func (e *FrameError) Unwrap() error { return e.Err }

func frameErrorf(sentinel error, format string, args ...any) error {
	return &FrameError{Err: sentinel, Detail: fmt.Sprintf(format, args...)}
}

// BudgetError says which budget of Limits the peer went past. It wraps
// ErrBudgetExceeded.
type BudgetError = core.BudgetError

func budgetErrorf(budget string, limit int64, format string, args ...any) error {
	return &BudgetError{Budget: budget, Limit: limit, Detail: fmt.Sprintf(format, args...)}
}
