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
// enough for the vectored write where that cannot be done at once,
// trySendVec). Otherwise rest is a copy of what the socket did not take,
// for the writer goroutine, and err a write error.
func (t *streamTransport) trySend(frames []Frame) (handled bool, rest []byte, err error) {
	if t.raw == nil {
		return false, nil, nil
	}
	bp := tryBufs.Get().(*[]byte)
	buf := (*bp)[:0]
	for i, f := range frames {
		var table [8][]byte
		segs, err := frameSegments(table[:0], f, &t.sc)
		if err != nil {
			putTryBuf(bp, buf)
			return true, nil, err
		}
		if slices.ContainsFunc(segs, func(s []byte) bool { return len(s) > copyLimit }) {
			return t.trySendVec(bp, buf, frames[i:])
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

// trySendVec is trySend for a batch with a large segment, from frames,
// the first that has one, on: buf holds the frames before it, copied
// into bp's buffer. One vectored write (writev) without waiting, the
// large segments written from where they are, as SendFrames writes them.
// A socket with room for the batch (the common case: its send buffer
// grows to megabytes) takes it all here, and the frames go out from the
// goroutine that made them, with no hand-off to the writer goroutine;
// what a socket that took part of it did not take is copied out as rest,
// as trySend's own rest is, and a batch a full socket took nothing of
// goes to the writer goroutine as it is (handled false), uncopied. Where
// the system has no such write (haveWritevNow), or the batch has more
// pieces than one writev takes, the writer goroutine writes it (handled
// false).
func (t *streamTransport) trySendVec(bp *[]byte, buf []byte, frames []Frame) (handled bool, rest []byte, err error) {
	vec, mark := t.tryVec[:0], 0
	defer func() {
		// buf ends as the tail of what vec holds (appendFrameVec): the
		// pool gets the buffer it gave, whole, once vec lets go of it.
		clear(vec)
		t.tryVec = vec[:0]
		putTryBuf(bp, (*bp)[:0])
	}()
	if !haveWritevNow {
		return false, nil, nil
	}
	for _, f := range frames {
		if buf, vec, mark, err = appendFrameVec(buf, vec, mark, f, &t.sc); err != nil {
			return true, nil, err
		}
	}
	if mark < len(buf) {
		vec = append(vec, buf[mark:])
	}
	if len(vec) > maxTryVec {
		return false, nil, nil
	}
	t.try = tryWrite{vec: vec}
	if t.tryVecFn == nil {
		t.tryVecFn = t.try.writeVec // made once, as tryFn
	}
	err = t.raw.Write(t.tryVecFn)
	left, wrote, werr := t.try.vec, t.try.written > 0, t.try.err
	t.try = tryWrite{}
	if err == nil {
		err = werr
	}
	switch {
	case err != nil:
		return true, nil, t.writeError(err)
	case !wrote:
		return false, nil, nil // the socket took nothing: the writer writes the batch, uncopied
	}
	for _, b := range left {
		rest = append(rest, b...)
	}
	return true, rest, nil
}

// maxTryVec is the most pieces trySendVec writes at once (Linux's
// IOV_MAX is 1024).
const maxTryVec = 1024

// consume drops the first n bytes from vec.
func consume(vec [][]byte, n int) [][]byte {
	for len(vec) > 0 && n >= len(vec[0]) {
		n -= len(vec[0])
		vec = vec[1:]
	}
	if len(vec) > 0 && n > 0 {
		vec[0] = vec[0][n:]
	}
	return vec
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
// without waiting: of buf, or (trySendVec) of vec, which it consumes.
type tryWrite struct {
	buf     []byte
	vec     [][]byte
	written int
	err     error
}

func (w *tryWrite) writeVec(fd uintptr) (done bool) {
	for len(w.vec) > 0 {
		n, err := writevNow(fd, w.vec)
		if n > 0 {
			w.vec = consume(w.vec, n)
			w.written += n
		}
		var again bool
		if again, w.err = tryWriteStep(n, err, len(w.vec) > 0); !again {
			return true
		}
	}
	return true
}

func (w *tryWrite) write(fd uintptr) (done bool) {
	for w.written < len(w.buf) {
		n, err := syscall.Write(int(fd), w.buf[w.written:])
		if n > 0 {
			w.written += n
		}
		var again bool
		if again, w.err = tryWriteStep(n, err, w.written < len(w.buf)); !again {
			return true
		}
	}
	return true
}

// tryWriteStep reads one write of a socket that must not wait, which
// wrote n bytes (more: some are left): write again, or stop, the socket
// full (werr nil) or failed.
func tryWriteStep(n int, err error, more bool) (again bool, werr error) {
	switch {
	case err == syscall.EINTR:
		return true, nil
	case err == syscall.EAGAIN:
		return false, nil // the socket is full: the rest is the writer's
	case err != nil:
		return false, err
	case n == 0 && more:
		return false, io.ErrShortWrite
	}
	return true, nil
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
