//go:build !unix

package conn

import (
	"net"
	"syscall"
	"time"
)

// rawConn: writes that must not block are for Unix sockets only here.
func rawConn(net.Conn) syscall.RawConn { return nil }

// trySend never handles frames here: the writer goroutine writes them.
func (t *streamTransport) trySend([]Frame) (handled bool, rest []byte, err error) {
	return false, nil, nil
}

// tryWrite is trySend's write in progress, on Unix.
type tryWrite struct{}

// setUserTimeout: no TCP_USER_TIMEOUT here; TCP keepalive alone.
func setUserTimeout(*net.TCPConn, time.Duration) {}
