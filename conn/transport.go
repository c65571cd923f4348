package conn

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Transport moves whole frames: a Cap'n Proto message and its sidecar. The
// connection actor's reader goroutine is the only caller of RecvFrame; its
// writer goroutine is the only caller of SendFrames and CloseWrite.
type Transport interface {
	// RecvFrame blocks until the next frame arrives. It returns io.EOF
	// when the peer has closed its write side cleanly between frames.
	RecvFrame() (Frame, error)
	// SendFrames writes frames in order, in as few writes as it can.
	SendFrames(frames []Frame) error
	// CloseWrite shuts down the write side (TCP FIN) where the transport
	// has one; otherwise it closes.
	CloseWrite() error
	// Close releases the transport; a blocked RecvFrame returns.
	Close() error
}

// streamWriter is what the connection's writing side uses of a transport
// beyond Transport when the transport has it (the stream transport does):
// the actor's own write of a batch without waiting (trySend, see
// Conn.writeInline), the writer goroutine's write of what that left
// (writeRest), a bound on each write's wait for progress, and dropping
// the write buffers of an idle connection. A transport without it is
// written by the writer goroutine alone, with SendFrames.
type streamWriter interface {
	// trySend writes frames without waiting for the socket; handled is
	// false, and nothing written, when it cannot. rest is what the socket
	// did not take, to be written next.
	trySend(frames []Frame) (handled bool, rest []byte, err error)
	// canTry reports whether trySend can ever handle frames.
	canTry() bool
	// writeRest writes what trySend left.
	writeRest(rest []byte) error
	// setWriteTimeout bounds each wait of a write for progress
	// (Options.WriteTimeout).
	setWriteTimeout(time.Duration)
	// setKeepAlive turns on the socket's own dead-peer detection for ka.
	setKeepAlive(ka KeepAlive)
	// releaseBuffers drops the write buffers; the writer calls it as it
	// exits, the actor as the connection rests while no writer runs.
	releaseBuffers()
	// peerEnding: the peer has said it is ending (an Abort, an epitaph),
	// so an EOF after it is its FIN, even if a reset follows (see
	// readEnd).
	peerEnding()
}

// restingReader is what a transport has (the stream transport over a
// socket does) to let the connection's reader go on from a fresh
// goroutine once the connection has come to rest (Conn.readerRest).
type restingReader interface {
	// canRest reports whether askRest does anything.
	canRest() bool
	// askRest makes RecvFrame, waiting between frames (now or next),
	// return errResting.
	askRest()
	// waitShallow waits for the peer's next bytes with as little stack as
	// a read can use; the next RecvFrame starts with what it read.
	waitShallow()
	// syscallConn is the socket, for a parked reader to wait on (nil:
	// none).
	syscallConn() syscall.RawConn
}

// NewStreamTransport returns a Transport that speaks the standard stream
// framing over c, enforcing lim on what it reads.
func NewStreamTransport(c net.Conn, lim Limits) Transport {
	lim = lim.withDefaults()
	// Peek must hold a whole segment table.
	t := &streamTransport{c: c, r: newFrameReader(c, 8+4*lim.MaxSegments), lim: shareLimits(lim), raw: rawConn(c)}
	t.r.frameTimeout, t.r.setDeadline = lim.FrameTimeout, c.SetReadDeadline
	t.r.rests = t.canRest()
	return t
}

// sharedLimits holds one copy of each Limits the transports of this
// process enforce: a process has few distinct ones (a vat's connections
// share theirs), and each transport would hold its own 112 bytes.
var sharedLimits sync.Map // Limits → *Limits

// shareLimits returns the shared copy of lim.
func shareLimits(lim Limits) *Limits {
	if p, ok := sharedLimits.Load(lim); ok {
		return p.(*Limits)
	}
	p, _ := sharedLimits.LoadOrStore(lim, &lim)
	return p.(*Limits)
}

// keepWriteBuffer is the largest write buffer kept from one batch to the
// next.
const keepWriteBuffer = 32 << 10

