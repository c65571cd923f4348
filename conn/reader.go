package conn

import (
	"io"
	"sync"
)

// frameReader buffers what the reader goroutine reads from the socket,
// like a bufio.Reader, except that its buffer is borrowed from a pool
// while it holds unread bytes and given back as soon as it is empty. A
// connection waiting for its next frame holds only its small wait array,
// so an idle connection costs no read buffer; a busy one keeps reading
// many frames per system call.
type frameReader struct {
	rd   io.Reader
	size int     // buffer size: readBufferSize, or more for large segment tables
	buf  []byte  // borrowed; nil while empty
	from *[]byte // buf's pool entry, given back with it
	r, w int     // buf[r:w] is unread
	err  error   // the read error to report once buf is drained
	wait [256]byte

	// midFrame: a frame has begun; the first read that must wait for
	// more of it calls arm (once), which sets the frame's deadline.
	midFrame, armed bool
	arm             func()
}

// read is every read from the socket.
func (b *frameReader) read(p []byte) (int, error) {
	if b.midFrame && !b.armed && b.arm != nil {
		b.armed = true
		b.arm()
	}
	return b.rd.Read(p)
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
		// Nothing buffered: wait for the peer without a buffer.
		n, err := b.read(b.wait[:])
		if n == 0 {
			if err == nil {
				err = io.ErrNoProgress
			}
			return err
		}
		b.err = err
		b.borrow()
		b.r, b.w = 0, copy(b.buf, b.wait[:n])
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
