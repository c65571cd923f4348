package conn

import (
	"encoding/binary"
	"fmt"
	"io"
	"math/bits"
	"net"
	"slices"
	"sync"
	"time"
	"unicode/utf8"

	"capnproto.org/go/capnp/v3"
	"github.com/colega/zeropool"

	"github.com/vatactor/vatactor/conn/core"
)

// Limits bound what a peer can make us read and hold: the budget of one
// connection. Zero fields take the defaults. Past a budget the connection
// either applies backpressure (MaxSendQueue) or ends with a typed reason,
// never grows: memory follows the bytes a peer actually sends, not the
// sizes it declares.
type Limits struct {
	// MaxFrameSize is the largest frame accepted, header included; a
	// larger one ends the connection (ProtocolError wrapping
	// ErrFrameTooLarge). The buffer of a frame grows as its bytes arrive.
	// Default 64 MiB.
	MaxFrameSize uint64
	// MaxSegments is the most segments one frame may declare. Default 512.
	MaxSegments int
	// TraverseLimit bounds the bytes a message may make us traverse
	// (amplification attacks). Default: 8 × MaxFrameSize.
	TraverseLimit uint64
	// DepthLimit bounds pointer nesting. Default 64.
	DepthLimit uint
	// FrameTimeout bounds how long a frame may take to arrive once its
	// first bytes have: a peer that sends a frame one byte at a time, or
	// stops halfway, ends with TransportError wrapping ErrFrameTimeout.
	// Between frames there is no limit (see Options.IdleTimeout).
	// Default 30s.
	FrameTimeout time.Duration

	// MaxSendQueue bounds the bytes queued for the peer and not yet
	// written. Past it the connection stops reading the peer's frames
	// (so it admits none of its calls), and local calls wait in Send
	// (within their context), until the queue has drained to half; the
	// socket's writes meanwhile are bounded by
	// Options.WriteTimeout: a peer that takes nothing for that long ends
	// the connection with TransportError wrapping ErrPeerNotReading.
	// Default 16 MiB.
	MaxSendQueue int64
	// MaxRecvQueue bounds the bytes of the peer's frames read and not yet
	// handled by the connection (waiting in its mailbox while it handles
	// others). Past it the connection reads nothing more from the peer
	// until it has handled them down to half, so a peer that sends faster
	// than the connection handles its messages makes it hold at most this
	// much of them; the peer's own writes then wait in its socket.
	// Default 16 MiB.
	MaxRecvQueue int64
	// MaxHeldAnswers bounds the peer's calls and bootstraps we hold, from
	// their arrival to their Finish (running, or returned and waiting for
	// the Finish). Past it the connection ends with ProtocolError wrapping
	// ErrBudgetExceeded. Options.MaxAnswers, lower, bounds those running.
	// Default 32768.
	MaxHeldAnswers int
	// MaxCallBytes bounds the bytes of the peer's calls running (their
	// Call messages, held from arrival to Return); a call that would go
	// past it is answered "overloaded", as one past Options.MaxAnswers.
	// Default 64 MiB.
	MaxCallBytes int64
	// MaxAnswerBytes bounds the bytes of results held for the peer until
	// its Finish; past it the connection ends with ProtocolError wrapping
	// ErrBudgetExceeded. Default 64 MiB.
	MaxAnswerBytes int64
	// MaxCapsPerMessage bounds the capability descriptors of one message;
	// a message with more ends the connection with ProtocolError wrapping
	// ErrBudgetExceeded. Default 4096.
	MaxCapsPerMessage int
	// MaxImports bounds the capabilities imported from the peer at once;
	// past it the connection ends with ProtocolError wrapping
	// ErrBudgetExceeded. Default 65536.
	MaxImports int
	// MaxUnimplementedEcho bounds a message we do not implement that we
	// echo back in an Unimplemented (as much as copying it may read); a
	// larger one ends the connection with ProtocolError wrapping
	// ErrBudgetExceeded. Default 64 KiB.
	MaxUnimplementedEcho uint64
	// MaxReasonLength bounds the texts a peer sends that we keep, log and
	// hand to callers (Abort reasons, exception reasons): longer ones are
	// cut. Default 1024 bytes.
	MaxReasonLength int
}