type streamTransport struct {
	c   net.Conn
	r   *frameReader
	lim *Limits         // shared (shareLimits)
	buf []byte          // writer goroutine only: small frames, copied together
	vec net.Buffers     // writer goroutine only: buf's pieces and large segments
	sc  []byte          // writer goroutine only: the sidecar being framed
	raw syscall.RawConn // for writes that must not wait (trySend); nil: none
	// writeTimeout bounds each wait of a write for the peer to take
	// bytes (Options.WriteTimeout; 0: none).
	writeTimeout time.Duration
	try          tryWrite              // trySend's write in progress
	tryVec       net.Buffers           // trySendVec's pieces, kept between writes
	tryFn        func(fd uintptr) bool // try.write, bound once
	tryVecFn     func(fd uintptr) bool // try.writeVec, bound once
	finSent      atomic.Bool           // CloseWrite was called (readEnd)
	peerEnded    atomic.Bool           // the peer said it is ending (readEnd)
}

// copyLimit is the largest segment SendFrames copies into its buffer;
// larger ones are written from where they are (writev), uncopied.
const copyLimit = 16 << 10

func (t *streamTransport) RecvFrame() (Frame, error) {
	// Wait for the next frame's first bytes here, not deep in readFrame:
	// an idle reader's stack is then shallow enough for the runtime to
	// shrink it to 4 KiB (to 2 KiB, a fresh goroutine: Conn.readerRest).
	if err := t.r.await(); err != nil {
		return Frame{}, t.readEnd(err)
	}
	f, err := t.readTimedFrame()
	if err != nil {
		err = t.readEnd(err)
	}
	return f, err
}

// readEnd is how reading ended. The kernel reports a reset once, to the
// first read or write after it, and reads after that see an EOF: when the
// writer took it, an EOF (clean or mid-frame) on a socket the reset has
// closed, before our own FIN, is the reset. Not after the peer said it
// was ending: then the EOF was its FIN, and a reset after it (our write
// to a socket the peer had closed) is not how reading ended.
func (t *streamTransport) readEnd(err error) error {
	if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) || t.finSent.Load() || t.peerEnded.Load() || !t.wasReset() {
		return err
	}
	return fmt.Errorf("read: %w (reported to a write first; the read then saw %v)", syscall.ECONNRESET, err)
}

// wasReset reports whether the peer's reset has closed the socket.
func (t *streamTransport) wasReset() bool {
	c := t.c
	if w, ok := c.(wrapper); ok {
		c = w.NetConn()
	}
	return socketReset(c)
}

// readTimedFrame reads the frame whose first bytes have arrived. It has
// FrameTimeout to arrive whole: the deadline is set only if a read has to
// wait for more of it. (A function of its own, so that RecvFrame's frame,
// on an idle reader's stack, stays small.)
func (t *streamTransport) readTimedFrame() (Frame, error) {
	t.r.midFrame = true
	f, err := readFrame(t.r, *t.lim)
	t.r.midFrame = false
	if t.r.armed {
		t.r.armed = false
		_ = t.c.SetReadDeadline(time.Time{})
		if errors.Is(err, os.ErrDeadlineExceeded) {
			err = fmt.Errorf("%w: %v after its first bytes (%w)", ErrFrameTimeout, t.lim.FrameTimeout, err)
		}
	}
	return f, err
}

// SendFrames writes every frame in one write: small segments are copied
// into one buffer, large ones go to a vectored write as they are.
func (t *streamTransport) SendFrames(frames []Frame) error {
	buf, vec := t.buf[:0], t.vec[:0]
	mark := 0 // buf[mark:] is not yet in vec
	for _, f := range frames {
		var err error
		buf, vec, mark, err = appendFrameVec(buf, vec, mark, f, &t.sc)
		if err != nil {
			return err
		}
	}
	if len(vec) == 0 {
		err := t.write(buf)
		if cap(buf) <= keepWriteBuffer {
			t.buf = buf // keep moderate buffers for the next batch
		} else {
			t.buf = nil
		}
		return err
	}
	if mark < len(buf) {
		vec = append(vec, buf[mark:])
	}
	t.vec = vec
	err := t.writeVec() // consumes t.vec
	clear(vec)          // drop the references to the segments
	t.vec = vec[:0]
	// buf is now the tail of t.buf (or of a larger buffer): t.buf stays.
	return err
}

// writeRest writes what trySend left.
func (t *streamTransport) writeRest(rest []byte) error { return t.write(rest) }

// write writes b whole, waiting at most writeTimeout for each bit of
// progress: a peer that takes nothing for that long fails it with
// ErrPeerNotReading, one that reads slowly does not.
func (t *streamTransport) write(b []byte) error {
	defer t.disarmWrite()
	for {
		t.armWrite()
		n, err := t.c.Write(b)
		if err == nil {
			return nil
		}
		if n == 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
			return t.writeError(err)
		}
		b = b[n:]
	}
}

