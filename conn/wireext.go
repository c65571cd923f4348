package conn

import (
	"encoding/binary"
	"fmt"
	"time"
	"unsafe"

	"capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"

	"github.com/vatactor/vatactor/conn/wire"
	"github.com/vatactor/vatactor/supervisor"
	"github.com/vatactor/vatactor/tracing"
)

// Sidecar is what travels in a frame's sidecar segment (see wire.Sidecar):
// what the sender understands and the trace context of the call.
type Sidecar struct {
	Features    uint64 // bit n set: the sender understands wire.Feature n
	TraceParent string // W3C traceparent of the call ("" if none)
	TraceState  string // W3C tracestate
	ConnParent  string // W3C traceparent of the sender's connection span (first sidecar only)
	// Timeout is, on a Call, the time left before the caller's deadline
	// when the frame was written, to the microsecond (0: no deadline).
	Timeout time.Duration
}

// heldSidecar is a Sidecar and the bytes of its TraceParent, when that is
// the version-00 header a call's sidecar mostly carries: one allocation
// for both (sidecarHolding).
type heldSidecar struct {
	Sidecar
	traceParent tracing.TraceParent
}

// sidecarHolding returns a new Sidecar with features whose TraceParent is
// tp, held with it. Those bytes are never written again: the string is
// immutable, as any is.
func sidecarHolding(features uint64, tp *tracing.TraceParent) *Sidecar {
	h := &heldSidecar{Sidecar: Sidecar{Features: features}, traceParent: *tp}
	h.TraceParent = unsafe.String(&h.traceParent[0], len(h.traceParent))
	return &h.Sidecar
}

// Has reports whether the sender of s understands feature f.
func (s *Sidecar) Has(f wire.Feature) bool { return s != nil && s.Features&(1<<f) != 0 }

// ourFeatures is the feature word every sidecar of ours carries.
const ourFeatures = 1 << wire.Feature_epitaphs

// A Frame is one message on the wire and the sidecar that travels with it.
type Frame struct {
	Msg     *capnp.Message
	Sidecar *Sidecar // nil: no sidecar segment

	// finish is a Finish the stream reader decoded from its bytes (Msg is
	// nil then): the most common message, read without a capnp.Message.
	finish finishFrame
}

// finishFrame is a decoded Finish message.
type finishFrame struct {
	questionID        uint32
	releaseResultCaps bool
	ok                bool // this is a Finish
}

// finishPost is a finishFrame as the reader posts it to the actor: the
// question id, and bit 32 set for releaseResultCaps. An integer under 256
// goes into an interface without an allocation, so the usual Finish (a
// small id, after its Return: releaseResultCaps false) costs none; the
// struct would cost one each time.
type finishPost uint64

func (f finishFrame) post() finishPost {
	p := finishPost(f.questionID)
	if f.releaseResultCaps {
		p |= 1 << 32
	}
	return p
}

func (p finishPost) frame() finishFrame {
	return finishFrame{questionID: uint32(p), releaseResultCaps: p&(1<<32) != 0, ok: true}
}

// The bytes of a Finish message as capnp's encoder lays it out in one
// segment: the root pointer to Message (one data word, one pointer),
// Message's union tag, the pointer to Finish (one data word), Finish's
// data word (questionId, then two booleans stored XOR their default
// true).
const (
	finishFrameBytes = 32
	finishRootPtr    = uint64(1)<<32 | uint64(1)<<48
	finishStructPtr  = uint64(1) << 32
)

// decodeFinishFrame reads body as a Finish laid out as above; ok is false
// for anything else.
func decodeFinishFrame(body []byte) finishFrame {
	if len(body) != finishFrameBytes ||
		binary.LittleEndian.Uint64(body) != finishRootPtr ||
		binary.LittleEndian.Uint64(body[8:]) != uint64(rpccp.Message_Which_finish) ||
		binary.LittleEndian.Uint64(body[16:]) != finishStructPtr {
		return finishFrame{}
	}
	data := binary.LittleEndian.Uint64(body[24:])
	if data>>34 != 0 {
		return finishFrame{}
	}
	return finishFrame{questionID: uint32(data), releaseResultCaps: data&(1<<32) == 0, ok: true}
}