// Default limits.
const (
	DefaultMaxFrameSize         = 64 << 20
	DefaultMaxSegments          = 512
	DefaultDepthLimit           = 64
	DefaultFrameTimeout         = 30 * time.Second
	DefaultMaxSendQueue         = 16 << 20
	DefaultMaxRecvQueue         = 16 << 20
	DefaultMaxHeldAnswers       = core.DefaultMaxHeldAnswers
	DefaultMaxCallBytes         = core.DefaultMaxCallBytes
	DefaultMaxAnswerBytes       = core.DefaultMaxAnswerBytes
	DefaultMaxCapsPerMessage    = core.DefaultMaxCapsPerMessage
	DefaultMaxImports           = core.DefaultMaxImports
	DefaultMaxUnimplementedEcho = core.DefaultMaxUnimplementedEcho
	DefaultMaxReasonLength      = core.DefaultMaxReasonLength
)

func (l Limits) withDefaults() Limits {
	orDefault(&l.MaxFrameSize, DefaultMaxFrameSize)
	orDefault(&l.MaxSegments, DefaultMaxSegments)
	orDefault(&l.TraverseLimit, 8*l.MaxFrameSize)
	orDefault(&l.DepthLimit, DefaultDepthLimit)
	orDefault(&l.FrameTimeout, DefaultFrameTimeout)
	orDefault(&l.MaxSendQueue, DefaultMaxSendQueue)
	orDefault(&l.MaxRecvQueue, DefaultMaxRecvQueue)
	orDefault(&l.MaxHeldAnswers, DefaultMaxHeldAnswers)
	orDefault(&l.MaxCallBytes, DefaultMaxCallBytes)
	orDefault(&l.MaxAnswerBytes, DefaultMaxAnswerBytes)
	orDefault(&l.MaxCapsPerMessage, DefaultMaxCapsPerMessage)
	orDefault(&l.MaxImports, DefaultMaxImports)
	orDefault(&l.MaxUnimplementedEcho, DefaultMaxUnimplementedEcho)
	orDefault(&l.MaxReasonLength, DefaultMaxReasonLength)
	return l
}

