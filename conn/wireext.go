package conn

import (
	"encoding/binary"
	"fmt"

	"capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"

	"github.com/vatactor/vatactor/conn/wire"
	"github.com/vatactor/vatactor/supervisor"
)

// Sidecar is what travels in a frame's sidecar segment (see wire.Sidecar):
// what the sender understands and the trace context of the call.
type Sidecar struct {
	Features    uint64 // bit n set: the sender understands wire.Feature n
	TraceParent string // W3C traceparent of the call ("" if none)
	TraceState  string // W3C tracestate
	ConnParent  string // W3C traceparent of the sender's connection span (first sidecar only)
}

// Has reports whether the sender of s understands feature f.
func (s *Sidecar) Has(f wire.Feature) bool { return s != nil && s.Features&(1<<f) != 0 }

// ourFeatures is the feature word every sidecar of ours carries.
const ourFeatures = 1 << wire.Feature_epitaphs

// A Frame is one message on the wire and the sidecar that travels with it.
type Frame struct {
	Msg     *capnp.Message
	Sidecar *Sidecar // nil: no sidecar segment
}

// encodeSidecar returns the bytes of the sidecar segment for s: a
// single-segment message whose root pointer is at word 0.
func encodeSidecar(s *Sidecar) ([]byte, error) {
	msg, seg := capnp.NewSingleSegmentMessage(nil)
	sc, err := wire.NewRootSidecar(seg)
	if err != nil {
		return nil, err
	}
	sc.SetMagic(wire.SidecarMagic)
	sc.SetFeatures(s.Features)
	if s.TraceParent != "" {
		if err := sc.SetTraceparent(s.TraceParent); err != nil {
			return nil, err
		}
	}
	if s.TraceState != "" {
		if err := sc.SetTracestate(s.TraceState); err != nil {
			return nil, err
		}
	}
	if s.ConnParent != "" {
		if err := sc.SetConn(s.ConnParent); err != nil {
			return nil, err
		}
	}
	seg0, err := msg.Segment(0)
	if err != nil {
		return nil, err
	}
	return seg0.Data(), nil
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

// decodeSidecar reads a sidecar segment found by isSidecar.
func decodeSidecar(seg []byte, lim Limits) (*Sidecar, error) {
	msg, _ := capnp.NewMultiSegmentMessage([][]byte{seg})
	msg.TraverseLimit = lim.TraverseLimit
	msg.DepthLimit = lim.DepthLimit
	sc, err := wire.ReadRootSidecar(msg)
	if err != nil {
		return nil, frameErrorf(ErrMalformedFrame, "sidecar: %v", err)
	}
	out := &Sidecar{Features: sc.Features()}
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
func epitaphOf(e rpccp.Exception) (supervisor.Epitaph, bool, error) {
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
		text, _ := we.Text()
		return supervisor.Epitaph{Code: supervisor.Code(we.Code()), Message: text}, true, nil
	}
	return supervisor.Epitaph{}, false, nil
}