// The layout appendSidecar writes, which is the one capnp's encoder
// makes for wire.Sidecar: the root struct pointer, the three data words
// (magic, features, timeout), the three Text pointers (traceparent, tracestate,
// conn), then each non-empty text with its NUL, padded to a word.
const (
	sidecarDataWords = 3
	sidecarPtrWords  = 3
	sidecarRootPtr   = uint64(sidecarDataWords)<<32 | uint64(sidecarPtrWords)<<48 // struct, offset 0
	sidecarHeadBytes = 8 * (1 + sidecarDataWords + sidecarPtrWords)
)

// appendSidecar appends the sidecar segment for s to dst, with no
// allocation beyond dst's growth.
func appendSidecar(dst []byte, s *Sidecar) []byte {
	texts := [sidecarPtrWords]string{s.TraceParent, s.TraceState, s.ConnParent}
	start := len(dst)
	dst = binary.LittleEndian.AppendUint64(dst, sidecarRootPtr)
	dst = binary.LittleEndian.AppendUint64(dst, wire.SidecarMagic)
	dst = binary.LittleEndian.AppendUint64(dst, s.Features)
	dst = binary.LittleEndian.AppendUint64(dst, uint64(s.Timeout/time.Microsecond))
	next := uint64(1 + sidecarDataWords + sidecarPtrWords) // word of the next text
	for i, t := range texts {
		if t == "" {
			dst = binary.LittleEndian.AppendUint64(dst, 0)
			continue
		}
		at := uint64(1 + sidecarDataWords + i)
		const listKind, byteElems = 1, 2
		ptr := listKind | (next-at-1)<<2 | byteElems<<32 | uint64(len(t)+1)<<35
		dst = binary.LittleEndian.AppendUint64(dst, ptr)
		next += uint64(len(t)+1+7) / 8
	}
	for _, t := range texts {
		if t == "" {
			continue
		}
		dst = append(dst, t...)
		dst = append(dst, 0)
		for (len(dst)-start)%8 != 0 {
			dst = append(dst, 0)
		}
	}
	return dst
}

// isSidecar reports whether seg starts with a struct pointer to word 1
// whose first data word is the sidecar magic.
func isSidecar(seg []byte) bool {
	if len(seg) < 16 {
		return false
	}
	ptr := binary.LittleEndian.Uint64(seg)
	const structKind, offsetZero = 0, 0
	dataWords := uint16(ptr >> 32)
	return ptr&3 == structKind && uint32(ptr)>>2 == offsetZero && dataWords >= 1 &&
		binary.LittleEndian.Uint64(seg[8:]) == wire.SidecarMagic
}

// decodeSidecar reads a sidecar segment found by isSidecar: directly when
// it has the layout appendSidecar writes, else through capnp's decoder.
func decodeSidecar(seg []byte, lim Limits) (*Sidecar, error) {
	if sc, ok := decodeOurSidecar(seg); ok {
		return sc, nil
	}
	msg, _ := capnp.NewMultiSegmentMessage([][]byte{seg})
	msg.TraverseLimit = lim.TraverseLimit
	msg.DepthLimit = lim.DepthLimit
	sc, err := wire.ReadRootSidecar(msg)
	if err != nil {
		return nil, frameErrorf(ErrMalformedFrame, "sidecar: %v", err)
	}
	out := &Sidecar{Features: sc.Features(), Timeout: micros(sc.Timeout())}
	if out.TraceParent, err = sc.Traceparent(); err == nil {
		if out.TraceState, err = sc.Tracestate(); err == nil {
			out.ConnParent, err = sc.Conn()
		}
	}
	if err != nil {
		return nil, frameErrorf(ErrMalformedFrame, "sidecar: %v", err)
	}
	return out, nil
}

