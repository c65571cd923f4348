package conn

import (
	"runtime"
	"sync"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
)

// TestCloseDuringTimerWrite: the lazy frames' timer writes them inline,
// beside the actor; a close that comes while it writes finds a writer
// running and leaves the flush and the FIN to it, so the end of the
// timer's turn must start the writer goroutine that does them. It left
// the close undone: no FIN, and the peer's EOF never came (the linger
// ran out).
func TestCloseDuringTimerWrite(t *testing.T) {
	var writers sync.WaitGroup
	started := make(chan struct{})
	writing := make(chan struct{})
	release := make(chan struct{})
	q := &sendQueue{wake: make(chan struct{}, 1), writers: &writers, budget: byteBudget{limit: 1 << 20}}
	q.start = func() { close(started) }
	q.inline = func([]Frame, []*answer) {
		close(writing)
		<-release
		q.inlineDone(nil)
	}
	msg, _ := capnp.NewSingleSegmentMessage(nil)
	q.pushLazy(Frame{Msg: msg}, time.Hour) // the timer is called by hand below
	timerDone := make(chan struct{})
	go func() { q.flushLazy(); close(timerDone) }()
	<-writing
	q.close(true) // the actor's end, while the timer's turn writes
	close(release)
	<-timerDone
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("no writer started for the close that came during the timer's write: no FIN would be sent")
	}
	q.flush.Stop()
}

// TestLargeMessagesReuseBuffers: an outgoing message of more than a
// megabyte (capnp's own pool stops at 1 MiB) reuses its buffer once
// released: the heap allocated over many such messages is a few buffers,
// not one or more each.
func TestLargeMessagesReuseBuffers(t *testing.T) {
	const (
		size   = 3 << 19 // 1.5 MiB
		bucket = 2 << 20 // the pool's buffer for it
		n      = 40
	)
	payload := make([]byte, size)
	build := func() {
		msg, m := newMessage()
		call, err := m.NewCall()
		if err != nil {
			t.Fatal(err)
		}
		p, err := call.NewParams()
		if err != nil {
			t.Fatal(err)
		}
		d, err := capnp.NewData(p.Segment(), payload)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.SetContent(d.ToPtr()); err != nil {
			t.Fatal(err)
		}
		recycleMessage(msg)
	}
	build() // the first takes its buffer from the heap
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range n {
		build()
	}
	runtime.ReadMemStats(&after)
	grew := after.TotalAlloc - before.TotalAlloc
	t.Logf("%d messages of %.1f MiB allocated %.1f MiB", n, float64(size)/(1<<20), float64(grew)/(1<<20))
	// A collection may empty the pool now and then, and under the race
	// detector sync.Pool drops one Put in four on purpose.
	if grew > n/2*bucket {
		t.Fatalf("%d messages of %d bytes allocated %d bytes: their buffers are not reused", n, size, grew)
	}
}
