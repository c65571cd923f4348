package conn

import (
	"testing"
	"time"
)

// TestRestBackoff: the policy alone. Each frame within restSoon of a rest
// at least doubles the quiet time before the next rest, and makes it more
// than twice the rest's length, up to restDelay<<maxRestShift; a frame
// later than restSoon starts again from restDelay; a frame after the
// timer was armed puts the rest off.
func TestRestBackoff(t *testing.T) {
	var b restBackoff
	at := time.Second                 // the connection's clock
	frame := func(at time.Duration) { // as state.frame tells it
		if b.frame() {
			b.woke(at)
		}
	}
	rest := func() {
		t.Helper()
		b.armed()
		if !b.due() {
			t.Fatal("a rest timer with no frame since it was armed is not due")
		}
		b.rested(at)
	}
	if b.delay() != restDelay {
		t.Fatalf("first delay %v, want %v", b.delay(), restDelay)
	}
	frame(at) // frames before any rest change nothing
	if b.delay() != restDelay {
		t.Fatalf("delay after a frame with no rest before it: %v, want %v", b.delay(), restDelay)
	}
	for i := 1; i <= maxRestShift+2; i++ {
		rest()
		at += restDelay / 2 // woken at once: the delay doubles
		frame(at)
		want := restDelay << min(i, maxRestShift)
		if b.delay() != want {
			t.Fatalf("after %d rests each woken at once: delay %v, want %v", i, b.delay(), want)
		}
	}
	for _, c := range []struct{ shift, woken, want time.Duration }{
		{0, 290 * time.Millisecond, 640 * time.Millisecond}, // more than twice the rest's length
		{0, 35 * time.Millisecond, 80 * time.Millisecond},
		{0, 10 * time.Millisecond, 40 * time.Millisecond},
		{3, 15 * time.Millisecond, 160 * time.Millisecond}, // at least double
		{0, restSoon - time.Millisecond, restSoon},         // at most restSoon
	} {
		b = restBackoff{shift: uint8(c.shift)}
		rest()
		at += c.woken
		frame(at)
		if b.delay() != c.want {
			t.Fatalf("delay %v, woken %v after a rest: next delay %v, want %v", restDelay<<c.shift, c.woken, b.delay(), c.want)
		}
	}
	if b.delay() != restSoon {
		t.Fatalf("the longest delay is %v, want restSoon (%v)", b.delay(), restSoon)
	}
	rest()
	at += restSoon
	frame(at)
	if b.delay() != restDelay {
		t.Fatalf("after a rest woken only after restSoon: delay %v, want %v", b.delay(), restDelay)
	}
	frame(at + time.Millisecond) // not resting: no change
	if b.delay() != restDelay {
		t.Fatalf("a frame while not resting changed the delay to %v", b.delay())
	}

	b.armed()
	frame(at)
	if b.due() {
		t.Fatal("a rest timer is due though a frame came after it was armed")
	}
	b.armed()
	if !b.due() {
		t.Fatal("a rest timer armed again, no frame since, is not due")
	}

	// The clock in 32-bit milliseconds wraps; a rest at the wrap is
	// still measured right.
	b = restBackoff{}
	wrap := time.Duration(1<<32) * time.Millisecond
	b.rested(wrap - time.Millisecond)
	frame(wrap + 5*time.Millisecond)
	if b.delay() != 2*restDelay {
		t.Fatalf("a rest woken 6 ms on across the clock's wrap: delay %v, want %v", b.delay(), 2*restDelay)
	}
}

// TestRestBacksOffOverTCP: a pair of connections over TCP called every
// 30 ms, three times restDelay, rests after the first calls and then no
// more (each rest woken soon put the next one off); once the calls stop,
// both ends rest again.
func TestRestBacksOffOverTCP(t *testing.T) {
	p := newEchoPairs(t, 1)
	defer p.close()
	call := func() { t.Helper(); p.echo(t, 0, "tick") }
	call()
	waitFor(t, func() bool { return restingReaders() == 2 }) // the first rest, at restDelay
	const interval, warm, measured = 30 * time.Millisecond, 10, 10
	for range warm {
		time.Sleep(interval)
		call()
	}
	rests := 0
	for range measured {
		time.Sleep(interval)
		rests += restingReaders()
		call()
	}
	if rests != 0 {
		t.Errorf("a connection called every %v: its readers were found resting %d times in %d calls after %d, want none", interval, rests, measured, warm)
	}
	waitFor(t, func() bool { return restingReaders() == 2 }) // quiet: both rest again, at most restSoon on
}
