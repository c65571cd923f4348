package conn

import (
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
