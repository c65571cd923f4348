//go:build unix

package conn

import (
	"io"
	"net"
	"slices"
	"syscall"
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
	buf := t.buf[:0]
	for _, f := range frames {
		var table [8][]byte
		segs, err := frameSegments(table[:0], f, &t.sc)
		if err != nil {
			return true, nil, err
		}
		if slices.ContainsFunc(segs, func(s []byte) bool { return len(s) > copyLimit }) {
			return false, nil, nil
		}
		buf = appendSegments(buf, segs)
	}
	written := 0
	var werr error
	err = t.raw.Write(func(fd uintptr) bool {
		for written < len(buf) {
			n, err := syscall.Write(int(fd), buf[written:])
			if n > 0 {
				written += n
			}
			switch {
			case err == syscall.EINTR:
				continue
			case err == syscall.EAGAIN:
				return true // the socket is full: the rest is the writer's
			case err != nil:
				werr = err
				return true
			case n == 0:
				werr = io.ErrShortWrite
				return true
			}
		}
		return true
	})
	if err == nil {
		err = werr
	}
	if err == nil && written < len(buf) {
		rest = slices.Clone(buf[written:])
	}
	if cap(buf) <= keepWriteBuffer {
		t.buf = buf
	}
	return true, rest, err
}
