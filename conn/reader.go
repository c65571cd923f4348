package conn

import (
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// frameReader buffers what the reader goroutine reads from the socket,
// like a bufio.Reader, except that its buffer is borrowed from a pool
// while it holds unread bytes and given back as soon as it is empty. A
// busy connection waiting between frames reads straight into a borrowed
// buffer, which the rest of a quiet one gives back (restWanted): a rested
// connection waits in its small wait array, so an idle connection costs
// no read buffer; a busy one keeps reading many frames per system call.
type frameReader struct {
	rd   io.Reader
	size int     // buffer size: readBufferSize, or more for large segment tables
	buf  []byte  // borrowed; nil while empty
	from *[]byte // buf's pool entry, given back with it
	r, w int     // buf[r:w] is unread
	err  error   // the read error to report once buf is drained
	// rests: the connection's reader rests when it is quiet (restWanted),
	// so between frames it reads straight into a borrowed buffer, given
	// back if the read brings nothing; a reader that never rests (over
	// TLS, whose own buffers hold what arrived) waits in wait instead, as
	// a rested one does (waitShallow).
	rests bool
	wait  [64]byte

	// midFrame: a frame has begun; the first read that must wait for
	// more of it sets the frame's deadline (once), frameTimeout from
	// then, with setDeadline (nil: frames have no deadline).
	midFrame, armed bool
	frameTimeout    time.Duration
	frameDeadline   time.Time
	setDeadline     func(time.Time) error

	// restWanted: the connection has come to rest and asks its reader to
	// go on from a fresh goroutine (Conn.readerRest); a read deadline in
	// the past interrupts the wait, and a read that sees it between
	// frames returns errResting. pending: that goroutine's first read
	// (waitShallow), handed to the next fill.
	restWanted atomic.Bool
	pending    bool
	pendN      int
	pendErr    error
}

// errResting: the reader was interrupted between frames to go on from a
// fresh goroutine (Conn.readAfterRest); nothing was read.
var errResting = errors.New("reader resting")

// read is every read from the socket. A deadline that passes is the
// frame's, or the one askRest set: between frames, where there is none of
// the frame's, the read clears it and waits on, or returns errResting if
// a rest was asked for; within a frame, it waits on until the frame's
// own deadline.
func (b *frameReader) read(p []byte) (int, error) {
	if b.midFrame && !b.armed && b.setDeadline != nil {
		b.armed = true
		b.frameDeadline = time.Now().Add(b.frameTimeout)
		_ = b.setDeadline(b.frameDeadline)
	}
	for {
		n, err := b.rd.Read(p)
		if n > 0 || b.setDeadline == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
			return n, err
		}
		switch {
		case b.midFrame && !time.Now().Before(b.frameDeadline):
			return n, err // the frame's own deadline
		case b.midFrame:
			_ = b.setDeadline(b.frameDeadline)
		default:
			_ = b.setDeadline(time.Time{})
			if b.restWanted.Swap(false) {
				return 0, errResting
			}
		}
	}
}

// askRest asks the reader to go on from a fresh goroutine once it waits
// between frames (see restWanted). Only where reads have deadlines.
func (b *frameReader) askRest() {
	if b.setDeadline == nil {
		return
	}
	b.restWanted.Store(true)
	_ = b.setDeadline(time.Now())
}

// waitShallow waits for the peer's next bytes with as little of the
// goroutine's stack in use as a read can have: what it reads is kept for
// the next fill. A deadline (another rest asked for meanwhile) is
// dropped, for the next read to see again.
func (b *frameReader) waitShallow() {
	n, err := b.rd.Read(b.wait[:])
	if n > 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		b.pending, b.pendN, b.pendErr = true, n, err
	}
}

// readBufferSize is the pooled read buffer's size.
const readBufferSize = 4 << 10

var readBuffers = sync.Pool{New: func() any { b := make([]byte, readBufferSize); return &b }}

func newFrameReader(rd io.Reader, size int) *frameReader {
	return &frameReader{rd: rd, size: max(size, readBufferSize)}
}

// Size is the most Peek can return.
func (b *frameReader) Size() int { return b.size }

func (b *frameReader) borrow() {
	if b.size == readBufferSize {
		b.from = readBuffers.Get().(*[]byte)
		b.buf = *b.from
	} else {
		b.buf = make([]byte, b.size)
	}
}

// giveBack returns the buffer once everything in it has been read.
func (b *frameReader) giveBack() {
	if b.buf == nil || b.r != b.w {
		return
	}
	if b.from != nil {
		readBuffers.Put(b.from)
	}
	b.buf, b.from, b.r, b.w = nil, nil, 0, 0
}

// fill reads at least one more byte, or returns why it cannot.
func (b *frameReader) fill() error {
	if b.err != nil {
		return b.err
	}
	if b.buf == nil {
		// Nothing buffered: take what a rested reader's read brought, or
		// read into a borrowed buffer (given back if the read brings
		// nothing), or, for a reader that never rests, into wait.
		var n int
		var err error
		switch {
		case b.pending:
			n, err, b.pending, b.pendErr = b.pendN, b.pendErr, false, nil
		case b.rests:
			b.borrow()
			n, err = b.read(b.buf)
			if n == 0 {
				b.giveBack()
			}
		default:
			n, err = b.read(b.wait[:])
		}
		if n == 0 {
			if err == nil {
				err = io.ErrNoProgress
			}
			return err
		}
		b.err = err
		if b.buf == nil {
			b.borrow()
			b.r, b.w = 0, copy(b.buf, b.wait[:n])
		} else {
			b.r, b.w = 0, n
		}
		return nil
	}
	if b.r > 0 {
		b.w = copy(b.buf, b.buf[b.r:b.w])
		b.r = 0
	}
	n, err := b.read(b.buf[b.w:])
	b.w += n
	if n == 0 {
		if err == nil {
			err = io.ErrNoProgress
		}
		return err
	}
	b.err = err
	return nil
}

// await waits until at least one byte is buffered.
func (b *frameReader) await() error {
	if b.r < b.w {
		return nil
	}
	return b.fill()
}

// Peek returns the next n bytes without consuming them; with fewer, it
// returns what there is and the error that stopped it.
func (b *frameReader) Peek(n int) ([]byte, error) {
	if n > b.size {
		return nil, io.ErrShortBuffer
	}
	for b.w-b.r < n {
		if err := b.fill(); err != nil {
			if b.buf == nil {
				return nil, err
			}
			return b.buf[b.r:b.w], err
		}
	}
	return b.buf[b.r : b.r+n], nil
}

// Discard skips n bytes that Peek has returned.
func (b *frameReader) Discard(n int) {
	b.r += n
	b.giveBack()
}

// Read implements io.Reader: buffered bytes first; a large read with
// nothing buffered goes straight into p.
func (b *frameReader) Read(p []byte) (int, error) {
	if b.r == b.w {
		if b.err != nil {
			err := b.err
			b.err = nil
			return 0, err
		}
		if len(p) >= b.size {
			b.giveBack()
			return b.read(p)
		}
		if err := b.fill(); err != nil {
			b.err = nil
			return 0, err
		}
	}
	n := copy(p, b.buf[b.r:b.w])
	b.r += n
	b.giveBack()
	return n, nil
}
