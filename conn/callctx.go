package conn

import (
	"context"
	"slices"
	"sync"
	"time"
)

// callCtx is the context an incoming call's callee gets: it carries the
// server span (in parent) and is cancelled when the caller finishes the
// call early or the connection gives up on it. It lives inside the
// answer, so a call costs no context allocation; the Done channel is made
// only when someone asks for it. It implements the AfterFunc method that
// package context uses, so contexts derived from it need no goroutine.
type callCtx struct {
	parent context.Context // never cancelled: Background, or one carrying the span
	peer   *PeerInfo       // the connection's peer (PeerFromContext), or nil

	// deadline: the caller's, carried by the Call's sidecar (zero:
	// none); set before the callee has the context. timer ends the
	// context then.
	deadline time.Time
	timer    *time.Timer

	mu    sync.Mutex
	done  chan struct{} // made by Done or cancel, closed by cancel
	err   error
	after []*afterCall // waiting for cancel
}

type afterCall struct{ f func() }

func (c *callCtx) Deadline() (time.Time, bool) { return c.deadline, !c.deadline.IsZero() }

// expireAt gives c the caller's deadline d: c ends with
// context.DeadlineExceeded then.
func (c *callCtx) expireAt(d time.Time) {
	c.deadline = d
	c.timer = time.AfterFunc(time.Until(d), func() { c.end(context.DeadlineExceeded) })
}

// expired reports whether c's deadline has passed.
func (c *callCtx) expired() bool { return !c.deadline.IsZero() && !time.Now().Before(c.deadline) }

func (c *callCtx) Value(key any) any {
	if _, ok := key.(peerKey); ok && c.peer != nil {
		return c.peer
	}
	return c.parent.Value(key)
}

func (c *callCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		c.done = make(chan struct{})
		if c.err != nil {
			close(c.done)
		}
	}
	return c.done
}

func (c *callCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *callCtx) String() string { return "capnp call context" }

// AfterFunc arranges for f to run in its own goroutine once c is
// cancelled (at once if it is); stop prevents that, reporting whether
// it did.
func (c *callCtx) AfterFunc(f func()) (stop func() bool) {
	a := &afterCall{f: f}
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		go f()
		return func() bool { return false }
	}
	c.after = append(c.after, a)
	c.mu.Unlock()
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		if i := slices.Index(c.after, a); i >= 0 {
			c.after = slices.Delete(c.after, i, i+1)
			return true
		}
		return false
	}
}

// cancel cancels c, once.
func (c *callCtx) cancel() {
	if c.timer != nil {
		c.timer.Stop()
	}
	c.end(context.Canceled)
}

// end ends c with err, once.
func (c *callCtx) end(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	if c.done != nil {
		close(c.done)
	}
	after := c.after
	c.after = nil
	c.mu.Unlock()
	for _, a := range after {
		go a.f()
	}
}
