package conn

import (
	"bufio"
	"errors"
	"io"
	"net"
	"sync"

	"capnproto.org/go/capnp/v3"
)

// Transport moves whole Cap'n Proto messages. The connection actor's reader
// goroutine is the only caller of RecvMessage; its writer goroutine is the
// only caller of SendMessages and CloseWrite.
type Transport interface {
	// RecvMessage blocks until the next message arrives. It returns io.EOF
	// when the peer has closed its write side cleanly between messages.
	RecvMessage() (*capnp.Message, error)
	// SendMessages writes msgs in order, in as few writes as it can.
	SendMessages(msgs []*capnp.Message) error
	// CloseWrite shuts down the write side (TCP FIN) where the transport
	// has one; otherwise it closes.
	CloseWrite() error
	// Close releases the transport; a blocked RecvMessage returns.
	Close() error
}

// NewStreamTransport returns a Transport that speaks the standard stream
// framing over c, enforcing lim on what it reads.
func NewStreamTransport(c net.Conn, lim Limits) Transport {
	return &streamTransport{c: c, r: bufio.NewReaderSize(c, 64<<10), lim: lim.withDefaults()}
}

type streamTransport struct {
	c   net.Conn
	r   *bufio.Reader
	lim Limits
	buf []byte // writer goroutine only
}

func (t *streamTransport) RecvMessage() (*capnp.Message, error) {
	return readFrame(t.r, t.lim)
}

func (t *streamTransport) SendMessages(msgs []*capnp.Message) error {
	buf := t.buf[:0]
	for _, m := range msgs {
		var err error
		if buf, err = appendFrame(buf, m); err != nil {
			return err
		}
	}
	_, err := t.c.Write(buf)
	if cap(buf) <= 1<<20 {
		t.buf = buf // keep moderate buffers for the next batch
	} else {
		t.buf = nil
	}
	return err
}

// closeWriter is implemented by *net.TCPConn and *net.UnixConn.
type closeWriter interface{ CloseWrite() error }

func (t *streamTransport) CloseWrite() error {
	if cw, ok := t.c.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return t.c.Close()
}

func (t *streamTransport) Close() error { return t.c.Close() }

// NewPipe returns two connected in-memory Transports that pass messages
// without encoding them. It is for tests of the connection's state machine:
// no socket, no framing, and every message the other side sends can be read
// back with RecvMessage.
func NewPipe() (Transport, Transport) {
	a2b := newMsgQueue()
	b2a := newMsgQueue()
	return &pipeEnd{in: b2a, out: a2b}, &pipeEnd{in: a2b, out: b2a}
}

type pipeEnd struct {
	in, out *msgQueue
}

func (p *pipeEnd) RecvMessage() (*capnp.Message, error) { return p.in.pop() }
func (p *pipeEnd) SendMessages(msgs []*capnp.Message) error {
	for _, m := range msgs {
		// Re-decode from bytes so the receiver owns an independent copy,
		// as it would after a real wire.
		b, err := m.Marshal()
		if err != nil {
			return err
		}
		cp, err := capnp.Unmarshal(b)
		if err != nil {
			return err
		}
		if err := p.out.push(cp); err != nil {
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
	q      []*capnp.Message
	closed error
}

func newMsgQueue() *msgQueue {
	m := &msgQueue{}
	m.cond = sync.NewCond(&m.mu)
	return m
}

func (m *msgQueue) push(msg *capnp.Message) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed != nil {
		return errPipeClosed
	}
	m.q = append(m.q, msg)
	m.cond.Signal()
	return nil
}

func (m *msgQueue) pop() (*capnp.Message, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for len(m.q) == 0 && m.closed == nil {
		m.cond.Wait()
	}
	if len(m.q) > 0 {
		msg := m.q[0]
		m.q = m.q[1:]
		return msg, nil
	}
	return nil, m.closed
}

func (m *msgQueue) closeWith(err error) {
	m.mu.Lock()
	if m.closed == nil {
		m.closed = err
	}
	m.cond.Broadcast()
	m.mu.Unlock()
}
