package main

import (
	"io"
	"net"
	"time"
)

// floor measures the plain TCP ping-pong every implementation is bounded
// by: 64 bytes written, the same 64 bytes echoed back, one at a time, over
// loopback, with no RPC at all.
func floor(d time.Duration) (*result, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer l.Close()
	served := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		buf := make([]byte, smallPayload)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				served <- nil // the client hung up
				return
			}
			if _, err := c.Write(buf); err != nil {
				served <- err
				return
			}
		}
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		return nil, err
	}
	r := &result{scenario: "tcp-floor", impl: "tcp"}
	buf := make([]byte, smallPayload)
	pingPong := func() error {
		if _, err := c.Write(buf); err != nil {
			return err
		}
		_, err := io.ReadFull(c, buf)
		return err
	}
	for range warmupOps {
		if err := pingPong(); err != nil {
			c.Close()
			return nil, err
		}
	}
	busy := openBusyWindow()
	t0 := time.Now()
	for time.Since(t0) < d {
		t := time.Now()
		if err := pingPong(); err != nil {
			c.Close()
			return nil, err
		}
		r.lat.add(time.Since(t))
		r.ops++
	}
	r.elapsed = time.Since(t0)
	r.calls = r.ops
	if cpu, ok := busy.took(); ok {
		r.cpu, r.cpuCalls = cpu, r.calls
	}
	c.Close()
	return r, <-served
}
