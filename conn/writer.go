package conn

import (
	"context"
	"sync"
	"time"
	"unsafe"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exp/bufferpool"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
)

// This file is the writing side of a connection: the send queue the actor
// fills, the writer goroutine that empties it, and the pooled outgoing
// messages.

// sendQueue is the writer's input: the actor appends, a writer takes
// everything queued in one batch. The actor wakes the writer once it has
// handled every message waiting for it (pushQuiet, then kick), so what a
// run of messages produces under load goes out in one write; with no
// writer running, kick writes that batch on the actor's goroutine as far
// as the socket takes it without waiting (Conn.writeInline; a large
// segment from where it is, where the system has a vectored write that
// does not wait). A writer goroutine takes over what that cannot write
// (the socket is full) and exits once it has written everything, where the
// actor can write inline, or after writerIdleTimeout with nothing to
// write, where it cannot; an idle connection has no writer goroutine.
//
// Lazy frames (a Finish after its Return, a Release) do not start the
// writer: they go out with the next frame that does, or after their
// delay (lazyFlushDelay, earlyFinishDelay), when the timer writes them
// inline itself, so that a caller making one call after another sends
// each Finish in the same write as its next Call.
type sendQueue struct {
	mu    sync.Mutex
	items []Frame
	owner []*answer // owner[i]: the answer whose Return items[i] is (nil: the writer frees it)
	// due: items holds a frame that must go now (pushQuiet's), or the
	// lazy frames' delay is over. A writer woken with only lazy frames
	// queued leaves them for the next frame that is due.
	due       bool
	spare     []Frame
	spareOwn  []*answer
	closing   bool            // the writer flushes, then stops for good
	halfClose bool            // the writer calls CloseWrite after the last flush
	writing   bool            // a writer goroutine is running
	failed    bool            // a write failed: nothing more is written
	done      bool            // the last flush is done: no writer starts again
	start     func()          // starts a writer goroutine (counted in writers already)
	writers   *sync.WaitGroup // the writer goroutines: Add under mu, when one is to start
	// inline, if set, writes a batch on the actor's goroutine when no
	// writer runs (Conn.writeInline); rest is what it left for the
	// writer goroutine, to go before the items.
	inline   func(batch []Frame, owner []*answer)
	rest     []byte
	wake     chan struct{} // wakes a waiting writer; made with the first writer goroutine (startLocked)
	flush    *time.Timer   // starts the writer for lazy frames; made on first use
	armed    bool          // flush is pending
	armedFor time.Duration // its delay

	// Backpressure (Limits.MaxSendQueue): what is queued and not yet
	// written; the reader and local calls wait while it is over budget.
	budget byteBudget
}

// frameBytes is what f adds to the send queue's count.
func frameBytes(f Frame) int64 {
	n, _ := f.Msg.TotalSize()
	return int64(n)
}

// awaitRoom is the reader's backpressure: while more than the budget is
// queued for the peer, it reads none of the peer's frames (so admits none
// of its calls), until the writer has drained the queue to half or the
// connection ends.
func (q *sendQueue) awaitRoom() { _ = q.budget.awaitRoom(context.Background()) }

// lazyFlushDelay bounds how long a lazy frame waits for company;
// writerIdleTimeout is how long a writer with nothing to write waits
// before it exits.
const (
	lazyFlushDelay    = 100 * time.Microsecond
	writerIdleTimeout = 500 * time.Millisecond
)

// startLocked reports whether the caller must start a writer (and marks
// one running). Called with mu held.
func (q *sendQueue) startLocked() bool {
	if q.writing || q.done {
		return false
	}
	q.writing = true
	q.writers.Add(1) // under mu: before any closer can wait for writers
	if q.wake == nil {
		q.wake = make(chan struct{}, 1) // a connection that never needs a writer goroutine makes none
	}
	return true
}

