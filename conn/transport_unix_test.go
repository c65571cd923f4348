//go:build unix

package conn

import (
	"bytes"
	"io"
	"net"
	"slices"
	"testing"
)

// TestTrySend: a write that must not wait takes what the socket accepts
// and hands back the rest (a copy) when the peer is not reading; the
// bytes arrive complete and in order once it reads.
func TestTrySend(t *testing.T) {
	c, peer := tcpPair(t)
	defer c.Close()
	defer peer.Close()
	tr := NewStreamTransport(c, Limits{}).(*streamTransport)
	if tr.raw == nil {
		t.Fatal("a TCP connection without a raw socket")
	}
	var want bytes.Buffer
	var rest []byte
	for i := 0; rest == nil && i < 10000; i++ { // until the socket is full
		f := dataFrame(t, 8000, i)
		b, _ := appendFrame(nil, f)
		want.Write(b)
		handled, r, err := tr.trySend([]Frame{f})
		if !handled || err != nil {
			t.Fatalf("trySend: handled %v, %v", handled, err)
		}
		rest = r
	}
	if rest == nil {
		t.Fatal("the socket never filled")
	}
	got := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(peer, int64(want.Len())))
		got <- b
	}()
	if err := tr.writeRest(rest); err != nil {
		t.Fatal(err)
	}
	if b := <-got; !bytes.Equal(b, want.Bytes()) {
		t.Fatalf("read %d bytes, want the %d written, in order", len(b), want.Len())
	}
}

// TestTrySendVec: frames with large segments are written at once too,
// the segments from where they are (trySendVec), between small frames,
// until the socket is full: a batch it took part of comes back as a copy
// of the rest, one it took nothing of is left to the writer goroutine
// whole (handled false); the bytes written arrive complete and in order.
// Where the system has no such write, every such batch is left to the
// writer goroutine.
func TestTrySendVec(t *testing.T) {
	c, peer := tcpPair(t)
	defer c.Close()
	defer peer.Close()
	tr := NewStreamTransport(c, Limits{}).(*streamTransport)
	if !haveWritevNow {
		if handled, _, _ := tr.trySend([]Frame{dataFrame(t, 2*copyLimit, 1)}); handled {
			t.Fatal("trySend took a frame with a large segment without a vectored write")
		}
		return
	}
	var want bytes.Buffer
	var rests [][]byte
	full := false
	for i := 0; !full && i < 10000; i++ { // until the socket takes nothing
		batch := []Frame{dataFrame(t, 100, i), dataFrame(t, 3*copyLimit+8*i, i+1), dataFrame(t, 200, i+2)}
		handled, r, err := tr.trySend(batch)
		if err != nil {
			t.Fatalf("trySend of a batch with a large segment: %v", err)
		}
		if !handled {
			full = true // nothing of it written: the writer goroutine's
			continue
		}
		for _, f := range batch {
			b, _ := appendFrame(nil, f)
			want.Write(b)
		}
		if r != nil {
			rests = append(rests, r)
			break // the rest must go before anything else
		}
	}
	if !full && len(rests) == 0 {
		t.Fatal("the socket never filled")
	}
	got := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(peer, int64(want.Len())))
		got <- b
	}()
	for _, r := range rests {
		if err := tr.writeRest(r); err != nil {
			t.Fatal(err)
		}
	}
	if b := <-got; !bytes.Equal(b, want.Bytes()) {
		t.Fatalf("read %d bytes, want the %d written, in order", len(b), want.Len())
	}
}

// dataFrame is a frame of dataMessage's.
func dataFrame(t *testing.T, n, b int) Frame { return Frame{Msg: dataMessage(t, n, byte(b))} }

func TestConsume(t *testing.T) {
	vec := [][]byte{[]byte("ab"), []byte("cde"), []byte("f")}
	for n, want := range []string{"abcdef", "bcdef", "cdef", "def", "ef", "f", ""} {
		v := consume(slices.Clone(vec), n)
		if got := string(bytes.Join(v, nil)); got != want {
			t.Errorf("consume(%d) = %q, want %q", n, got, want)
		}
	}
}

// tcpPair is a connected pair of loopback TCP sockets.
func tcpPair(t *testing.T) (ours, peer net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	ours, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer = <-accepted
	if peer == nil {
		t.Fatal("accept failed")
	}
	return ours, peer
}