// writeVec is write for t.vec (a vectored write, which consumes t.vec).
func (t *streamTransport) writeVec() error {
	defer t.disarmWrite()
	for {
		t.armWrite()
		n, err := t.vec.WriteTo(t.c)
		if err == nil {
			return nil
		}
		if n == 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
			return t.writeError(err)
		}
	}
}

func (t *streamTransport) armWrite() {
	if t.writeTimeout > 0 {
		_ = t.c.SetWriteDeadline(time.Now().Add(t.writeTimeout))
	}
}

// disarmWrite clears the deadline a write armed once it is over: left
// set, it would fail the actor's next inline write (trySend) once it
// passed, however ready the socket.
func (t *streamTransport) disarmWrite() {
	if t.writeTimeout > 0 {
		_ = t.c.SetWriteDeadline(time.Time{})
	}
}

// writeError is how a write failed. The kernel reports a reset once, to
// the first read or write after it, and writes after that see EPIPE: a
// write's EPIPE on a socket the reset has closed, before our own FIN, is
// the reset the reader took (the reader's end and the writer's race to
// the actor; both then say how the connection ended).
func (t *streamTransport) writeError(err error) error {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("%w: nothing written for %v (%w)", ErrPeerNotReading, t.writeTimeout, err)
	case errors.Is(err, syscall.EPIPE) && !t.finSent.Load() && t.wasReset():
		return fmt.Errorf("write: %w (reported to a read first; the write then saw %v)", syscall.ECONNRESET, err)
	}
	return err
}

// releaseBuffers drops the write buffers of an idle connection: the
// writer goroutine as it exits, or the actor (sendQueue.trim) while no
// writer runs.
func (t *streamTransport) releaseBuffers() { t.buf, t.vec, t.sc, t.tryVec = nil, nil, nil, nil }

func (t *streamTransport) setWriteTimeout(d time.Duration) { t.writeTimeout = d }

// setKeepAlive: TCP keepalive probes after ka.Interval of idleness, and
// TCP_USER_TIMEOUT (where there is one) at Interval+Timeout.
func (t *streamTransport) setKeepAlive(ka KeepAlive) {
	c := t.c
	if w, ok := c.(wrapper); ok {
		c = w.NetConn() // the TCP socket under TLS
	}
	tc, ok := c.(*net.TCPConn)
	if !ok || ka.Interval <= 0 {
		return
	}
	timeout := ka.Timeout
	if timeout <= 0 {
		timeout = ka.Interval
	}
	count := max(1, int(timeout/ka.Interval))
	_ = tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: ka.Interval, Interval: ka.Interval, Count: count})
	setUserTimeout(tc, ka.Interval+timeout)
}
func (t *streamTransport) canTry() bool { return t.raw != nil }

// canRest: over TLS a waiting read is deep in the TLS record layer
// anyway, so a fresh goroutine would save nothing.
func (t *streamTransport) canRest() bool {
	_, wrapped := t.c.(wrapper)
	return !wrapped
}

func (t *streamTransport) askRest()     { t.r.askRest() }
func (t *streamTransport) waitShallow() { t.r.waitShallow() }

func (t *streamTransport) syscallConn() syscall.RawConn { return t.raw }

func (t *streamTransport) peerEnding() { t.peerEnded.Store(true) }

// closeWriter is implemented by *net.TCPConn, *net.UnixConn and
// *tls.Conn.
type closeWriter interface{ CloseWrite() error }

// wrapper is a connection over another (*tls.Conn).
type wrapper interface{ NetConn() net.Conn }

// CloseWrite half-closes: a FIN; over TLS, close_notify and then the FIN
// of the socket under it.
func (t *streamTransport) CloseWrite() error {
	t.finSent.Store(true)
	cw, ok := t.c.(closeWriter)
	if !ok {
		return t.c.Close()
	}
	if err := cw.CloseWrite(); err != nil {
		return err
	}
	if w, ok := t.c.(wrapper); ok {
		if under, ok := w.NetConn().(closeWriter); ok {
			return under.CloseWrite()
		}
	}
	return nil
}

func (t *streamTransport) Close() error { return t.c.Close() }
