package conn

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
	"github.com/asynkron/protoactor-go/actor"

	"github.com/vatactor/vatactor/conn/wire"
	"github.com/vatactor/vatactor/interop"
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
	fr, err := readFrame(newTestReader(peer), Limits{}.withDefaults())
	if err != nil {
		t.Fatalf("reading the Abort: %v", err)
	}
	m, _ := rpccp.ReadRootMessage(fr.Msg)
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
	_, err := readFrame(newTestReader(bytes.NewReader(hdr[:])), Limits{}.withDefaults())
	if !errors.Is(err, ErrTooManySegments) {
		t.Fatalf("err = %v, want ErrTooManySegments", err)
	}
}

func TestFrameRoundTrip(t *testing.T) {
	msg, m := newMessage()
	r, _ := m.NewRelease()
	r.SetId(7)
	r.SetReferenceCount(2)
	b, err := appendFrame(nil, Frame{Msg: msg})
	if err != nil {
		t.Fatal(err)
	}
	want, _ := msg.Marshal()
	if !bytes.Equal(b, want) {
		t.Fatalf("our framing differs from capnp's Marshal:\n%x\n%x", b, want)
	}
	got, err := readFrame(newTestReader(bytes.NewReader(b)), Limits{}.withDefaults())
	if err != nil {
		t.Fatal(err)
	}
	if got.Sidecar != nil {
		t.Fatalf("a frame without sidecar read back with one: %+v", got.Sidecar)
	}
	gm, _ := rpccp.ReadRootMessage(got.Msg)
	if d := DescribeMessage(gm); d != "release e7 ×2" {
		t.Fatalf("round trip: %q", d)
	}
}

// The sidecar is one extra last segment; its bytes are the ones the
// README documents, and it reads back apart from the message.
func TestSidecarBytes(t *testing.T) {
	msg, m := newMessage()
	f, _ := m.NewFinish()
	f.SetQuestionId(7)
	sc := &Sidecar{Features: ourFeatures, TraceParent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		TraceState: "vendor=1", ConnParent: "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01",
		Timeout: 1500 * time.Millisecond}
	b, err := appendFrame(nil, Frame{Msg: msg, Sidecar: sc})
	if err != nil {
		t.Fatal(err)
	}
	plain, _ := msg.Marshal()
	if got := binary.LittleEndian.Uint32(b); got != 1 {
		t.Fatalf("segment count-1 = %d, want 1 (message + sidecar)", got)
	}
	seg0 := binary.LittleEndian.Uint32(b[4:])
	if want := binary.LittleEndian.Uint32(plain[4:]); seg0 != want {
		t.Fatalf("segment 0 is %d words, want %d as without sidecar", seg0, want)
	}
	side := b[16+8*int(seg0):] // header (4 + 2×4 + 4 padding) then segment 0
	if len(side) != 8*int(binary.LittleEndian.Uint32(b[8:])) {
		t.Fatalf("sidecar segment size mismatch")
	}
	// Word 0: struct pointer, offset 0, 3 data words, 3 pointers.
	if got, want := binary.LittleEndian.Uint64(side), uint64(3)<<32|uint64(3)<<48; got != want {
		t.Fatalf("sidecar root pointer = %#x, want %#x", got, want)
	}
	if string(side[8:16]) != "VATACTOR" {
		t.Fatalf("magic bytes = %q, want VATACTOR", side[8:16])
	}
	if got := binary.LittleEndian.Uint64(side[16:]); got != 1 {
		t.Fatalf("features = %#x, want 1 (epitaphs)", got)
	}
	if got := binary.LittleEndian.Uint64(side[24:]); got != 1_500_000 {
		t.Fatalf("timeout = %d µs, want 1500000", got)
	}
	got, err := readFrame(newTestReader(bytes.NewReader(b)), Limits{}.withDefaults())
	if err != nil {
		t.Fatal(err)
	}
	if got.Sidecar == nil || *got.Sidecar != *sc {
		t.Fatalf("sidecar read back as %+v, want %+v", got.Sidecar, sc)
	}
	if got.Msg.NumSegments() != 1 {
		t.Fatalf("message has %d segments, want the sidecar stripped", got.Msg.NumSegments())
	}
}

