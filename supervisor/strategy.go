package supervisor

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// RestartType says when a supervised child is restarted, OTP style.
type RestartType int

const (
	// Permanent children are always restarted.
	Permanent RestartType = iota
	// Transient children are restarted only after an unexpected end
	// (Reason.Expected is false).
	Transient
	// Temporary children are never restarted.
	Temporary
)

func (t RestartType) String() string {
	switch t {
	case Permanent:
		return "permanent"
	case Transient:
		return "transient"
	case Temporary:
		return "temporary"
	}
	return fmt.Sprintf("RestartType(%d)", int(t))
}

// ShouldRestart reports whether a child of this type that ended with r is
// restarted. A nil reason (the child could not even start, e.g. a failed
// dial) counts as unexpected.
func (t RestartType) ShouldRestart(r Reason) bool {
	switch t {
	case Permanent:
		return true
	case Transient:
		return r == nil || !r.Expected()
	}
	return false
}

// Intensity bounds restarts: at most MaxRestarts within Period, else the
// supervisor gives up and escalates.
type Intensity struct {
	MaxRestarts int
	Period      time.Duration
}

// DefaultIntensity allows 10 restarts in a minute. With DefaultBackoff,
// a peer that stays down is retried for ever (the delays grow past the
// period); one that keeps failing right after each restart escalates.
var DefaultIntensity = Intensity{MaxRestarts: 10, Period: time.Minute}

// Backoff is exponential backoff with jitter for redials.
type Backoff struct {
	Initial    time.Duration // first delay
	Multiplier float64       // growth per attempt
	Max        time.Duration // cap on the delay before jitter
	Jitter     float64       // ± this fraction of the delay, at random
}

// DefaultBackoff follows gRPC's connection backoff: 1s, ×1.6, at most
// 120s, ±20%.
var DefaultBackoff = Backoff{Initial: time.Second, Multiplier: 1.6, Max: 120 * time.Second, Jitter: 0.2}

// Delay returns the wait before attempt n (0 for the first retry), with
// jitter drawn from rnd (a number in [0, 1); nil: math/rand).
func (b Backoff) Delay(n int, rnd func() float64) time.Duration {
	if rnd == nil {
		rnd = rand.Float64
	}
	d := float64(b.Initial)
	for i := 0; i < n && d < float64(b.Max); i++ {
		d *= b.Multiplier
	}
	d = min(d, float64(b.Max))
	d *= 1 + b.Jitter*(2*rnd()-1)
	return time.Duration(d)
}

// Policy is how a supervisor treats one child.
type Policy struct {
	Restart   RestartType
	Intensity Intensity
	Backoff   Backoff
}

// DefaultPolicy: permanent, DefaultIntensity, DefaultBackoff.
var DefaultPolicy = Policy{Restart: Permanent, Intensity: DefaultIntensity, Backoff: DefaultBackoff}

// Decision is what a Supervisor decided about a child that ended.
type Decision struct {
	Restart  bool          // start the child again…
	After    time.Duration // …after this delay
	Escalate bool          // give up: too many restarts (Err says why)
	Err      error         // set when Escalate: an *EscalationError
}

// ErrEscalated is wrapped by every EscalationError.
var ErrEscalated = errors.New("supervisor: restart intensity exceeded")

// EscalationError says a supervisor gave up on a child: it restarted it
// too often. Last is the reason the child last ended (nil: it failed to
// start).
type EscalationError struct {
	Restarts  int
	Period    time.Duration
	Last      Reason
	LastStart error // why the last start failed, if it did
}

func (e *EscalationError) Error() string {
	last := "start failed"
	if e.Last != nil {
		last = e.Last.Error()
	}
	if e.LastStart != nil {
		last = e.LastStart.Error()
	}
	return fmt.Sprintf("%v: %d restarts within %v; last: %s", ErrEscalated, e.Restarts, e.Period, last)
}

func (e *EscalationError) Unwrap() error { return ErrEscalated }

// Supervisor applies a Policy to one child over time. It is a plain state
// machine: time is an input, and it starts no timer itself.
type Supervisor struct {
	Policy   Policy
	Rand     func() float64 // jitter source; nil: math/rand
	restarts []time.Time    // within the intensity period
	attempt  int            // consecutive failures since the last success
}

// Ended records that the child ended at now with reason r (nil: it failed
// to start, with startErr) and decides what to do.
func (s *Supervisor) Ended(now time.Time, r Reason, startErr error) Decision {
	if !s.Policy.Restart.ShouldRestart(r) {
		return Decision{}
	}
	cut := now.Add(-s.Policy.Intensity.Period)
	kept := s.restarts[:0]
	for _, t := range s.restarts {
		if t.After(cut) {
			kept = append(kept, t)
		}
	}
	s.restarts = append(kept, now)
	if len(s.restarts) > s.Policy.Intensity.MaxRestarts {
		return Decision{Escalate: true, Err: &EscalationError{
			Restarts: len(s.restarts) - 1, Period: s.Policy.Intensity.Period, Last: r, LastStart: startErr}}
	}
	d := Decision{Restart: true, After: s.Policy.Backoff.Delay(s.attempt, s.Rand)}
	s.attempt++
	return d
}

// Started records that the child started successfully: the next failure
// waits the initial delay again.
func (s *Supervisor) Started() { s.attempt = 0 }
