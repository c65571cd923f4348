//go:build !linux

package conn

import "syscall"

// parker is where the readers of rested connections would wait without a
// goroutine each (see park_linux.go); here they rest on goroutines of
// their own (Conn.readAfterRest).
type parker struct{}

var readers parker

func (*parker) park(*Conn, syscall.RawConn) bool { return false }
func (*parker) unpark(*Conn)                     {}
func (*parker) parked() int                      { return 0 }
