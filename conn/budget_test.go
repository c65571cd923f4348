package conn

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
	"github.com/asynkron/protoactor-go/actor"

	"github.com/vatactor/vatactor/interop"
)

// returnsWithin reports whether wait returned within d.
func returnsWithin(d time.Duration, wait func()) bool {
	done := make(chan struct{})
	go func() { wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// TestByteBudget: a waiter past the limit goes on once the count is down
// to half, when its context ends, or when the budget is lifted, after
// which nobody waits.
func TestByteBudget(t *testing.T) {
	b := &byteBudget{limit: 100}
	b.add(100)
	if err := b.awaitRoom(context.Background()); err != nil {
		t.Fatalf("at the limit: %v", err)
	}
	b.add(1) // 101: over
	woke := make(chan error, 1)
	go func() { woke <- b.awaitRoom(context.Background()) }()
	waitFor(t, b.waiting.Load)
	b.release(40) // 61: still over half
	select {
	case err := <-woke:
		t.Fatalf("went on at 61 of 100 (err %v)", err)
	case <-time.After(50 * time.Millisecond):
	}
	b.release(11) // 50: half
	if err := <-woke; err != nil {
		t.Fatal(err)
	}

	b.add(60) // 110
	ctx, cancel := context.WithCancel(context.Background())
	go func() { woke <- b.awaitRoom(ctx) }()
	cancel()
	if err := <-woke; !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled wait: %v", err)
	}
	go func() { woke <- b.awaitRoom(context.Background()) }()
	b.lift()
	if err := <-woke; err != nil {
		t.Fatal(err)
	}
	if !returnsWithin(time.Second, func() { _ = b.awaitRoom(context.Background()) }) {
		t.Fatal("a wait after lift did not return")
	}
}

// TestRecvQueueBound: while the connection actor is busy, a peer that
// sends calls as fast as it can makes the connection hold at most
// MaxRecvQueue (and one frame) of them, over real TCP; once the actor
// goes on, every call is answered.
func TestRecvQueueBound(t *testing.T) {
	const (
		limit = 1 << 20
		calls = 512
	)
	big := strings.Repeat("x", 32<<10)
	ours, theirs := tcpPair(t)
	sys := actor.NewActorSystem(actor.WithLoggerFactory(quietLogger))
	defer sys.Shutdown()
	lim := Limits{MaxRecvQueue: limit}
	boot := capnp.Client(interop.NewEchoServer().Client(interop.PlainServer))
	defer boot.Release() // the connection holds its own reference
	c := Spawn(sys.Root, sys.Root, NewStreamTransport(ours, lim), Options{
		Bootstrap: boot,
		Peer:      "flood", Limits: lim, LingerTimeout: 100 * time.Millisecond,
	})
	peer := NewStreamTransport(theirs, Limits{})
	defer peer.Close()

	// The peer reads every Return in the background.
	returns := make(chan int, 1)
	go func() {
		n := 0
		defer func() { returns <- n }()
		for {
			f, err := peer.RecvFrame()
			if err != nil {
				return
			}
			if m, err := rpccp.ReadRootMessage(f.Msg); err == nil && m.Which() == rpccp.Message_Which_return {
				n++
				if n == calls+1 { // the bootstrap's and every call's
					return
				}
			}
		}
	}()

	// The actor's turn waits until the test takes the snapshot.
	stall := inspectReq{reply: make(chan Snapshot)}
	if err := c.post(stall); err != nil {
		t.Fatal(err)
	}
	var sent atomic.Int64
	flooded := make(chan error, 1)
	go func() {
		send := func(fill func(rpccp.Message) error) error {
			msg, m := newMessage()
			if err := fill(m); err != nil {
				return err
			}
			n, _ := msg.TotalSize()
			sent.Add(int64(n))
			return peer.SendFrames([]Frame{{Msg: msg}})
		}
		err := send(func(m rpccp.Message) error {
			b, err := m.NewBootstrap()
			b.SetQuestionId(0)
			return err
		})
		for q := uint32(1); q <= calls && err == nil; q++ {
			if err = send(echoCall(q, 0, big, func(tg rpccp.MessageTarget) error {
				pa, err := tg.NewPromisedAnswer()
				pa.SetQuestionId(0)
				return err
			})); err == nil {
				err = send(finishMsgQ(q))
			}
		}
		flooded <- err
	}()

	waitFor(t, func() bool { return c.in.held() > limit })
	// The reader now waits; the count stays where it stopped.
	time.Sleep(200 * time.Millisecond)
	held, total := c.in.held(), sent.Load()
	t.Logf("held %d bytes of the %d the peer sent, with the actor busy", held, total)
	if held > limit+64<<10 {
		t.Fatalf("the connection holds %d bytes of unhandled frames, over the %d budget", held, limit)
	}
	select {
	case err := <-flooded:
		t.Fatalf("the peer sent all %d bytes while the connection read at most %d (err %v)", total, limit, err)
	default:
	}

	snap := <-stall.reply // the actor goes on
	if snap.Flow.MaxRecvQueue != limit {
		t.Fatalf("snapshot's MaxRecvQueue %d, want %d", snap.Flow.MaxRecvQueue, limit)
	}
	if err := <-flooded; err != nil {
		t.Fatal(err)
	}
	if n := <-returns; n != calls+1 {
		t.Fatalf("%d Returns, want %d", n, calls+1)
	}
	waitFor(t, func() bool { return c.in.held() == 0 })
	c.Close()
}
