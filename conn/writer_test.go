package conn

import (
	"bytes"
	"runtime"
	"sync"
	"testing"
	"time"
	"unsafe"

	"capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
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
	)
	// Without reuse each message allocates a bucket at least. A
	// collection may empty the pool now and then; under the race
	// detector sync.Pool drops one Put in four on purpose, and each drop
	// costs two buckets (the runtime's new buffer, then its exchange for
	// one off a page, offPage): a bucket every two messages on average,
	// so more messages there, and a bound just under one a message.
	n, limit := 40, uint64(40/2*bucket)
	if raceOn {
		n, limit = 120, 120*9/10*bucket
	}
	payload := make([]byte, size)
	build := func() {
		msg, m := newMessage()
		dataCall(t, m, payload)
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
	if grew > limit {
		t.Fatalf("%d messages of %d bytes allocated %d bytes: their buffers are not reused", n, size, grew)
	}
}

// TestSendArenaWritesNoStaleBytes: an outgoing message's buffer goes back
// to the pool unzeroed (sendArena), so the next message may be built in
// a buffer full of an earlier one's bytes. Built that way, a message must
// encode to exactly the bytes it has when built in fresh, zeroed memory:
// nothing of what the buffer held before reaches the wire. Each size is
// built over a buffer filled with 0xA5 just before its release, until
// one has been built over a reused buffer.
func TestSendArenaWritesNoStaleBytes(t *testing.T) {
	for _, size := range []int{0, 3, 100, 5 << 10, 70 << 10, 1<<20 + 9} {
		payload := make([]byte, size)
		for i := range payload {
			payload[i] = byte(i % 7) // never 0xA5
		}
		build := func(msg *capnp.Message, m rpccp.Message) []byte {
			t.Helper()
			call := dataCall(t, m, payload)
			call.SetQuestionId(7)
			call.SetMethodId(3)
			p, _ := call.Params()
			if _, err := p.NewCapTable(3); err != nil { // zeroed descriptors, left unset
				t.Fatal(err)
			}
			b, err := msg.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
		fresh, seg := capnp.NewSingleSegmentMessage(make([]byte, 0, 2*size+4096))
		fm, err := rpccp.NewRootMessage(seg)
		if err != nil {
			t.Fatal(err)
		}
		want := build(fresh, fm)

		reused := 0
		var last *byte
		for i := 0; i < 50 && reused < 3; i++ {
			msg, m := newMessage()
			got := build(msg, m)
			if !bytes.Equal(got, want) {
				t.Fatalf("a message of %d bytes of data built in a reused buffer encodes differently from one built in zeroed memory", size)
			}
			data := msg.Arena.Segment(0).Data()
			if unsafe.SliceData(data) == last {
				reused++
			}
			full := data[:cap(data)]
			for j := range full {
				full[j] = 0xA5
			}
			last = unsafe.SliceData(data)
			recycleMessage(msg)
		}
		if reused == 0 {
			t.Fatalf("no message of %d bytes of data was built in a reused buffer: the test did not test", size)
		}
	}
}

// dataCall makes m a Call whose params' content is payload, as Data.
func dataCall(t *testing.T, m rpccp.Message, payload []byte) rpccp.Call {
	t.Helper()
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
	return call
}

// TestSendBuffersOffPage: a large outgoing buffer that starts on a page
// goes back to the pool exchanged for one of the same capacity that does
// not (offPage), so that the messages built in it after the first are
// written from off a page's start; a small one, or one off a page
// already, goes back as it is.
func TestSendBuffersOffPage(t *testing.T) {
	onPage := func(b []byte) bool { return uintptr(unsafe.Pointer(unsafe.SliceData(b)))%pageSize == 0 }
	aligned := make([]byte, 1<<20)
	if !onPage(aligned) {
		t.Skip("this runtime does not start a 1 MiB allocation on a page")
	}
	got := offPage(aligned[:10])
	if onPage(got) || cap(got) != cap(aligned) || len(got) != cap(aligned) {
		t.Fatalf("offPage of a page-aligned 1 MiB buffer: on a page %v, len %d, cap %d", onPage(got), len(got), cap(got))
	}
	if again := offPage(got); unsafe.SliceData(again) != unsafe.SliceData(got) {
		t.Error("offPage exchanged a buffer that was off a page already")
	}
	small := make([]byte, 4<<10)
	if s := offPage(small); unsafe.SliceData(s) != unsafe.SliceData(small) {
		t.Error("offPage exchanged a small buffer")
	}

	payload := make([]byte, 3<<19) // 1.5 MiB: a 2 MiB buffer
	off := 0
	for range 20 {
		msg, m := newMessage()
		dataCall(t, m, payload)
		if !onPage(msg.Arena.Segment(0).Data()) {
			off++
		}
		recycleMessage(msg)
	}
	// The first takes a buffer the runtime made; sync.Pool may drop one
	// now and then (one Put in four under the race detector).
	if off == 0 {
		t.Fatal("no large message was built in a buffer off a page's start")
	}
}
