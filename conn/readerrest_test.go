package conn

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
	"github.com/asynkron/protoactor-go/actor"

	"github.com/vatactor/vatactor/interop"
)

// TestStreamTransportRest: a rest asked for while the reader waits
// between frames makes RecvFrame return errResting, and the frame that
// follows is read whole from a fresh wait (waitShallow); one asked for in
// the middle of a frame neither cuts the frame nor stretches its
// deadline; a stale deadline between frames, without a rest asked for,
// is waited out.
func TestStreamTransportRest(t *testing.T) {
	frame := func(t *testing.T, text string) []byte {
		t.Helper()
		msg, seg := capnp.NewSingleSegmentMessage(nil)
		tx, err := capnp.NewText(seg, text)
		if err != nil {
			t.Fatal(err)
		}
		_ = msg.SetRoot(tx.ToPtr())
		b, err := appendFrame(nil, Frame{Msg: msg})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	recv := func(tr Transport) <-chan error {
		got := make(chan error, 1)
		go func() {
			f, err := tr.RecvFrame()
			if err == nil {
				p, _ := f.Msg.Root()
				if p.Text() != "whole" {
					err = errors.New("frame read back as " + p.Text())
				}
			}
			got <- err
		}()
		return got
	}
	newPair := func(t *testing.T, lim Limits) (*streamTransport, func([]byte)) {
		ours, peer := tcpPair(t)
		t.Cleanup(func() { ours.Close(); peer.Close() })
		tr := NewStreamTransport(ours, lim).(*streamTransport)
		return tr, func(b []byte) {
			if _, err := peer.Write(b); err != nil {
				t.Fatal(err)
			}
		}
	}

	t.Run("between frames", func(t *testing.T) {
		tr, write := newPair(t, Limits{})
		got := recv(tr)
		tr.askRest()
		if err := <-got; err != errResting {
			t.Fatalf("RecvFrame after askRest: %v, want errResting", err)
		}
		waited := make(chan struct{})
		go func() { tr.waitShallow(); close(waited) }()
		write(frame(t, "whole"))
		<-waited
		if err := <-recv(tr); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("mid-frame", func(t *testing.T) {
		tr, write := newPair(t, Limits{FrameTimeout: time.Minute})
		b := frame(t, "whole")
		write(b[:len(b)/2])
		if err := tr.r.await(); err != nil { // the frame has begun
			t.Fatal(err)
		}
		got := recv(tr)
		for range 5 {
			tr.askRest()
			time.Sleep(5 * time.Millisecond)
		}
		write(b[len(b)/2:])
		if err := <-got; err != nil {
			t.Fatalf("a frame interrupted by rests: %v", err)
		}
	})
	t.Run("mid-frame timeout", func(t *testing.T) {
		tr, write := newPair(t, Limits{FrameTimeout: 100 * time.Millisecond})
		b := frame(t, "whole")
		write(b[:len(b)/2])
		if err := tr.r.await(); err != nil {
			t.Fatal(err)
		}
		got := recv(tr)
		for {
			tr.askRest()
			select {
			case err := <-got:
				if !errors.Is(err, ErrFrameTimeout) {
					t.Fatalf("a frame that never ends, among rests: %v, want ErrFrameTimeout", err)
				}
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	})
	t.Run("stale deadline", func(t *testing.T) {
		tr, write := newPair(t, Limits{})
		_ = tr.c.SetReadDeadline(time.Now())
		got := recv(tr)
		time.Sleep(10 * time.Millisecond)
		write(frame(t, "whole"))
		if err := <-got; err != nil {
			t.Fatalf("a deadline no rest asked for, between frames: %v", err)
		}
	})
}

// TestReaderRestsAfterBurst: once connections have come to rest after a
// burst of calls in flight, each one's reader is parked (or, where it
// cannot be, waits on a fresh goroutine: readAfterRest, in waitShallow),
// not on the goroutine whose stack the burst grew, and the connections
// work on. (What that saves is measured by the benchmark's
// idle figures: a goroutine's stack in use cannot be read from here, and
// StackInuse moves with every other goroutine.)
func TestReaderRestsAfterBurst(t *testing.T) {
	const pairs, burst = 20, 32
	sys := actor.NewActorSystem(actor.WithLoggerFactory(quietLogger))
	defer sys.Shutdown()
	boot := capnp.Client(interop.NewEchoServer().Client(interop.PlainServer))
	defer boot.Release()
	ctx := context.Background()
	p := openEchoPairs(t, sys, boot, pairs)
	defer p.close()
	echoes := p.echoes
	calls := func(n int) {
		var fs []interop.Echo_echo_Results_Future
		var rels []capnp.ReleaseFunc
		for _, e := range echoes {
			for range n {
				f, rel := e.Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText("burst") })
				fs, rels = append(fs, f), append(rels, rel)
			}
		}
		for i, f := range fs {
			if _, err := f.Struct(); err != nil {
				t.Fatal(err)
			}
			rels[i]()
		}
	}
	for range 2 { // a rest, a burst on the fresh readers, and they rest again
		calls(burst)
		waitFor(t, func() bool { return restingReaders() == 2*pairs })
	}
	calls(1)
}

// restingReaders counts the readers of this process that wait after a
// rest: parked (parker), or on a fresh goroutine (readAfterRest, in
// waitShallow).
func restingReaders() int {
	return readers.parked() + shallowReaders()
}

// shallowReaders counts the readers that wait after a rest on a fresh
// goroutine (readAfterRest, in waitShallow).
func shallowReaders() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Count(string(buf[:n]), "conn.(*frameReader).waitShallow(")
		}
		buf = make([]byte, 2*len(buf))
	}
}
