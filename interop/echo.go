package interop

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	"capnproto.org/go/capnp/v3/server"
)

// EchoServer is the Go implementation of Echo, the same service the C++
// peer (cxxpeer) serves, so that every interop test can run against both.
type EchoServer struct {
	Tag      string
	counters *atomic.Int64 // live Counter objects, shared with derived echos
	waiting  atomic.Int64  // wait() calls running
}

// NewEchoServer returns an Echo server with no tag.
func NewEchoServer() *EchoServer { return &EchoServer{counters: new(atomic.Int64)} }

// Client returns a capability for s, built with build (for example
// actors.NewServer or a plain server.New).
func (s *EchoServer) Client(build func([]server.Method, any) capnp.Client) Echo {
	return Echo(build(Echo_Methods(nil, s), s))
}

// PlainServer builds a client with capnp's server.New.
func PlainServer(methods []server.Method, impl any) capnp.Client {
	sd, _ := impl.(server.Shutdowner)
	return capnp.NewClient(server.New(methods, impl, sd))
}

// Waiting reports the wait() calls running now.
func (s *EchoServer) Waiting() int64 { return s.waiting.Load() }

// Live reports the Counter objects not yet released.
func (s *EchoServer) Live() int64 { return s.counters.Load() }

func (s *EchoServer) Echo(ctx context.Context, call Echo_echo) error {
	text, err := call.Args().Text()
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	return res.SetText(s.Tag + text)
}

func (s *EchoServer) Fail(ctx context.Context, call Echo_fail) error {
	msg, _ := call.Args().Reason()
	return &exc.Exception{Type: exc.Type(call.Args().Type()), Cause: errors.New(msg)}
}

func (s *EchoServer) Self(ctx context.Context, call Echo_self) error {
	tag, err := call.Args().Tag()
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	child := &EchoServer{Tag: s.Tag + tag, counters: s.counters}
	return res.SetEcho(Echo_ServerToClient(child))
}

func (s *EchoServer) NewCounter(ctx context.Context, call Echo_newCounter) error {
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	s.counters.Add(1)
	return res.SetCounter(Counter_ServerToClient(&counter{live: s.counters}))
}

func (s *EchoServer) LiveCounters(ctx context.Context, call Echo_liveCounters) error {
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetN(uint32(s.counters.Load()))
	return nil
}

func (s *EchoServer) CallBack(ctx context.Context, call Echo_callBack) error {
	cb := call.Args().Callback()
	text, err := call.Args().Text()
	if err != nil {
		return err
	}
	call.Go()
	f, release := cb.Call(ctx, func(p Callback_call_Params) error { return p.SetText(text) })
	// Waits no longer than its own call lives. go-capnp's rpc.Conn, at
	// its end, waits for its handlers before it fails their calls, and
	// its release waits for the call's Return: a handler waiting on (or
	// releasing) a callback over a connection that is gone would hold
	// that end for ever, so it returns and releases in the background.
	select {
	case <-f.Done():
		defer release()
	case <-ctx.Done():
		go release()
		return ctx.Err()
	}
	r, err := f.Struct()
	if err != nil {
		return err
	}
	out, err := r.Text()
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	return res.SetText(out)
}

type counter struct {
	n    uint32
	live *atomic.Int64
}

func (c *counter) Next(ctx context.Context, call Counter_next) error {
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	c.n++
	res.SetN(c.n)
	return nil
}

// Shutdown is called when the last reference is released.
func (c *counter) Shutdown() { c.live.Add(-1) }

// Wait returns its argument after that many milliseconds, or the call's
// context error if it ends first. Other calls run meanwhile.
func (s *EchoServer) Wait(ctx context.Context, call Echo_wait) error {
	s.waiting.Add(1)
	defer s.waiting.Add(-1)
	call.Go()
	ms := call.Args().Ms()
	t := time.NewTimer(time.Duration(ms) * time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return ctx.Err()
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetMs(ms)
	return nil
}

// CallbackFunc implements Callback with a function.
type CallbackFunc func(string) (string, error)

func (f CallbackFunc) Call(ctx context.Context, call Callback_call) error {
	in, err := call.Args().Text()
	if err != nil {
		return err
	}
	out, err := f(in)
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	return res.SetText(out)
}
