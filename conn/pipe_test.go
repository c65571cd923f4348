package conn

import (
	"errors"
	"io"
	"net"
	"sync"

	"capnproto.org/go/capnp/v3"
)

// newPipe returns two connected in-memory Transports that pass frames
// without framing them, for tests of the connection without a socket:
// every frame the other side sends can be read back with RecvFrame.
func newPipe() (Transport, Transport) {
	a2b := newMsgQueue()
	b2a := newMsgQueue()
	return &pipeEnd{in: b2a, out: a2b}, &pipeEnd{in: a2b, out: b2a}
}

type pipeEnd struct {
	in, out *msgQueue
}

func (p *pipeEnd) RecvFrame() (Frame, error) { return p.in.pop() }
func (p *pipeEnd) SendFrames(frames []Frame) error {
	for _, f := range frames {
		// Re-decode from bytes so the receiver owns an independent copy,
		// as it would after a real wire.
		b, err := f.Msg.Marshal()
		if err != nil {
			return err
		}
		cp, err := capnp.Unmarshal(b)
		if err != nil {
			return err
		}
		var sc *Sidecar
		if f.Sidecar != nil {
			c := *f.Sidecar
			sc = &c
		}
		if err := p.out.push(Frame{Msg: cp, Sidecar: sc}); err != nil {
			return err
		}
	}
	return nil
}
func (p *pipeEnd) CloseWrite() error { p.out.closeWith(io.EOF); return nil }
func (p *pipeEnd) Close() error {
	p.out.closeWith(io.EOF)
	p.in.closeWith(net.ErrClosed)
	return nil
}

var errPipeClosed = errors.New("pipe closed")

type msgQueue struct {
	mu     sync.Mutex
	cond   *sync.Cond
	q      []Frame
	closed error
}

func newMsgQueue() *msgQueue {
	m := &msgQueue{}
	m.cond = sync.NewCond(&m.mu)
	return m
}

func (m *msgQueue) push(f Frame) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed != nil {
		return errPipeClosed
	}
	m.q = append(m.q, f)
	m.cond.Signal()
	return nil
}

func (m *msgQueue) pop() (Frame, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for len(m.q) == 0 && m.closed == nil {
		m.cond.Wait()
	}
	if len(m.q) > 0 {
		f := m.q[0]
		m.q = m.q[1:]
		return f, nil
	}
	return Frame{}, m.closed
}

func (m *msgQueue) closeWith(err error) {
	m.mu.Lock()
	if m.closed == nil {
		m.closed = err
	}
	m.cond.Broadcast()
	m.mu.Unlock()
}