// FuzzReadFrame: no input makes the frame reader or the describer panic,
// and nothing larger than the limit is allocated.
func FuzzReadFrame(f *testing.F) {
	msg, m := newMessage()
	c, _ := m.NewCall()
	c.SetQuestionId(1)
	seed, _ := appendFrame(nil, Frame{Msg: msg, Sidecar: &Sidecar{Features: ourFeatures, TraceState: "k=v"}})
	f.Add(seed)
	f.Add([]byte{0, 0, 0, 0, 1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		lim := Limits{MaxFrameSize: 1 << 16}.withDefaults()
		fr, err := readFrame(newTestReader(bytes.NewReader(data)), lim)
		if err != nil {
			return
		}
		if fr.finish.ok {
			// The fast path must agree with capnp's reading of the bytes
			// (a one-segment frame: 8 bytes of header).
			msg, err := capnp.Unmarshal(data[8 : 8+finishFrameBytes])
			if err != nil {
				t.Fatalf("fast Finish from bytes capnp rejects: %v", err)
			}
			m, _ := rpccp.ReadRootMessage(msg)
			f, err := m.Finish()
			if m.Which() != rpccp.Message_Which_finish || err != nil || f.QuestionId() != fr.finish.questionID ||
				f.ReleaseResultCaps() != fr.finish.releaseResultCaps {
				t.Fatalf("fast Finish %+v, capnp %s", fr.finish, DescribeMessage(m))
			}
			return
		}
		if m, err := rpccp.ReadRootMessage(fr.Msg); err == nil {
			_ = DescribeMessage(m)
		}
	})
}

// FuzzConnMessages: the connection actor survives any sequence of
// messages a peer can send, with an Echo server as its bootstrap (so that
// calls, pipelined calls on answers still running and Resolves reach
// local servers): it answers, or aborts with a reason; it never panics,
// hangs, or reaches the recover of a handler (errHandlerPanic: a bug).
// The input is a stream of framed messages.
func FuzzConnMessages(f *testing.F) {
	frames := func(fills ...func(rpccp.Message) error) []byte {
		var out []byte
		for _, fill := range fills {
			msg, m := newMessage()
			_ = fill(m)
			b, _ := msg.Marshal()
			out = append(out, b...)
		}
		return out
	}
	boot := func(m rpccp.Message) error { b, err := m.NewBootstrap(); b.SetQuestionId(0); return err }
	resolve := func(id, to uint32) func(rpccp.Message) error {
		return func(m rpccp.Message) error {
			r, err := m.NewResolve()
			r.SetPromiseId(id)
			d, _ := r.NewCap()
			d.SetSenderPromise(to)
			return err
		}
	}
	f.Add(frames(callImport(0, 1, "x")))
	f.Add(frames(boot, callImport(0, 1, "x")))
	f.Add(frames(func(m rpccp.Message) error { r, err := m.NewRelease(); r.SetId(0); r.SetReferenceCount(1); return err }))
	f.Add(frames(boot, callAnswer(0, 1, 6), callAnswer(1, 2, 0, 0), callAnswer(0, 3, 2), callAnswer(3, 4, 99, 0), callAnswer(3, 5, 0, 0, 0)))
	f.Add(frames(boot, callAnswer(0, 1, 2), callAnswer(1, 2, 2, 0), callAnswer(2, 3, 0, 0), func(m rpccp.Message) error {
		fin, err := m.NewFinish()
		fin.SetQuestionId(1)
		return err
	}))
	f.Add(frames(boot, resolve(7, 7), resolve(8, 7)))
	sys := actor.NewActorSystem(actor.WithLoggerFactory(quietLogger))
	defer sys.Shutdown()
	f.Fuzz(func(t *testing.T, data []byte) {
		dec := capnp.NewDecoder(bytes.NewReader(data))
		var msgs []*capnp.Message
		for len(msgs) < 64 {
			msg, err := dec.Decode()
			if err != nil {
				break
			}
			msgs = append(msgs, msg)
		}
		if len(msgs) == 0 {
			return
		}
		// A connection that does not end is a failure too: the fuzzer
		// keeps the input that hangs.
		watchdog := time.AfterFunc(20*time.Second, func() {
			buf := make([]byte, 1<<20)
			panic("the connection did not end:\n" + string(buf[:runtime.Stack(buf, true)]))
		})
		defer watchdog.Stop()
		a, b := newPipe()
		echo := capnp.Client(interop.NewEchoServer().Client(interop.PlainServer))
		defer echo.Release()
		c := Spawn(sys.Root, sys.Root, a, Options{Bootstrap: echo,
			Logger:        slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelDebug})),
			LingerTimeout: time.Millisecond})
		go func() {
			for {
				if _, err := b.RecvFrame(); err != nil {
					return
				}
			}
		}()
		for _, msg := range msgs {
			if err := b.SendFrames([]Frame{{Msg: msg}}); err != nil {
				break
			}
		}
		if len(data)%2 == 0 {
			_ = b.CloseWrite() // the peer's EOF, or our Close: both ends
		}
		c.Close()
		b.Close()
		if err := c.Err(); errors.Is(err, errHandlerPanic) {
			t.Fatalf("a handler panicked: %v", err)
		}
	})
}