// clip cuts a text the peer sent to at most n bytes (on a UTF-8
// boundary), saying how long it was.
func clip(b []byte, n int) string {
	if len(b) <= n {
		return string(b)
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(b[cut]) {
		cut--
	}
	return fmt.Sprintf("%s… (%d bytes, cut)", b[:cut], len(b))
}

// readFrame reads one standard stream frame (segment table, then segments)
// and returns the message in it, without its sidecar segment if it has one.
// It never allocates more than the frame's declared size, and only after
// checking that size against lim. The segment table is read in place from
// r's buffer; a frame costs one allocation for its bytes and, for the
// usual one-segment message, two for the message itself.
func readFrame(r *frameReader, lim Limits) (Frame, error) {
	hdr, err := r.Peek(4)
	if err != nil {
		if err == io.EOF && len(hdr) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return Frame{}, err // io.EOF here is a clean end between frames
	}
	nseg := uint64(binary.LittleEndian.Uint32(hdr)) + 1
	if nseg > uint64(lim.MaxSegments) {
		return Frame{}, frameErrorf(ErrTooManySegments, "declared %d segments, limit %d", nseg, lim.MaxSegments)
	}
	tableLen := nseg * 4
	if nseg%2 == 0 {
		tableLen += 4 // padding to a word boundary
	}
	if int(4+tableLen) > r.Size() {
		return Frame{}, frameErrorf(ErrTooManySegments, "segment table of %d bytes does not fit the %d-byte read buffer", tableLen, r.Size())
	}
	head, err := r.Peek(int(4 + tableLen))
	if err != nil {
		return Frame{}, unexpectedEOF(err)
	}
	table := head[4:]
	total := 4 + tableLen
	var sizesBuf [4]uint64 // the usual frames' sizes stay on the stack
	sizes := sizesBuf[:0]
	if nseg > uint64(len(sizesBuf)) {
		sizes = make([]uint64, 0, nseg)
	}
	for i := range nseg {
		size := uint64(binary.LittleEndian.Uint32(table[i*4:])) * 8
		sizes = append(sizes, size)
		total += size
		if total > lim.MaxFrameSize {
			return Frame{}, frameErrorf(ErrFrameTooLarge, "frame of at least %d bytes, limit %d", total, lim.MaxFrameSize)
		}
	}
	size0 := sizes[0]
	if nseg == 1 && size0 == finishFrameBytes {
		if whole, err := r.Peek(int(4+tableLen) + finishFrameBytes); err == nil {
			if fin := decodeFinishFrame(whole[4+tableLen:]); fin.ok {
				r.Discard(len(whole))
				return Frame{finish: fin}, nil
			}
		}
	}
	r.Discard(int(4 + tableLen))
	body, err := readBody(r, int(total-4-tableLen))
	if err != nil {
		return Frame{}, unexpectedEOF(err)
	}
	if size0 == 0 {
		return Frame{}, frameErrorf(ErrMalformedFrame, "empty first segment")
	}
	var f Frame
	switch {
	case nseg == 1:
		f.Msg = receivedSingle(body, body)
	case nseg == 2 && isSidecar(body[size0:]):
		sc, err := decodeSidecar(body[size0:], lim)
		if err != nil {
			putBody(body)
			return Frame{}, err
		}
		f.Sidecar = sc
		f.Msg = receivedSingle(body[:size0:size0], body)
	default:
		segs := make([][]byte, nseg)
		off := uint64(0)
		for i, sz := range sizes {
			segs[i] = body[off : off+sz : off+sz]
			off += sz
		}
		if last := segs[len(segs)-1]; isSidecar(last) {
			sc, err := decodeSidecar(last, lim)
			if err != nil {
				putBody(body)
				return Frame{}, err
			}
			f.Sidecar = sc
			segs = segs[:len(segs)-1]
		}
		f.Msg = receivedMessage(capnp.MultiSegment(segs), body)
	}
	f.Msg.TraverseLimit = lim.TraverseLimit
	f.Msg.DepthLimit = lim.DepthLimit
	return f, nil
}

// firstBodyChunk is the most a frame's buffer starts with; each time it
// fills, it grows bodyGrowth times, up to the frame's size. (Doubling
// from 64 KiB cost a 1 MiB echo 40 % of its calls per second: twice the
// bytes allocated and zeroed, and copied.)
const (
	firstBodyChunk = 256 << 10
	bodyGrowth     = 4
)

// readBody reads a frame's n bytes of segments into a buffer that grows
// as they arrive: a peer that declares a large frame and sends little
// costs what it sent (at most 2 × bodyGrowth times, and firstBodyChunk at
// least), not what it declared.
func readBody(r io.Reader, n int) ([]byte, error) {
	if n < minPooledBody {
		body := smallBodies.Get(n)
		if _, err := io.ReadFull(r, body); err != nil {
			smallBodies.Put(body)
			return nil, err
		}
		return body, nil
	}
	if n <= firstBodyChunk {
		body := recvBodies.Get(n)
		if _, err := io.ReadFull(r, body); err != nil {
			recvBodies.Put(body)
			return nil, err
		}
		return body, nil
	}
	body := recvBodies.Get(firstBodyChunk)[:0]
	for len(body) < n {
		if len(body) == cap(body) {
			next := bodyGrowth * cap(body)
			if 2*next > n {
				next = n // the last step: straight to the frame's size
			}
			grown := recvBodies.Get(next)[:len(body)]
			copy(grown, body)
			recvBodies.Put(body)
			body = grown
		}
		want := min(cap(body), n) // a pooled buffer may be larger than the frame
		k, err := r.Read(body[len(body):want])
		body = body[:len(body)+k]
		if err != nil && len(body) < n {
			recvBodies.Put(body)
			return nil, err
		}
	}
	return body, nil
}

// The buffers of received frames, reused once the message read into one
// is released (recvArena, recvSingle), by powers of two: recvBodies from
// minPooledBody (8 KiB) up to the largest frame, smallBodies below it
// (from 64 bytes: a held message's memory is at most twice its size, and
// the budgets count it so, see heldBytes). A pool drops what the
// collector reclaims, so an idle connection holds none.
var (
	recvBodies  = newBodyPool(minPooledBody, pooledBucketCount)
	smallBodies = newBodyPool(64, 13)
)

// bodyPool is a pool of buffers by powers of two, as capnp's bufferpool,
// without its zeroing of every buffer put back: a frame's body is read in
// full (readBody) before a message is read from it, and its segments are
// slices of those bytes, so what an earlier frame left in a buffer is
// overwritten or out of every segment's reach. (The zeroing of a 1 MiB
// echo's two received bodies was 5 % of its CPU.)
type bodyPool struct {
	minBucket int
	buckets   []zeropool.Pool[[]byte] // buckets[i]: buffers of 1<<i bytes
}

// newBodyPool makes a pool of bucketCount buckets, as bufferpool.NewPool:
// the last holds buffers of 1<<(bucketCount-1) bytes.
func newBodyPool(minSize, bucketCount int) *bodyPool {
	p := &bodyPool{minBucket: bits.Len(uint(minSize - 1)), buckets: make([]zeropool.Pool[[]byte], bucketCount)}
	for i := p.minBucket; i < bucketCount; i++ {
		p.buckets[i] = zeropool.New(func() []byte { return make([]byte, 1<<i) })
	}
	return p
}

// Get returns a buffer of length size, its capacity the power of two
// above; one larger than the largest bucket is allocated.
func (p *bodyPool) Get(size int) []byte {
	i := max(bits.Len(uint(size-1)), p.minBucket) // 1<<i >= size
	if size <= 0 || i >= len(p.buckets) {
		return make([]byte, size)
	}
	return p.buckets[i].Get()[:size]
}

// Put gives back a buffer that Get returned; its contents stay.
func (p *bodyPool) Put(b []byte) {
	i := bits.Len(uint(cap(b))) - 1 // 1<<i <= cap(b)
	if i < p.minBucket || i >= len(p.buckets) {
		return
	}
	p.buckets[i].Put(b[:1<<i])
}

const minPooledBody = 8 << 10

// putBody gives a frame's buffer back to its pool.
func putBody(body []byte) {
	if cap(body) < minPooledBody {
		smallBodies.Put(body)
		return
	}
	recvBodies.Put(body)
}

// heldBytes is the memory a received message holds: its pooled buffer's
// (rounded up to a power of two), else its size. The budgets of what a
// peer makes the connection hold (MaxCallBytes) count this.
func heldBytes(msg *capnp.Message) int {
	switch a := msg.Arena.(type) {
	case *recvSingle:
		return cap(a.body)
	case *recvArena:
		return cap(a.body)
	}
	size, _ := msg.TotalSize()
	return int(size)
}

// recvArena is the arena of a received message of several segments:
// they are slices of one pooled body, given back when the message is
// released. What a reader took out of the message (a Data's bytes) is
// valid until then, as with go-capnp's own messages.
type recvArena struct {
	capnp.Arena
	body []byte
}

func (a *recvArena) Release() {
	a.Arena.Release()
	if a.body != nil {
		putBody(a.body)
		a.body = nil
	}
}

// recvSingle is the arena of a received message of one segment, a slice
// of its pooled body: like recvArena, and itself reused (recvSingles),
// so that a received frame costs the Message alone.
type recvSingle struct {
	capnp.ReadOnlySingleSegment
	body []byte
}

var recvSingles = sync.Pool{New: func() any { return new(recvSingle) }}

func (a *recvSingle) Release() {
	a.ReadOnlySingleSegment.Release()
	a.Segment(0).BindTo(nil) // its next message binds it anew
	if a.body != nil {
		putBody(a.body)
		a.body = nil
		recvSingles.Put(a)
	}
}

// receivedSingle makes the message of a received frame whose one segment
// is seg, a slice of body.
func receivedSingle(seg, body []byte) *capnp.Message {
	a := recvSingles.Get().(*recvSingle)
	a.ReplaceData(seg)
	a.body = body
	msg, _, _ := capnp.NewMessage(a)
	return msg
}

// receivedMessage makes the message of a received frame of several
// segments over arena, whose segments are slices of body.
func receivedMessage(arena capnp.Arena, body []byte) *capnp.Message {
	msg, _, _ := capnp.NewMessage(&recvArena{Arena: arena, body: body})
	return msg
}

func unexpectedEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// appendFrame appends f in stream framing to dst: the message's segments,
// then the sidecar segment if f has one.
func appendFrame(dst []byte, f Frame) ([]byte, error) {
	var table [8][]byte
	segs, err := frameSegments(table[:0], f, nil)
	if err != nil {
		return dst, err
	}
	return appendSegments(dst, segs), nil
}

// frameSegments appends to segs the segments f is framed as. The sidecar
// segment is written into *scratch (reused: the caller copies it before
// the next call) or, with scratch nil, into new memory.
func frameSegments(segs [][]byte, f Frame, scratch *[]byte) ([][]byte, error) {
	n := f.Msg.NumSegments()
	for i := int64(0); i < n; i++ {
		s, err := f.Msg.Segment(capnp.SegmentID(i))
		if err != nil {
			return segs, err
		}
		segs = append(segs, s.Data())
	}
	if f.Sidecar != nil {
		if scratch == nil {
			scratch = new([]byte)
		}
		*scratch = appendSidecar((*scratch)[:0], f.Sidecar)
		segs = append(segs, *scratch)
	}
	return segs, nil
}

// appendFrameVec is appendFrame for a vectored write (the sidecar is
// always small, so copied: scratch is reused): segments larger
// than copyLimit are not copied into buf but added to vec after the part
// of buf before them (buf[mark:]); it returns the new buf, vec and mark.
func appendFrameVec(buf []byte, vec net.Buffers, mark int, f Frame, scratch *[]byte) ([]byte, net.Buffers, int, error) {
	var table [8][]byte
	segs, err := frameSegments(table[:0], f, scratch)
	if err != nil {
		return buf, vec, mark, err
	}
	if !slices.ContainsFunc(segs, func(s []byte) bool { return len(s) > copyLimit }) {
		return appendSegments(buf, segs), vec, mark, nil
	}
	buf = appendSegmentTable(buf, segs)
	for _, s := range segs {
		if len(s) <= copyLimit {
			buf = append(buf, s...)
			continue
		}
		// Hand vec only what is final, and go on in the rest of the
		// buffer: appends never touch what vec holds.
		vec = append(vec, buf[mark:], s)
		buf = buf[len(buf):]
		mark = 0
	}
	return buf, vec, mark, nil
}

// appendSegments appends a frame holding segs to dst.
func appendSegments(dst []byte, segs [][]byte) []byte {
	dst = appendSegmentTable(dst, segs)
	for _, s := range segs {
		dst = append(dst, s...)
	}
	return dst
}

// appendSegmentTable appends the segment table of a frame holding segs.
func appendSegmentTable(dst []byte, segs [][]byte) []byte {
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(segs)-1))
	for _, s := range segs {
		dst = binary.LittleEndian.AppendUint32(dst, uint32(len(s)/8))
	}
	if len(segs)%2 == 0 {
		dst = append(dst, 0, 0, 0, 0)
	}
	return dst
}
