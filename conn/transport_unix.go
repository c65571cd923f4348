//go:build unix

package conn

import (
	"io"
	"net"
	"slices"
	"sync"
	"syscall"
	"time"
)

// rawConn is c's raw socket, for trySend; nil when c has none.
func rawConn(c net.Conn) syscall.RawConn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return raw
}

// trySend writes frames without waiting for the socket, on the caller's
// goroutine (which must be the only writer then): handled is false, and
// nothing written, when it cannot (no raw socket, or a segment large
// enough for the vectored write). Otherwise rest is a copy of what the
// socket did not take, for the writer goroutine, and err a write error.
func (t *streamTransport) trySend(frames []Frame) (handled bool, rest []byte, err error) {
	if t.raw == nil {
		return false, nil, nil
	}
	bp := tryBufs.Get().(*[]byte)
	buf := (*bp)[:0]
	for _, f := range frames {
		var table [8][]byte
		segs, err := frameSegments(table[:0], f, &t.sc)
		if err != nil {
			putTryBuf(bp, buf)
			return true, nil, err
		}
		if slices.ContainsFunc(segs, func(s []byte) bool { return len(s) > copyLimit }) {
			putTryBuf(bp, buf)
			return false, nil, nil
		}
		buf = appendSegments(buf, segs)
	}
	t.try = tryWrite{buf: buf}
	if t.tryFn == nil {
		t.tryFn = t.try.write // made once: RawConn.Write takes a func
	}
	err = t.raw.Write(t.tryFn)
	written, werr := t.try.written, t.try.err
	t.try = tryWrite{}
	if err == nil {
		err = werr
	}
	if err == nil && written < len(buf) {
		rest = slices.Clone(buf[written:])
	}
	putTryBuf(bp, buf)
	if err != nil {
		err = t.writeError(err)
	}
	return true, rest, err
}

// tryBufs are the buffers of the actor's inline writes (trySend), shared
// by the process's connections: such a write is done when trySend
// returns (what the socket did not take is copied out), so its buffer
// goes back at once, and an idle connection, or one after a burst, keeps
// none.
var tryBufs = sync.Pool{New: func() any { return new([]byte) }}

// putTryBuf gives buf, grown from *bp, back to tryBufs, unless it grew
// past keepWriteBuffer.
func putTryBuf(bp *[]byte, buf []byte) {
	if cap(buf) <= keepWriteBuffer {
		*bp = buf[:0]
		tryBufs.Put(bp)
	}
}

// tryWrite is one trySend's write on the raw socket, as far as it goes
// without waiting.
type tryWrite struct {
	buf     []byte
	written int
	err     error
}

func (w *tryWrite) write(fd uintptr) (done bool) {
	for w.written < len(w.buf) {
		n, err := syscall.Write(int(fd), w.buf[w.written:])
		if n > 0 {
			w.written += n
		}
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			return true // the socket is full: the rest is the writer's
		case err != nil:
			w.err = err
			return true
		case n == 0:
			w.err = io.ErrShortWrite
			return true
		}
	}
	return true
}

// setUserTimeout sets TCP_USER_TIMEOUT where the OS has it (Linux): data
// written and not acknowledged for d fails the socket.
func setUserTimeout(c *net.TCPConn, d time.Duration) {
	raw, err := c.SyscallConn()
	if err != nil {
		return
	}
	_ = raw.Control(func(fd uintptr) {
		_ = setsockoptUserTimeout(fd, int(d.Milliseconds()))
	})
}