// unlockAndKick releases mu, then starts a writer if start (from
// startLocked) says so, else wakes the one that runs.
func (q *sendQueue) unlockAndKick(start bool) {
	wake := q.wake // read under mu: startLocked makes it (nil: no writer goroutine has run, none waits)
	q.mu.Unlock()
	if start {
		q.start()
		return
	}
	select { // wake the writer if it waits for frames
	case wake <- struct{}{}:
	default:
	}
}

// pushQuiet queues f for the writer without waking it: the connection
// actor calls kick once it has nothing more to handle, so that what one
// run of its messages produces goes out in one write.
func (q *sendQueue) pushQuiet(f Frame, owner *answer) {
	q.budget.add(frameBytes(f))
	q.mu.Lock()
	q.items = append(q.items, f)
	q.owner = append(q.owner, owner)
	q.due = true
	q.mu.Unlock()
}

// kick starts or wakes the writer for what pushQuiet queued (the actor
// remembers whether it queued anything since its last kick).
func (q *sendQueue) kick() {
	q.mu.Lock()
	if q.inlineFreeLocked() {
		q.writing = true // this goroutine is the writer for one turn
		batch, owner := q.takeLocked()
		q.mu.Unlock()
		q.inline(batch, owner)
		return
	}
	q.unlockAndKick(q.startLocked())
}

// inlineFreeLocked reports whether the caller may write inline: the
// transport can, and no writer runs, nor will again. Called with mu held.
func (q *sendQueue) inlineFreeLocked() bool {
	return q.inline != nil && !q.writing && !q.done && !q.closing && !q.failed
}

// writeFailed reports whether a write has failed.
func (q *sendQueue) writeFailed() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.failed
}

// takeLocked takes everything queued, for the writer. Called with mu held.
func (q *sendQueue) takeLocked() ([]Frame, []*answer) {
	batch, owner := q.items, q.owner
	q.due = false
	q.items, q.owner = q.spare[:0], q.spareOwn[:0]
	q.spare, q.spareOwn = nil, nil
	return batch, owner
}

// keepQueueSlots is the most frames the send queue keeps storage for once
// its connection has no call in flight (trim).
const keepQueueSlots = 16

// trim drops the queue's storage when it is empty and grew past
// keepQueueSlots (a burst's batches), and sw's write buffers when no
// writer goroutine runs (the actor's own inline writes left them): the
// connection's actor calls it when the connection rests (no call in
// flight for restDelay), so an idle connection keeps no burst's worth of
// them.
func (q *sendQueue) trim(sw streamWriter) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.writing && sw != nil {
		sw.releaseBuffers()
	}
	if len(q.items) == 0 && cap(q.items) > keepQueueSlots {
		q.items, q.owner = nil, nil
	}
	if cap(q.spare) > keepQueueSlots {
		q.spare, q.spareOwn = nil, nil
	}
}

// pushLazy queues f without starting the writer; the flush timer does if
// nothing else does first.
func (q *sendQueue) pushLazy(f Frame, delay time.Duration) {
	q.budget.add(frameBytes(f))
	q.mu.Lock()
	defer q.mu.Unlock()
	q.items = append(q.items, f)
	q.owner = append(q.owner, nil)
	if q.closing || (q.armed && q.armedFor <= delay) {
		return
	}
	q.armed, q.armedFor = true, delay
	if q.flush == nil {
		q.flush = time.AfterFunc(delay, q.flushLazy)
	} else {
		q.flush.Reset(delay)
	}
}

// flushLazy is the lazy frames' timer: their delay is over. With no
// writer running it writes them itself, as the actor's kick would (a
// writer goroutine started for them would stay for writerIdleTimeout,
// and every frame meanwhile would wait for it to be scheduled instead of
// going out from the actor's turn).
func (q *sendQueue) flushLazy() {
	q.mu.Lock()
	q.armed = false
	if len(q.items) == 0 {
		q.mu.Unlock()
		return
	}
	q.due = true
	if q.inlineFreeLocked() {
		q.writing = true
		// Counted as a writer: this turn runs beside the actor, so the
		// closer (which the actor's end starts) must wait for it as for
		// a writer goroutine. Added before closing can be set: no Add
		// races the closer's Wait.
		q.writers.Add(1)
		batch, owner := q.takeLocked()
		q.mu.Unlock()
		q.inline(batch, owner)
		q.writers.Done()
		return
	}
	q.unlockAndKick(q.startLocked())
}

