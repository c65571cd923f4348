package conn

import (
	"encoding/binary"
	"io"
	"net"
	"slices"

	"capnproto.org/go/capnp/v3"
)

// Limits bound what a peer can make us read. Zero fields take the defaults.
type Limits struct {
	// MaxFrameSize is the largest frame accepted, header included.
	// Default 64 MiB.
	MaxFrameSize uint64
	// MaxSegments is the most segments one frame may declare. Default 512.
	MaxSegments int
	// TraverseLimit bounds the bytes a message may make us traverse
	// (amplification attacks). Default: 8 × MaxFrameSize.
	TraverseLimit uint64
	// DepthLimit bounds pointer nesting. Default 64.
	DepthLimit uint
}

// Default limits.
const (
	DefaultMaxFrameSize = 64 << 20
	DefaultMaxSegments  = 512
	DefaultDepthLimit   = 64
)

func (l Limits) withDefaults() Limits {
	if l.MaxFrameSize == 0 {
		l.MaxFrameSize = DefaultMaxFrameSize
	}
	if l.MaxSegments == 0 {
		l.MaxSegments = DefaultMaxSegments
	}
	if l.TraverseLimit == 0 {
		l.TraverseLimit = 8 * l.MaxFrameSize
	}
	if l.DepthLimit == 0 {
		l.DepthLimit = DefaultDepthLimit
	}
	return l
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
	body := make([]byte, total-4-tableLen)
	if _, err := io.ReadFull(r, body); err != nil {
		return Frame{}, unexpectedEOF(err)
	}
	if size0 == 0 {
		return Frame{}, frameErrorf(ErrMalformedFrame, "empty first segment")
	}
	var f Frame
	switch {
	case nseg == 1:
		f.Msg, _ = capnp.NewSingleSegmentMessage(body)
	case nseg == 2 && isSidecar(body[size0:]):
		sc, err := decodeSidecar(body[size0:], lim)
		if err != nil {
			return Frame{}, err
		}
		f.Sidecar = sc
		f.Msg, _ = capnp.NewSingleSegmentMessage(body[:size0:size0])
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
				return Frame{}, err
			}
			f.Sidecar = sc
			segs = segs[:len(segs)-1]
		}
		f.Msg, _ = capnp.NewMultiSegmentMessage(segs)
	}
	f.Msg.TraverseLimit = lim.TraverseLimit
	f.Msg.DepthLimit = lim.DepthLimit
	return f, nil
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