// captureConn is a net.Conn that keeps everything written to it.
type captureConn struct {
	net.Conn
	out bytes.Buffer
}

func (c *captureConn) Write(p []byte) (int, error) { return c.out.Write(p) }

// TestSendFramesVectored: large segments go out uncopied (writev) between
// copied small frames, and everything reads back in order, intact.
func TestSendFramesVectored(t *testing.T) {
	payload := func(n int, b byte) *capnp.Message { return dataMessage(t, n, b) }
	frames := []Frame{
		{Msg: payload(10, 'a')},
		{Msg: payload(3*copyLimit, 'b')},
		{Msg: payload(20, 'c'), Sidecar: &Sidecar{Features: ourFeatures, TraceParent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}},
		{Msg: payload(copyLimit+8, 'd'), Sidecar: &Sidecar{Features: ourFeatures}},
		{Msg: payload(30, 'e')},
	}
	out := &captureConn{}
	tr := NewStreamTransport(out, Limits{}).(*streamTransport)
	for round := range 2 { // the second round reuses the buffers
		out.out.Reset()
		if err := tr.SendFrames(frames); err != nil {
			t.Fatal(err)
		}
		r := newTestReader(bytes.NewReader(out.out.Bytes()))
		for i, want := range frames {
			got, err := readFrame(r, Limits{}.withDefaults())
			if err != nil {
				t.Fatalf("round %d frame %d: %v", round, i, err)
			}
			p, err := got.Msg.Root()
			if err != nil {
				t.Fatal(err)
			}
			wp, _ := want.Msg.Root()
			if !bytes.Equal(p.Data(), wp.Data()) {
				t.Fatalf("round %d frame %d: %d bytes back, sent %d", round, i, len(p.Data()), len(wp.Data()))
			}
			if (got.Sidecar == nil) != (want.Sidecar == nil) || got.Sidecar != nil && got.Sidecar.TraceParent != want.Sidecar.TraceParent {
				t.Fatalf("round %d frame %d: sidecar %+v, sent %+v", round, i, got.Sidecar, want.Sidecar)
			}
		}
		if _, err := readFrame(r, Limits{}.withDefaults()); err != io.EOF {
			t.Fatalf("after the frames: %v, want EOF", err)
		}
	}
}

func newTestReader(r io.Reader) *frameReader {
	return newFrameReader(r, 8+4*DefaultMaxSegments)
}

// capnpSidecar encodes s with capnp's own encoder: the reference for
// appendSidecar.
func capnpSidecar(t testing.TB, s *Sidecar) []byte {
	msg, seg := capnp.NewSingleSegmentMessage(nil)
	sc, err := wire.NewRootSidecar(seg)
	if err != nil {
		t.Fatal(err)
	}
	sc.SetMagic(wire.SidecarMagic)
	sc.SetFeatures(s.Features)
	for _, set := range []struct {
		v   string
		set func(string) error
	}{{s.TraceParent, sc.SetTraceparent}, {s.TraceState, sc.SetTracestate}, {s.ConnParent, sc.SetConn}} {
		if set.v != "" {
			if err := set.set(set.v); err != nil {
				t.Fatal(err)
			}
		}
	}
	seg0, _ := msg.Segment(0)
	return seg0.Data()
}