func (q *sendQueue) close(halfClose bool) {
	q.mu.Lock()
	q.closing = true
	q.budget.lift()
	q.halfClose = halfClose
	if q.flush != nil {
		q.flush.Stop()
	}
	q.unlockAndKick(q.startLocked())
}

// startWriter is sendQueue.start: one writer goroutine at a time, counted
// in c.writer when it was decided. It starts c.writeLoopFn, the method
// value made once, where go c.writeLoop() would allocate one each time.
func (c *Conn) startWriter() { go c.writeLoopFn() }

// writeLoop is the writer goroutine: it takes everything queued and writes
// it in one batch, again and again; it exits when it has had nothing to
// write for writerIdleTimeout, or at once when the actor can write
// inline (the next kick writes inline or starts another), or once the
// queue is closed (it flushes, half-closes and exits for good). While it
// runs it is the only caller of SendFrames and CloseWrite.
func (c *Conn) writeLoop() {
	defer c.writer.Done()
	q := &c.out
	for {
		q.mu.Lock()
		closing, half, failed, rest := q.closing, q.halfClose, q.failed, q.rest
		if !q.due && rest == nil && !closing {
			if q.inline != nil {
				// Nothing left that the actor's own write could not
				// take: its next kick writes from its turn again, one
				// goroutine hand-off fewer per frame (lazy frames left
				// here go with it, or on their timer).
				q.writing = false
				q.mu.Unlock()
				return
			}
			q.mu.Unlock()
			// The idle timer is the connection's, made on first use and
			// reused by each writer in turn; none leaves it armed.
			idle := c.writerIdle
			if idle == nil {
				idle = time.NewTimer(writerIdleTimeout)
				c.writerIdle = idle
			} else {
				idle.Reset(writerIdleTimeout)
			}
			select {
			case <-q.wake:
				idle.Stop()
				continue
			case <-idle.C:
			}
			q.mu.Lock()
			if len(q.items) == 0 && q.rest == nil && !q.closing {
				// Drop the buffers while this is still the writer: the
				// next one starts afresh.
				if c.stream != nil {
					c.stream.releaseBuffers()
				}
				q.items, q.owner, q.spare, q.spareOwn = nil, nil, nil, nil
				q.writing = false
				q.mu.Unlock()
				return
			}
			q.mu.Unlock()
			continue
		}
		batch, owner := q.takeLocked()
		q.rest = nil
		q.mu.Unlock()
		c.traceSent(batch)
		if rest != nil && !failed {
			if err := c.stream.writeRest(rest); err != nil { // rest comes from the stream's trySend
				failed = true
				_ = c.post(writerDone{err: err})
			}
			q.budget.release(int64(len(rest)))
		}
		if len(batch) > 0 && !failed {
			if err := c.transport.SendFrames(batch); err != nil {
				failed = true
				_ = c.post(writerDone{err: err})
			}
		}
		c.written(batch, owner, failed)
		if closing {
			q.mu.Lock()
			q.done, q.writing = true, false
			q.mu.Unlock()
			if half && !failed {
				_ = c.transport.CloseWrite()
			}
			return
		}
	}
}

