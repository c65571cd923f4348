package conn

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// tcpUserTimeout is Linux's TCP_USER_TIMEOUT (netinet/tcp.h).
const tcpUserTimeout = 0x12

func setsockoptUserTimeout(fd uintptr, ms int) error {
	return syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpUserTimeout, ms)
}

// tcpClose is TCP_CLOSE (linux/tcp_states.h): the state a reset leaves a
// socket in. A socket that sent no FIN gets there only by a reset (or the
// kernel's own timeout).
const tcpClose = 7

// socketReset reports whether c is a TCP socket that a reset has closed.
func socketReset(c net.Conn) bool {
	raw := rawConn(c)
	if raw == nil {
		return false
	}
	var state uint8
	if raw.Control(func(fd uintptr) {
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			state = info.State
		}
	}) != nil {
		return false
	}
	return state == tcpClose
}

// writevNow writes vec to fd once, without waiting (the socket is
// non-blocking): what the socket took, and why it stopped, as writev(2).
func writevNow(fd uintptr, vec [][]byte) (int, error) { return unix.Writev(int(fd), vec) }

// haveWritevNow: writevNow is there.
const haveWritevNow = true
