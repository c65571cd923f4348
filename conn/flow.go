package conn

import (
	"context"
	"slices"
	"sync"
	"time"
)

// window is the flow control of one imported capability (Options.
// FlowWindow): the bytes of calls sent on it whose answers have not
// arrived. A call that would go past the window waits, in the caller's
// Send, until answers free room; callers get room in the order they
// asked. A call larger than the whole window goes alone. This is what
// makes a loop of `-> stream` calls, which generated code sends without
// waiting for each answer, keep at most a window's worth in flight.
type window struct {
	mu      sync.Mutex
	size    int64
	used    int64
	waiting []*flowWaiter // first come, first served
	// waited, if set, is told how long a call waited for room.
	waited func(time.Duration)
}

type flowWaiter struct {
	n     int64
	ready chan struct{} // closed when the room is granted
}

func newWindow(size int) *window {
	if size <= 0 {
		return nil
	}
	return &window{size: int64(size)}
}

// fits reports whether n more bytes may go now. Called with mu held.
func (w *window) fits(n int64) bool { return w.used == 0 || w.used+n <= w.size }

// acquire takes n bytes of room, waiting for it until ctx ends.
func (w *window) acquire(ctx context.Context, n int64) error {
	w.mu.Lock()
	if len(w.waiting) == 0 && w.fits(n) {
		w.used += n
		w.mu.Unlock()
		return nil
	}
	fw := &flowWaiter{n: n, ready: make(chan struct{})}
	w.waiting = append(w.waiting, fw)
	w.mu.Unlock()
	if w.waited != nil {
		start := time.Now()
		defer func() { w.waited(time.Since(start)) }()
	}
	select {
	case <-fw.ready:
		return nil
	case <-ctx.Done():
	}
	w.mu.Lock()
	if i := slices.Index(w.waiting, fw); i >= 0 {
		w.waiting = slices.Delete(w.waiting, i, i+1)
		w.grantLocked() // the next one may fit now
		w.mu.Unlock()
		return ctx.Err()
	}
	w.mu.Unlock()
	w.release(n) // granted while we gave up: give it back
	return ctx.Err()
}

// release gives back n bytes: an answer arrived (or the call failed).
func (w *window) release(n int64) {
	w.mu.Lock()
	w.used -= n
	w.grantLocked()
	w.mu.Unlock()
}

func (w *window) grantLocked() {
	for len(w.waiting) > 0 && w.fits(w.waiting[0].n) {
		fw := w.waiting[0]
		w.waiting = w.waiting[1:]
		w.used += fw.n
		close(fw.ready)
	}
}