// decodeOurSidecar reads a sidecar laid out as appendSidecar writes it;
// ok is false for any other layout (valid or not).
func decodeOurSidecar(seg []byte) (*Sidecar, bool) {
	if len(seg) < sidecarHeadBytes || binary.LittleEndian.Uint64(seg) != sidecarRootPtr {
		return nil, false
	}
	var texts [sidecarPtrWords][]byte // TraceParent, TraceState, ConnParent
	for i := range texts {
		at := uint64(1 + sidecarDataWords + i)
		ptr := binary.LittleEndian.Uint64(seg[8*at:])
		if ptr == 0 {
			continue
		}
		const listKind, byteElems = 1, 2
		if ptr&3 != listKind || (ptr>>32)&7 != byteElems || int32(uint32(ptr))>>2 < 0 {
			return nil, false
		}
		n := ptr >> 35
		startWord := at + 1 + uint64(uint32(ptr)>>2)
		if n == 0 || startWord > uint64(len(seg))/8 || uint64(len(seg))-8*startWord < n {
			return nil, false
		}
		text := seg[8*startWord : 8*startWord+n]
		if text[n-1] != 0 {
			return nil, false
		}
		texts[i] = text[:n-1]
	}
	features := binary.LittleEndian.Uint64(seg[16:])
	var out *Sidecar
	if tp := texts[0]; len(tp) == len(tracing.TraceParent{}) {
		out = sidecarHolding(features, (*tracing.TraceParent)(tp))
	} else {
		out = &Sidecar{Features: features, TraceParent: string(tp)}
	}
	out.Timeout = micros(binary.LittleEndian.Uint64(seg[24:]))
	out.TraceState, out.ConnParent = string(texts[1]), string(texts[2])
	return out, true
}

// micros is a sidecar's timeout, bounded to what a Duration holds.
func micros(us uint64) time.Duration {
	const max = uint64(1<<63-1) / uint64(time.Microsecond)
	return time.Duration(min(us, max)) * time.Microsecond
}

// setEpitaph adds ep to e's details under wire.EpitaphDetailId. The
// detail's data is the Epitaph as a standalone message in stream framing.
func setEpitaph(e rpccp.Exception, ep supervisor.Epitaph) error {
	msg, seg := capnp.NewSingleSegmentMessage(nil)
	we, err := wire.NewRootEpitaph(seg)
	if err != nil {
		return err
	}
	we.SetCode(int32(ep.Code))
	if err := we.SetText(ep.Message); err != nil {
		return err
	}
	data, err := msg.Marshal()
	if err != nil {
		return err
	}
	details, err := e.NewDetails(1)
	if err != nil {
		return err
	}
	d := details.At(0)
	d.SetDetailId(wire.EpitaphDetailId)
	return d.SetData(data)
}

// epitaphOf returns the epitaph in e's details, if it carries one.
func epitaphOf(e rpccp.Exception, maxText int) (supervisor.Epitaph, bool, error) {
	if !e.HasDetails() {
		return supervisor.Epitaph{}, false, nil
	}
	details, err := e.Details()
	if err != nil {
		return supervisor.Epitaph{}, false, fmt.Errorf("%w: exception details: %v", ErrMalformedFrame, err)
	}
	for i := 0; i < details.Len(); i++ {
		d := details.At(i)
		if d.DetailId() != wire.EpitaphDetailId {
			continue
		}
		data, err := d.Data()
		if err != nil {
			return supervisor.Epitaph{}, false, fmt.Errorf("%w: epitaph: %v", ErrMalformedFrame, err)
		}
		msg, err := capnp.Unmarshal(data)
		if err != nil {
			return supervisor.Epitaph{}, false, fmt.Errorf("%w: epitaph: %v", ErrMalformedFrame, err)
		}
		we, err := wire.ReadRootEpitaph(msg)
		if err != nil {
			return supervisor.Epitaph{}, false, fmt.Errorf("%w: epitaph: %v", ErrMalformedFrame, err)
		}
		text, _ := we.TextBytes()
		return supervisor.Epitaph{Code: supervisor.Code(we.Code()), Message: clip(text, maxText)}, true, nil
	}
	return supervisor.Epitaph{}, false, nil
}