// TestSidecarEncoding: the hand-written encoder writes the bytes capnp's
// encoder writes, and both decoders read them the same.
func TestSidecarEncoding(t *testing.T) {
	for _, s := range []*Sidecar{
		{Features: ourFeatures},
		{Features: ourFeatures, TraceParent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
		{Features: 5, TraceState: "k=v", ConnParent: "x"},
		{Features: ourFeatures, TraceParent: "1234567", TraceState: "12345678", ConnParent: "123456789"},
	} {
		got, want := appendSidecar(nil, s), capnpSidecar(t, s)
		if !bytes.Equal(got, want) {
			t.Fatalf("%+v:\n got  %x\n want %x", s, got, want)
		}
		fast, ok := decodeOurSidecar(got)
		if !ok || *fast != *s {
			t.Fatalf("fast decode of %+v: %+v, %v", s, fast, ok)
		}
	}
}

// FuzzSidecar: wherever the fast decoder accepts a segment, capnp's
// decoder reads the same sidecar from it.
func FuzzSidecar(f *testing.F) {
	f.Add(appendSidecar(nil, &Sidecar{Features: 1, TraceParent: "tp", TraceState: "ts", ConnParent: "c"}))
	f.Add(appendSidecar(nil, &Sidecar{Features: 1}))
	f.Fuzz(func(t *testing.T, seg []byte) {
		fast, ok := decodeOurSidecar(seg)
		if !ok {
			return
		}
		msg, _ := capnp.NewMultiSegmentMessage([][]byte{seg})
		sc, err := wire.ReadRootSidecar(msg)
		if err != nil {
			t.Fatalf("fast decoder accepted what capnp rejects: %v", err)
		}
		tp, _ := sc.Traceparent()
		ts, _ := sc.Tracestate()
		cp, _ := sc.Conn()
		if want := (Sidecar{Features: sc.Features(), Timeout: micros(sc.Timeout()), TraceParent: tp, TraceState: ts, ConnParent: cp}); *fast != want {
			t.Fatalf("fast %+v, capnp %+v", *fast, want)
		}
	})
}

// TestFinishFrame: a Finish is read from its bytes without a message, the
// same as capnp reads it, for every flag combination; anything else
// takes the general path.
func TestFinishFrame(t *testing.T) {
	for _, qid := range []uint32{0, 7, 1<<32 - 1} {
		for _, release := range []bool{false, true} {
			for _, workaround := range []bool{false, true} {
				msg, m := newMessage()
				f, _ := m.NewFinish()
				f.SetQuestionId(qid)
				f.SetReleaseResultCaps(release)
				f.SetRequireEarlyCancellationWorkaround(workaround)
				b, err := appendFrame(nil, Frame{Msg: msg})
				if err != nil {
					t.Fatal(err)
				}
				got, err := readFrame(newTestReader(bytes.NewReader(b)), Limits{}.withDefaults())
				if err != nil {
					t.Fatal(err)
				}
				want := finishFrame{questionID: qid, releaseResultCaps: release, ok: true}
				if got.Msg != nil || got.finish != want {
					t.Fatalf("finish q%d release=%v workaround=%v read as %+v (msg %v)", qid, release, workaround, got.finish, got.Msg != nil)
				}
				if back := got.finish.post().frame(); back != want {
					t.Fatalf("finish %+v posted and read back as %+v", want, back)
				}
			}
		}
	}
	// A Release of the same size is a message like any other.
	msg, m := newMessage()
	rel, _ := m.NewRelease()
	rel.SetId(3)
	b, _ := appendFrame(nil, Frame{Msg: msg})
	got, err := readFrame(newTestReader(bytes.NewReader(b)), Limits{}.withDefaults())
	if err != nil || got.finish.ok || got.Msg == nil {
		t.Fatalf("release read as %+v, %v", got, err)
	}
}

// TestLargeFrameBuffersReused: a received frame of 1 MiB goes into a
// pooled buffer that its message gives back when released, so reading
// and releasing many allocates far less than their bytes.
func TestLargeFrameBuffersReused(t *testing.T) {
	msg, seg := capnp.NewSingleSegmentMessage(nil)
	data, _ := capnp.NewData(seg, make([]byte, 1<<20))
	_ = msg.SetRoot(data.ToPtr())
	frame, err := appendFrame(nil, Frame{Msg: msg})
	if err != nil {
		t.Fatal(err)
	}
	const n = 100
	stream := bytes.Repeat(frame, n)
	r := newFrameReader(bytes.NewReader(stream), 8+4*DefaultMaxSegments)
	lim := Limits{}.withDefaults()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range n {
		f, err := readFrame(r, lim)
		if err != nil {
			t.Fatal(err)
		}
		p, err := f.Msg.Root()
		if err != nil || len(p.Data()) != 1<<20 {
			t.Fatalf("frame: %v, %d bytes", err, len(p.Data()))
		}
		f.Msg.Release()
	}
	runtime.ReadMemStats(&after)
	if raceOn {
		t.Log("under the race detector sync.Pool drops buffers on purpose: reuse not measured")
		return
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > n<<20/4 {
		t.Errorf("reading %d frames of 1 MiB allocated %d MiB: the buffers are not reused", n, got>>20)
	} else {
		t.Logf("%d frames of 1 MiB: %.1f MiB allocated", n, float64(got)/(1<<20))
	}
}

// TestReceivedFramesReuseTheirArenas: a released small frame's buffer and
// arena go back to their pools, and the next frame read into them is its
// own message, whole, counted with its pooled buffer's size.
func TestReceivedFramesReuseTheirArenas(t *testing.T) {
	frameOf := func(id uint32) []byte {
		msg, m := newMessage()
		rel, _ := m.NewRelease()
		rel.SetId(id)
		rel.SetReferenceCount(id + 1)
		b, err := appendFrame(nil, Frame{Msg: msg})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for id := uint32(1); id <= 50; id++ {
		f, err := readFrame(newTestReader(bytes.NewReader(frameOf(id))), Limits{}.withDefaults())
		if err != nil {
			t.Fatal(err)
		}
		rm, err := rpccp.ReadRootMessage(f.Msg)
		if err != nil {
			t.Fatalf("frame %d: %v", id, err)
		}
		rel, err := rm.Release()
		if err != nil || rel.Id() != id || rel.ReferenceCount() != id+1 {
			t.Fatalf("frame %d read as release %d ×%d (%v)", id, rel.Id(), rel.ReferenceCount(), err)
		}
		size, _ := f.Msg.TotalSize()
		if held := heldBytes(f.Msg); held < int(size) || held&(held-1) != 0 {
			t.Fatalf("frame %d of %d bytes holds %d (want its buffer: a power of two, at least the frame)", id, size, held)
		}
		f.Msg.Release()
	}
}

// TestSidecarOtherLayouts: a sidecar laid out otherwise than ours (a
// later version's, with a field more) is read through capnp's decoder,
// fields and all; a malformed one is a malformed frame.
func TestSidecarOtherLayouts(t *testing.T) {
	const dataWords, ptrWords = 4, 3 // one data word more than ours
	word := func(b []byte, v uint64) []byte { return binary.LittleEndian.AppendUint64(b, v) }
	seg := word(nil, uint64(dataWords)<<32|uint64(ptrWords)<<48)
	seg = word(seg, wire.SidecarMagic)
	seg = word(seg, 1<<wire.Feature_epitaphs)
	seg = word(seg, 2500) // timeout, µs
	seg = word(seg, 0xfeed)
	// traceparent: a text of 3 bytes ("tp" and NUL) right after the pointers
	const listKind, byteElems = 1, 2
	seg = word(seg, listKind|2<<2|byteElems<<32|3<<35)
	seg = word(seg, 0)
	seg = word(seg, 0)
	seg = append(seg, 't', 'p', 0, 0, 0, 0, 0, 0)
	if !isSidecar(seg) {
		t.Fatal("not recognised as a sidecar")
	}
	if _, ok := decodeOurSidecar(seg); ok {
		t.Fatal("the fast decoder took another layout")
	}
	sc, err := decodeSidecar(seg, Limits{}.withDefaults())
	if err != nil {
		t.Fatal(err)
	}
	if want := (Sidecar{Features: 1 << wire.Feature_epitaphs, Timeout: 2500 * time.Microsecond, TraceParent: "tp"}); *sc != want {
		t.Fatalf("read %+v, want %+v", *sc, want)
	}

	bad := append([]byte(nil), seg[:len(seg)-8]...) // the text's bytes cut off
	if _, err := decodeSidecar(bad, Limits{}.withDefaults()); !errors.Is(err, ErrMalformedFrame) {
		t.Fatalf("a sidecar whose text is cut off: %v, want ErrMalformedFrame", err)
	}
}

// TestBodyPool: buffers by powers of two from the smallest bucket up; a
// size past the largest is allocated as asked; what is put back comes
// out again as it went in (not zeroed: readBody overwrites what it uses).
func TestBodyPool(t *testing.T) {
	p := newBodyPool(64, 11) // 64 B … 1 KiB
	for _, c := range []struct{ size, cap int }{{1, 64}, {64, 64}, {65, 128}, {1000, 1024}, {1024, 1024}, {1025, 1025}} {
		if b := p.Get(c.size); len(b) != c.size || cap(b) != c.cap {
			t.Errorf("Get(%d): len %d cap %d, want cap %d", c.size, len(b), cap(b), c.cap)
		}
	}
	for range 100 { // sync.Pool may drop a Put (the race detector does, one in four)
		b := p.Get(200)
		b[0] = 42
		p.Put(b)
		if c := p.Get(256); c[0] == 42 {
			return
		}
	}
	t.Error("a buffer put back never came out again")
}

// dataMessage is a message whose root is n bytes of b, as Data.
func dataMessage(t testing.TB, n int, b byte) *capnp.Message {
	t.Helper()
	msg, seg := capnp.NewSingleSegmentMessage(nil)
	data, err := capnp.NewData(seg, bytes.Repeat([]byte{b}, n))
	if err != nil {
		t.Fatal(err)
	}
	if err := msg.SetRoot(data.ToPtr()); err != nil {
		t.Fatal(err)
	}
	return msg
}
