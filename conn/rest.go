package conn

import (
	"math/bits"
	"time"
)

// restDelay is how long a connection stays without a call in flight
// before it rests (state.rest), at first: under load a connection is
// quiet for a moment between two batches many times a second, and giving
// its storage back each time would cost its reuse.
const restDelay = 10 * time.Millisecond

// maxRestShift bounds restBackoff: a connection rests at the latest
// restDelay<<maxRestShift (1.28 s) after its last frame.
const maxRestShift = 7

// restSoon is how soon after a rest a frame must come for the rest to have
// cost more than it saved.
const restSoon = restDelay << maxRestShift

// restBackoff decides how long a quiet connection waits before it rests.
// A rest gives back what an idle connection need not hold (state.restNow)
// and moves the reader to a fresh goroutine with a small stack
// (Conn.readerRest); the next frame pays for it: the new goroutine's stack
// grows again to the depth of a call (copied twice or three times), the
// storage comes back from the pools. A connection that gets a call every
// few hundred milliseconds pays that on every call and holds little less
// for it, so a frame that comes within restSoon of a rest makes the quiet
// time before the next rest at least double, and more than twice the time
// the rest lasted, up to restDelay<<maxRestShift; one that comes later
// starts again from restDelay. A connection that gets no frame rests
// restDelay after its last one.
//
// It is a pure value: the times it is given are the connection's clock
// (time since the connection started). It keeps them in milliseconds, in
// 32 bits (it is a field of every connection): they wrap after 49 days,
// which at worst takes one wrong decision.
type restBackoff struct {
	restedAt uint32 // when the connection rested, in ms; 0: it is not resting
	shift    uint8  // the quiet time before a rest is restDelay<<shift
	// stirred: a frame has come since the rest timer was armed, so the
	// connection has not been quiet for the whole delay.
	stirred bool
}

// delay is how long the connection must stay quiet before it rests.
func (b *restBackoff) delay() time.Duration { return restDelay << b.shift }

// armed: the rest timer is armed now.
func (b *restBackoff) armed() { b.stirred = false }

// frame: a frame came. It reports whether the connection was resting,
// when the caller tells woke the time (so that a frame of a connection
// that is not resting reads no clock).
func (b *restBackoff) frame() (resting bool) {
	b.stirred = true
	return b.restedAt != 0
}

// woke: the first frame after a rest came at at.
func (b *restBackoff) woke(at time.Duration) {
	if gap := time.Duration(millis(at)-b.restedAt) * time.Millisecond; gap < restSoon {
		// At least twice the quiet time the rest was woken after, so
		// that a connection called at a steady rate stops resting after
		// one rest: 2^k > gap/restDelay.
		k := uint8(bits.Len64(uint64(gap/restDelay))) + 1
		b.shift = min(max(b.shift+1, k), maxRestShift)
	} else {
		b.shift = 0
	}
	b.restedAt = 0
}

// due reports, as the rest timer fires, whether the connection rests now:
// no frame came since it was armed. If one did, the timer is armed again.
func (b *restBackoff) due() bool { return !b.stirred }

// rested: the connection rested at at.
func (b *restBackoff) rested(at time.Duration) { b.restedAt = max(millis(at), 1) }

// millis is d in milliseconds, wrapping at 32 bits.
func millis(d time.Duration) uint32 { return uint32(d / time.Millisecond) }
