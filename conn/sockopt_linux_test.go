package conn

import (
	"bytes"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
)

// smallFrame is a frame of 64 bytes of data, to write.
func smallFrame() Frame {
	msg, seg := capnp.NewSingleSegmentMessage(nil)
	data, _ := capnp.NewData(seg, bytes.Repeat([]byte{1}, 64))
	_ = msg.SetRoot(data.ToPtr())
	return Frame{Msg: msg}
}

// TestResetTakenByAWrite: the peer resets the connection, a write takes
// the reset (the kernel reports it once), and the read after it sees an
// EOF: the transport reports the reset, mid-frame or between frames. An
// EOF after a FIN stays an EOF.
func TestResetTakenByAWrite(t *testing.T) {
	for _, tc := range []struct {
		name     string
		partial  bool // the peer wrote half a frame before its end
		reset    bool // its end is a reset (else a FIN)
		wantRead func(error) bool
	}{
		{"reset between frames", false, true, func(err error) bool { return errors.Is(err, syscall.ECONNRESET) }},
		{"reset mid-frame", true, true, func(err error) bool { return errors.Is(err, syscall.ECONNRESET) }},
		{"FIN between frames", false, false, func(err error) bool { return err == io.EOF }},
		{"FIN mid-frame", true, false, func(err error) bool { return errors.Is(err, io.ErrUnexpectedEOF) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ours, peer := tcpPair(t)
			defer ours.Close()
			tr := NewStreamTransport(ours, Limits{})
			if tc.partial {
				b, _ := appendFrame(nil, smallFrame())
				if _, err := peer.Write(b[:len(b)/2]); err != nil {
					t.Fatal(err)
				}
			}
			if tc.reset {
				_ = peer.(*net.TCPConn).SetLinger(0)
			}
			peer.Close()
			if tc.reset {
				// Write until a write takes the reset.
				deadline := time.Now().Add(10 * time.Second)
				for {
					err := tr.SendFrames([]Frame{smallFrame()})
					if errors.Is(err, syscall.ECONNRESET) {
						break
					}
					if err != nil || time.Now().After(deadline) {
						t.Fatalf("no write took the reset: %v", err)
					}
					time.Sleep(time.Millisecond)
				}
			}
			_, err := tr.RecvFrame()
			if !tc.wantRead(err) {
				t.Fatalf("read ended with %v", err)
			}
		})
	}
}

// TestResetTakenByARead: the peer resets the connection, a read takes
// the reset, and the writes after it see EPIPE: the transport reports the
// reset, from the writer's write and from the actor's inline one alike.
func TestResetTakenByARead(t *testing.T) {
	ours, peer := tcpPair(t)
	defer ours.Close()
	tr := NewStreamTransport(ours, Limits{}).(*streamTransport)
	_ = peer.(*net.TCPConn).SetLinger(0)
	peer.Close()
	if _, err := tr.RecvFrame(); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read ended with %v, want the reset", err)
	}
	err := tr.SendFrames([]Frame{smallFrame()})
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("write after the reset: %v, want the reset", err)
	}
	if !tr.canTry() {
		t.Fatal("a TCP transport cannot write inline")
	}
	if handled, _, err := tr.trySend([]Frame{smallFrame()}); !handled || !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("inline write after the reset: handled %v, %v; want the reset", handled, err)
	}
}
