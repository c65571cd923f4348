package conn

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
	"github.com/asynkron/protoactor-go/actor"

	"github.com/vatactor/vatactor/supervisor"
)

// A frame that declares more than MaxFrameSize ends the connection with an
// Abort naming the problem, over a real TCP socket; the peer reads that
// Abort and then a clean EOF, not a reset.
func TestOversizedFrameOverTCP(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	peer, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	ours, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	sys := actor.NewActorSystem(actor.WithLoggerFactory(quietLogger))
	defer sys.Shutdown()
	lim := Limits{MaxFrameSize: 1 << 10}
	c := Spawn(sys.Root, sys.Root, NewStreamTransport(ours, lim), Options{Limits: lim, LingerTimeout: time.Second})

	var hdr [8]byte
	binary.LittleEndian.PutUint32(hdr[0:], 0)     // one segment
	binary.LittleEndian.PutUint32(hdr[4:], 1<<20) // of 8 MiB
	if _, err := peer.Write(hdr[:]); err != nil {
		t.Fatal(err)
	}
	_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	msg, err := readFrame(bufio.NewReader(peer), Limits{}.withDefaults())
	if err != nil {
		t.Fatalf("reading the Abort: %v", err)
	}
	m, _ := rpccp.ReadRootMessage(msg)
	if d := DescribeMessage(m); !strings.HasPrefix(d, "abort failed") || !strings.Contains(d, ErrFrameTooLarge.Error()) {
		t.Fatalf("got %q, want an abort naming %q", d, ErrFrameTooLarge)
	}
	if n, err := peer.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("after the Abort: n=%d err=%v, want EOF", n, err)
	}
	peer.Close()
	<-c.Done()
	var pe supervisor.ProtocolError
	if err := c.Err(); !errors.As(err, &pe) || !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("reason = %v, want ProtocolError wrapping ErrFrameTooLarge", err)
	}
}

func TestTooManySegments(t *testing.T) {
	var hdr [4]byte
	binary.LittleEndian.PutUint32(hdr[:], 10000)
	_, err := readFrame(bufio.NewReader(bytes.NewReader(hdr[:])), Limits{}.withDefaults())
	if !errors.Is(err, ErrTooManySegments) {
		t.Fatalf("err = %v, want ErrTooManySegments", err)
	}
}

func TestFrameRoundTrip(t *testing.T) {
	msg, m := newMessage()
	f, _ := m.NewFinish()
	f.SetQuestionId(7)
	b, err := appendFrame(nil, msg)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := msg.Marshal()
	if !bytes.Equal(b, want) {
		t.Fatalf("our framing differs from capnp's Marshal:\n%x\n%x", b, want)
	}
	got, err := readFrame(bufio.NewReader(bytes.NewReader(b)), Limits{}.withDefaults())
	if err != nil {
		t.Fatal(err)
	}
	gm, _ := rpccp.ReadRootMessage(got)
	if d := DescribeMessage(gm); d != "finish q7 releaseResultCaps=true" {
		t.Fatalf("round trip: %q", d)
	}
}

// FuzzReadFrame: no input makes the frame reader or the describer panic,
// and nothing larger than the limit is allocated.
func FuzzReadFrame(f *testing.F) {
	msg, m := newMessage()
	c, _ := m.NewCall()
	c.SetQuestionId(1)
	seed, _ := appendFrame(nil, msg)
	f.Add(seed)
	f.Add([]byte{0, 0, 0, 0, 1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		lim := Limits{MaxFrameSize: 1 << 16}.withDefaults()
		msg, err := readFrame(bufio.NewReader(bytes.NewReader(data)), lim)
		if err != nil {
			return
		}
		if m, err := rpccp.ReadRootMessage(msg); err == nil {
			_ = DescribeMessage(m)
		}
	})
}

// FuzzConnMessages: the connection actor survives any message a peer can
// send: it answers, or aborts with a reason; it never panics or hangs.
func FuzzConnMessages(f *testing.F) {
	for _, fill := range []func(rpccp.Message) error{
		callImport(0, 1, "x"),
		func(m rpccp.Message) error { b, err := m.NewBootstrap(); b.SetQuestionId(0); return err },
		func(m rpccp.Message) error { r, err := m.NewRelease(); r.SetId(0); r.SetReferenceCount(1); return err },
	} {
		msg, m := newMessage()
		_ = fill(m)
		b, _ := msg.Marshal()
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		msg, err := capnp.Unmarshal(data)
		if err != nil {
			return
		}
		sys := actor.NewActorSystem(actor.WithLoggerFactory(quietLogger))
		defer sys.Shutdown()
		a, b := NewPipe()
		c := Spawn(sys.Root, sys.Root, a, Options{LingerTimeout: 10 * time.Millisecond})
		go func() {
			for {
				if _, err := b.RecvMessage(); err != nil {
					return
				}
			}
		}()
		if err := b.SendMessages([]*capnp.Message{msg}); err != nil {
			t.Skip()
		}
		c.Close()
		b.Close()
	})
}