// writeInline is one writer turn on the connection actor's goroutine, at
// the end of a run of its messages when no writer goroutine runs (or on
// the lazy frames' timer, flushLazy): what the socket accepts at once is
// written here, without waking another goroutine; what it does not (its
// buffer is full), or a batch it cannot write so (large segments, where
// the system has no vectored write that does not wait), goes to a writer
// goroutine.
func (c *Conn) writeInline(batch []Frame, owner []*answer) {
	q := &c.out
	handled, rest, err := c.stream.trySend(batch)
	if !handled {
		q.mu.Lock()
		// The batch goes first; the actor may have queued more meanwhile
		// when this runs on the lazy frames' timer. The storage that
		// takeLocked gave the queue is left empty: it is the spare again.
		more, moreOwn := q.items, q.owner
		q.items, q.owner, q.due = append(batch, more...), append(owner, moreOwn...), true
		if q.spare == nil {
			clear(more)
			clear(moreOwn)
			q.spare, q.spareOwn = more[:0], moreOwn[:0]
		}
		q.writers.Add(1) // still marked writing: a goroutine takes over
		q.mu.Unlock()
		q.start()
		return
	}
	c.traceSent(batch)
	if err != nil {
		_ = c.post(writerDone{err: err})
	}
	c.written(batch, owner, err != nil)
	q.inlineDone(rest)
}

// inlineDone ends an inline writer turn that left rest unwritten: a
// writer goroutine takes over when rest is not nil, when frames that must
// go were queued meanwhile, or when the queue was closed meanwhile (an
// inline turn on the lazy frames' timer runs beside the actor, whose
// close found a writer running and left the flush and the FIN to it).
// Lazy frames alone wait for their timer.
func (q *sendQueue) inlineDone(rest []byte) {
	q.mu.Lock()
	q.rest = rest
	q.budget.add(int64(len(rest))) // still to write
	more := rest != nil || q.due || q.closing
	q.writing = more
	if more {
		q.writers.Add(1)
	}
	q.mu.Unlock()
	if more {
		q.start()
	}
}

// traceSent logs each frame of a batch at debug level.
func (c *Conn) traceSent(batch []Frame) {
	if !c.trace {
		return
	}
	for _, f := range batch {
		if rm, err := rpccp.ReadRootMessage(f.Msg); err == nil {
			c.opts.Logger.Debug("capnp send", "peer", c.opts.Peer, "msg", DescribeMessage(rm), "sidecar", f.Sidecar != nil)
		}
	}
}

// written frees a batch once written (a Return goes back to its answer)
// and keeps its storage for the next one; failed records a write error.
func (c *Conn) written(batch []Frame, owner []*answer, failed bool) {
	var n int64
	for i, f := range batch {
		n += frameBytes(f)
		if a := owner[i]; a != nil {
			a.returnWritten()
		} else {
			recycleMessage(f.Msg)
		}
		batch[i], owner[i] = Frame{}, nil
	}
	q := &c.out
	q.mu.Lock()
	q.failed = q.failed || failed
	q.spare, q.spareOwn = batch[:0], owner[:0]
	q.mu.Unlock()
	q.budget.release(n)
	if failed {
		q.budget.lift() // nothing more is written: waiting for room is waiting forever
	}
}

// pooledBucketCount is the buckets of the buffer pools this package makes
// or widens: powers of two up to 64 MiB, the largest frame a connection
// accepts by default (DefaultMaxFrameSize).
const pooledBucketCount = 27

// capnp's SingleSegmentArena, in which every outgoing message grows,
// takes its buffers from bufferpool.Default, whose buckets capnp stops at
// 1 MiB: a message of a megabyte or more was made anew (and zeroed by the
// runtime) at each use and dropped after its write — a 1 MiB echo
// allocated 2.2 MB a call. The default pool is widened here, when the
// package is loaded, to the sizes of recvBodies, so that large messages
// reuse their buffers as small ones do. This is process-wide: every capnp
// message of the process, a connection's or not, draws on the wider pool;
// what it holds, the collector reclaims as from any sync.Pool.
func init() { bufferpool.Default = *bufferpool.NewPool(1024, pooledBucketCount) }

