package actors_test

import (
	"context"
	"errors"
	"io"
	"net"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc"

	"github.com/vatactor/vatactor/actors"
	"github.com/vatactor/vatactor/conn"
	"github.com/vatactor/vatactor/interop"
	"github.com/vatactor/vatactor/supervisor"
)

// recConn records how reading from a socket ended and the first write
// that failed, for a peer that is not ours.
type recConn struct {
	net.Conn
	mu                 sync.Mutex
	readEnd, writeFail error
}

func (c *recConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if err != nil {
		c.mu.Lock()
		if c.readEnd == nil {
			c.readEnd = err
		}
		c.mu.Unlock()
	}
	return n, err
}

func (c *recConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if err != nil {
		c.mu.Lock()
		if c.writeFail == nil {
			c.writeFail = err
		}
		c.mu.Unlock()
	}
	return n, err
}

func (c *recConn) end() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.readEnd
}

// wasReset: the socket reported a reset, to a read or a write (the
// kernel reports it once, to whichever comes first; reads after it see
// EOF).
func (c *recConn) wasReset() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return errors.Is(c.readEnd, syscall.ECONNRESET) || errors.Is(c.writeFail, syscall.ECONNRESET) || errors.Is(c.writeFail, syscall.EPIPE)
}

// peerCalls is the peer's bootstrap capability and our implementation
// of it, which tells what runs.
type peerCalls struct {
	boot interop.Echo
	impl *interop.EchoServer
}

// ourAbortsAfter counts the Aborts we sent; any at all after the peer's
// EOF or Abort is a bug.
func checkNoAbortEcho(t *testing.T, s *side, d conn.Down) {
	t.Helper()
	switch d.Reason.(type) {
	case supervisor.PeerEOF, supervisor.PeerAbort, supervisor.PeerEpitaph, supervisor.TransportError:
		if n := s.wire.count("send: abort"); n != 0 {
			t.Errorf("we wrote an Abort after the peer ended (%v):\n%s", d.Reason, s.wire)
		}
	}
}

