package main

import (
	"context"
	"sync"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/server"

	"github.com/vatactor/vatactor/bench/schema"
)

// newServerFunc builds a capability from a server's methods: actors.NewServer
// for vatactor, capnp's server.New for go-capnp.
type newServerFunc func(methods []server.Method, impl any) capnp.Client

// benchServer implements schema.Bench, the same code for every
// implementation.
type benchServer struct {
	newServer newServerFunc
	self      capnp.WeakClient // for next(): this same Bench
	holds     *holds           // shared by the capabilities of one server
}

// holds are the hold() calls waiting for release().
type holds struct {
	mu   sync.Mutex
	held []chan struct{}
}

// newBench returns a Bench server and its capability, built with
// newServer.
func newBench(newServer newServerFunc) (*benchServer, capnp.Client) {
	return newBenchOf(newServer, &holds{})
}

func newBenchOf(newServer newServerFunc, h *holds) (*benchServer, capnp.Client) {
	s := &benchServer{newServer: newServer, holds: h}
	c := newServer(schema.Bench_Methods(nil, s), s)
	s.self = c.WeakRef()
	return s, c
}

// forConn returns a capability of its own for one connection, with the
// same state: capnp's server runs a capability's calls one at a time,
// so connections that shared one would queue behind each other (each
// implementation's server hands one to each connection).
func (s *benchServer) forConn() capnp.Client {
	_, c := newBenchOf(s.newServer, s.holds)
	return c
}

// holding reports how many hold() calls are waiting.
func (s *benchServer) holding() int {
	s.holds.mu.Lock()
	defer s.holds.mu.Unlock()
	return len(s.holds.held)
}

func (s *benchServer) Echo(ctx context.Context, call schema.Bench_echo) error {
	data, err := call.Args().Data()
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	return res.SetData(data)
}

func (s *benchServer) Next(ctx context.Context, call schema.Bench_next) error {
	self, ok := s.self.AddRef()
	if !ok {
		return context.Canceled
	}
	res, err := call.AllocResults()
	if err != nil {
		self.Release()
		return err
	}
	return res.SetBench(schema.Bench(self))
}

func (s *benchServer) Upload(ctx context.Context, call schema.Bench_upload) error {
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	sink := &sinkServer{}
	return res.SetSink(schema.Sink(s.newServer(schema.Sink_Methods(nil, sink), sink)))
}

// Hold stays in flight (off the server's call queue) until Unhold.
func (s *benchServer) Hold(ctx context.Context, call schema.Bench_hold) error {
	ch := make(chan struct{})
	s.holds.mu.Lock()
	s.holds.held = append(s.holds.held, ch)
	s.holds.mu.Unlock()
	call.Go()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *benchServer) Unhold(ctx context.Context, call schema.Bench_unhold) error {
	s.holds.mu.Lock()
	held := s.holds.held
	s.holds.held = nil
	s.holds.mu.Unlock()
	for _, ch := range held {
		close(ch)
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetN(uint32(len(held)))
	return nil
}

// sinkServer counts what one upload wrote.
type sinkServer struct {
	chunks uint32
	bytes  uint64
}

func (s *sinkServer) Write(ctx context.Context, call schema.Sink_write) error {
	chunk, err := call.Args().Chunk()
	if err != nil {
		return err
	}
	s.chunks++
	s.bytes += uint64(len(chunk))
	return nil
}

func (s *sinkServer) Done(ctx context.Context, call schema.Sink_done) error {
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetChunks(s.chunks)
	res.SetBytes(s.bytes)
	return nil
}
