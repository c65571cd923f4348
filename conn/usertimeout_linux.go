package conn

import "syscall"

// tcpUserTimeout is Linux's TCP_USER_TIMEOUT (netinet/tcp.h).
const tcpUserTimeout = 0x12

func setsockoptUserTimeout(fd uintptr, ms int) error {
	return syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpUserTimeout, ms)
}
