package conn

import (
	"context"
	"sync"
	"sync/atomic"
)

// byteBudget counts the bytes one side of a connection holds against a
// limit, for backpressure: a producer that finds more than the limit held
// waits (awaitRoom) until the count is down to half of it, or until the
// budget is lifted for good because the connection ends. The connection
// has two: what it queued for the peer and has not yet written
// (Limits.MaxSendQueue, the writer releases), and what it read from the
// peer and has not yet handled (Limits.MaxRecvQueue, the actor releases).
//
// add and release cost one atomic add each; only a waiter takes the lock.
type byteBudget struct {
	bytes   atomic.Int64
	limit   int64
	waiting atomic.Bool // room is open for a waiter: release must close it

	mu     sync.Mutex
	room   chan struct{} // closed when the count is down to limit/2 or the budget is lifted
	lifted bool          // the connection ends: nobody waits any more
}

// add counts n bytes more.
func (b *byteBudget) add(n int64) { b.bytes.Add(n) }

// release counts n bytes less; on the way down to half the limit it lets
// a waiter go on.
func (b *byteBudget) release(n int64) {
	if b.bytes.Add(-n) <= b.limit/2 && b.waiting.Load() {
		b.mu.Lock()
		if b.bytes.Load() <= b.limit/2 {
			b.openLocked()
		}
		b.mu.Unlock()
	}
}

// lift ends every wait, now and later: the connection ends, and whoever
// waits must see that rather than wait for bytes that may never go.
func (b *byteBudget) lift() {
	b.mu.Lock()
	b.lifted = true
	b.openLocked()
	b.mu.Unlock()
}

func (b *byteBudget) openLocked() {
	if b.room != nil {
		close(b.room)
		b.room = nil
		b.waiting.Store(false)
	}
}

// awaitRoom returns at once while the count is within the limit; past it,
// it waits until the count is down to half, the budget is lifted, or ctx
// ends (its error).
func (b *byteBudget) awaitRoom(ctx context.Context) error {
	if b.bytes.Load() <= b.limit {
		return nil
	}
	b.mu.Lock()
	for !b.lifted {
		if b.room == nil {
			b.room = make(chan struct{})
			b.waiting.Store(true)
		}
		// Checked after waiting is set: a release that came before it
		// is seen here, one that comes after sees waiting.
		if b.bytes.Load() <= b.limit/2 {
			b.openLocked() // for whoever else waits, and so that release need not
			break
		}
		room := b.room
		b.mu.Unlock()
		select {
		case <-room:
		case <-ctx.Done():
			return ctx.Err()
		}
		b.mu.Lock()
	}
	b.mu.Unlock()
	return nil
}

// held is the count now.
func (b *byteBudget) held() int64 { return b.bytes.Load() }

// recvBytes is what a frame read from the peer adds to the receive
// budget (Conn.in): its message's bytes, the same whether the reader
// decoded it (a Finish) or not.
func recvBytes(f Frame) int64 {
	if f.finish.ok {
		return finishFrameBytes
	}
	return frameBytes(f)
}