// The ways a connection ends, with go-capnp's rpc.Conn as the client of
// our server vat. Each case logs what go-capnp did (for the README).
func TestEndGoCapnpPeer(t *testing.T) {
	cases := []struct {
		name string
		end  func(t *testing.T, ours *conn.Conn, rc *rpc.Conn, nc *recConn, e *peerCalls)
		// what our side must report
		check func(t *testing.T, d conn.Down)
	}{
		{"we close gracefully, OK", func(t *testing.T, ours *conn.Conn, _ *rpc.Conn, _ *recConn, _ *peerCalls) {
			_, _ = ours.Shutdown(context.Background(), supervisor.Epitaph{Code: supervisor.OK})
		}, func(t *testing.T, d conn.Down) {
			if d.EpitaphSent || !d.Reason.Expected() {
				t.Errorf("OK close to a peer that is not ours: epitaph sent %v, reason %v", d.EpitaphSent, d.Reason)
			}
		}},
		{"we close with an error epitaph", func(t *testing.T, ours *conn.Conn, _ *rpc.Conn, _ *recConn, _ *peerCalls) {
			_, _ = ours.Shutdown(context.Background(), supervisor.Epitaph{Code: supervisor.Unavailable, Message: "maintenance"})
		}, func(t *testing.T, d conn.Down) {
			if !d.EpitaphSent {
				t.Errorf("an error epitaph must be sent to any peer")
			}
		}},
		{"peer closes (rpc.Conn.Close)", func(t *testing.T, _ *conn.Conn, rc *rpc.Conn, _ *recConn, _ *peerCalls) {
			_ = rc.Close()
		}, func(t *testing.T, d conn.Down) {
			var pa supervisor.PeerAbort
			var pe supervisor.PeerEOF
			if !errors.As(d.Reason, &pa) && !errors.As(d.Reason, &pe) {
				t.Errorf("reason %v, want the peer's Abort or EOF", d.Reason)
			}
		}},
		{"peer vanishes with a call in flight", func(t *testing.T, ours *conn.Conn, _ *rpc.Conn, nc *recConn, e *peerCalls) {
			f, release := startWait(context.Background(), e.boot, 5000)
			defer release()
			for e.impl.Waiting() < 1 { // running on our side
				time.Sleep(time.Millisecond)
			}
			_ = nc.Conn.Close()
			_, _ = f.Struct()
		}, func(t *testing.T, d conn.Down) {
			if d.Reason != (supervisor.PeerEOF{Idle: false}) {
				t.Errorf("reason %v, want PeerEOF with work in flight", d.Reason)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			impl := interop.NewEchoServer()
			server := newSide(t, "server", capnp.Client(impl.Client(actors.NewServer)), conn.Options{LingerTimeout: time.Second})
			addr, err := server.vat.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			raw, err := net.Dial("tcp", addr.String())
			if err != nil {
				t.Fatal(err)
			}
			nc := &recConn{Conn: raw}
			rc := rpc.NewConn(rpc.NewStreamTransport(nc), nil)
			defer rc.Close()
			boot := interop.Echo(rc.Bootstrap(context.Background()))
			defer boot.Release()
			if got, err := echoText(context.Background(), boot, "hi"); err != nil || got != "hi" {
				t.Fatalf("call before the end: %q %v", got, err)
			}
			ours := server.vat.Conns()[0]
			tc.end(t, ours, rc, nc, &peerCalls{boot, impl})
			d := server.waitDown(t)
			tc.check(t, d)
			checkNoAbortEcho(t, server, d)
			select {
			case <-rc.Done():
			case <-time.After(5 * time.Second):
				t.Errorf("go-capnp did not see the connection end")
			}
			if !errors.Is(d.ReadEnd, io.EOF) && !errors.Is(d.ReadEnd, net.ErrClosed) {
				t.Errorf("our read ended with %v, want EOF", d.ReadEnd)
			}
			t.Logf("ours: reason=%v read end=%v epitaph sent=%v; go-capnp read end=%v; frames go-capnp sent after: %d aborts",
				d.Reason, d.ReadEnd, d.EpitaphSent, nc.end(), server.wire.count("recv discarded: abort")+server.wire.count("recv: abort"))
		})
	}
}

// The ways a connection ends, with the C++ reference serving and our
// client vat dialing it. Each case logs what the C++ side did.
func TestEndCxxPeer(t *testing.T) {
	peer := cxxPeer(t)
	cases := []struct {
		name  string
		end   func(t *testing.T, ours *conn.Conn, cmd *exec.Cmd, e interop.Echo)
		check func(t *testing.T, d conn.Down)
	}{
		{"we close gracefully, OK", func(t *testing.T, ours *conn.Conn, _ *exec.Cmd, _ interop.Echo) {
			_, _ = ours.Shutdown(context.Background(), supervisor.Epitaph{Code: supervisor.OK})
		}, func(t *testing.T, d conn.Down) {
			if d.EpitaphSent || !d.Reason.Expected() {
				t.Errorf("OK close to a peer that is not ours: epitaph sent %v, reason %v", d.EpitaphSent, d.Reason)
			}
		}},
		{"we close with an error epitaph", func(t *testing.T, ours *conn.Conn, _ *exec.Cmd, _ interop.Echo) {
			_, _ = ours.Shutdown(context.Background(), supervisor.Epitaph{Code: supervisor.Unavailable, Message: "maintenance"})
		}, func(t *testing.T, d conn.Down) {
			if !d.EpitaphSent {
				t.Errorf("an error epitaph must be sent to any peer")
			}
		}},
		{"peer process killed", func(t *testing.T, _ *conn.Conn, cmd *exec.Cmd, _ interop.Echo) {
			_ = cmd.Process.Kill()
		}, func(t *testing.T, d conn.Down) {
			// The kernel closes the dead process's socket: a FIN, or a
			// reset when it held unread bytes of ours.
			var pe supervisor.PeerEOF
			var te supervisor.TransportError
			if !errors.As(d.Reason, &pe) && !(errors.As(d.Reason, &te) && errors.Is(te, syscall.ECONNRESET)) {
				t.Errorf("reason %v, want PeerEOF or a reset", d.Reason)
			}
			if d.Reason.Expected() {
				t.Errorf("a killed peer must not look like a normal end")
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			addr, cmd := startCxxServer(t, peer)
			client := newSide(t, "client", capnp.Client{}, conn.Options{LingerTimeout: time.Second})
			boot, ours, err := client.vat.Dial(context.Background(), "tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer boot.Release()
			if got, err := echoText(context.Background(), interop.Echo(boot), "hi"); err != nil || got != "hi" {
				t.Fatalf("call before the end: %q %v", got, err)
			}
			tc.end(t, ours, cmd, interop.Echo(boot))
			d := client.waitDown(t)
			tc.check(t, d)
			checkNoAbortEcho(t, client, d)
			t.Logf("ours: reason=%v read end=%v epitaph sent=%v; C++ sent after: %d aborts",
				d.Reason, d.ReadEnd, d.EpitaphSent, client.wire.count("recv discarded: abort")+client.wire.count("recv: abort"))
		})
	}
}