// newMessage allocates an outgoing rpc message. Its memory comes from
// pools: capnp's for the segment, ours for the Message and its arena
// (sendArena), which the writer gives back once it has written and
// released it (recycleMessage).
func newMessage() (*capnp.Message, rpccp.Message) {
	msg := messages.Get().(*capnp.Message)
	seg, err := msg.Reset(sendArenas.Get().(*sendArena))
	if err != nil {
		panic(err) // a fresh single-segment arena cannot fail
	}
	m, err := rpccp.NewRootMessage(seg)
	if err != nil {
		panic(err) // allocation in a fresh message cannot fail
	}
	return msg, m
}

var messages = sync.Pool{New: func() any { return new(capnp.Message) }}

// sendArena is the arena of an outgoing message: capnp's single-segment
// arena, growing in bufferpool.Default's buffers as before, whose buffer
// goes back to that pool as it is, without the two passes of zeroing
// that SingleSegmentArena.Release makes over all the message used (a
// 1 MiB echo zeroed 4 MiB a call so). Nothing a buffer held before
// reaches the wire or a reader: capnp zeroes every allocation as it makes
// it, and a message's segment is its allocations and the root pointer,
// which is written as the root is set (newMessage sets it at once). Every
// user of bufferpool.Default overwrites what it gets (capnp's decoder
// reads a frame in full first), so the pool's buffers need not be zero.
type sendArena struct{ capnp.SingleSegmentArena }

// emptySendArena is a sendArena before its first allocation: capnp's
// pooled arena as SingleSegment(nil) hands it out, growing in
// bufferpool.Default (which a composite literal cannot set).
var emptySendArena = func() capnp.SingleSegmentArena {
	a := capnp.SingleSegment(nil).(*capnp.SingleSegmentArena)
	empty := *a
	a.Release() // it holds no buffer: back to capnp's pool as it came
	return empty
}()

var sendArenas = sync.Pool{New: func() any { return &sendArena{emptySendArena} }}

// Release gives the arena's buffer back to bufferpool.Default unzeroed
// (Put zeroes the length it is given: none), or a buffer like it off a
// page's start (offPage), and the arena to sendArenas.
func (a *sendArena) Release() {
	if b := a.Segment(0).Data(); cap(b) > 0 {
		bufferpool.Default.Put(offPage(b)[:0])
	}
	a.SingleSegmentArena = emptySendArena
	sendArenas.Put(a)
}

// A large outgoing segment is written from where it is (writev), and the
// kernel copies it into the socket's send pages with the frame's 8-byte
// header before it: from a buffer that starts on a page, each byte goes
// 8 bytes past its source's offset in a page, and the copy stalls on the
// CPU's 4 KiB address aliasing of loads and just-made stores. Measured
// with the server in a process of its own (get1MiB, perf): the writev of
// a 1 MiB Return copied in about 530 µs from a page-aligned buffer, 150
// µs from one 256 bytes into a page and 100 µs from one 2 KiB into it;
// go-capnp's, whose data is a segment of its own after a 104-byte lead,
// in 77–106 µs. The runtime starts every large allocation on a page, so
// a large buffer that comes back so is exchanged for one that starts
// offPageBy bytes into a page, once: the pool then holds that one.
const (
	offPageFrom = 2 * copyLimit // the least buffer exchanged: the smallest a segment written from where it is can be in
	offPageBy   = 2 << 10
	pageSize    = 4 << 10
)

// offPage returns b, or a new buffer of b's capacity that starts
// offPageBy bytes into a page when b is large and starts on one.
func offPage(b []byte) []byte {
	if cap(b) < offPageFrom || uintptr(unsafe.Pointer(unsafe.SliceData(b)))%pageSize != 0 {
		return b
	}
	n := cap(b)
	return make([]byte, offPageBy+n)[offPageBy : offPageBy+n : offPageBy+n]
}

// recycleMessage releases a written message that nobody else holds and
// keeps it for a later newMessage.
func recycleMessage(msg *capnp.Message) {
	msg.Release()
	messages.Put(msg)
}
