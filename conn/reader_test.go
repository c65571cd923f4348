package conn

import (
	"bytes"
	"io"
	"testing"
	"testing/iotest"

	"capnproto.org/go/capnp/v3"
)

// TestFrameReader: frames read back intact however the bytes trickle in
// (one at a time, with the error on the last read, in halves), and the
// reader holds no buffer between frames.
func TestFrameReader(t *testing.T) {
	var stream []byte
	var want [][]byte
	for i, n := range []int{1, 700, 3, 9000, 40} {
		msg, seg := capnp.NewSingleSegmentMessage(nil)
		data, err := capnp.NewData(seg, bytes.Repeat([]byte{byte('a' + i)}, n))
		if err != nil {
			t.Fatal(err)
		}
		_ = msg.SetRoot(data.ToPtr())
		var sc *Sidecar
		if i%2 == 1 {
			sc = &Sidecar{Features: ourFeatures, TraceState: "k=v"}
		}
		if stream, err = appendFrame(stream, Frame{Msg: msg, Sidecar: sc}); err != nil {
			t.Fatal(err)
		}
		want = append(want, bytes.Repeat([]byte{byte('a' + i)}, n))
	}
	for name, wrap := range map[string]func(io.Reader) io.Reader{
		"whole":      func(r io.Reader) io.Reader { return r },
		"one byte":   iotest.OneByteReader,
		"half":       iotest.HalfReader,
		"data + EOF": iotest.DataErrReader,
	} {
		r := newTestReader(wrap(bytes.NewReader(stream)))
		for i, w := range want {
			f, err := readFrame(r, Limits{}.withDefaults())
			if err != nil {
				t.Fatalf("%s: frame %d: %v", name, i, err)
			}
			p, _ := f.Msg.Root()
			if !bytes.Equal(p.Data(), w) {
				t.Fatalf("%s: frame %d: %d bytes back, sent %d", name, i, len(p.Data()), len(w))
			}
		}
		if _, err := readFrame(r, Limits{}.withDefaults()); err != io.EOF {
			t.Fatalf("%s: after the last frame: %v, want io.EOF", name, err)
		}
		if r.buf != nil {
			t.Fatalf("%s: the reader kept its buffer with nothing in it", name)
		}
	}
}
