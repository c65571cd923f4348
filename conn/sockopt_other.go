//go:build !linux

package conn

import "net"

// setsockoptUserTimeout: the OS has no TCP_USER_TIMEOUT (or is not Unix).
func setsockoptUserTimeout(uintptr, int) error { return nil }

// socketReset: without Linux's TCP_INFO, an EOF stays an EOF.
func socketReset(net.Conn) bool { return false }

// writevNow: only on Linux (haveWritevNow); elsewhere a batch with a
// large segment goes to the writer goroutine.
func writevNow(uintptr, [][]byte) (int, error) { return 0, nil }

const haveWritevNow = false
