package main

import (
	"context"
	"fmt"
	"sync"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/server"

	"github.com/vatactor/vatactor/bench/schema"
)

// newServerFunc builds a capability from a server's methods: actors.NewServer
// for vatactor, capnp's server.New for go-capnp.
type newServerFunc func(methods []server.Method, impl any) capnp.Client

// benchServer implements schema.Bench, the same code for both
// implementations.
type benchServer struct {
	newServer newServerFunc
	self      capnp.WeakClient // for next(): this same Bench

	mu   sync.Mutex
	held []chan struct{} // hold() calls waiting for release()
}

// newBench returns a Bench server and its capability, built with
// newServer.
func newBench(newServer newServerFunc) (*benchServer, capnp.Client) {
	s := &benchServer{newServer: newServer}
	c := newServer(schema.Bench_Methods(nil, s), s)
	s.self = c.WeakRef()
	return s, c
}

// holding reports how many hold() calls are waiting.
func (s *benchServer) holding() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.held)
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
	s.mu.Lock()
	s.held = append(s.held, ch)
	s.mu.Unlock()
	call.Go()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *benchServer) Unhold(ctx context.Context, call schema.Bench_unhold) error {
	s.mu.Lock()
	held := s.held
	s.held = nil
	s.mu.Unlock()
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

// Tree builds a complete tree of the depth and fan-out asked for. It lets
// the next call begin at once (call.Go): the work is the server's, and
// calls from other connections need not wait for it.
func (s *benchServer) Tree(ctx context.Context, call schema.Bench_tree) error {
	call.Go()
	depth, fanout := call.Args().Depth(), call.Args().Fanout()
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	t, err := res.NewTree()
	if err != nil {
		return err
	}
	var next uint64
	return fillTree(t, depth, fanout, &next)
}

// Put returns the length of its argument.
func (s *benchServer) Put(ctx context.Context, call schema.Bench_put) error {
	data, err := call.Args().Data()
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetN(uint64(len(data)))
	return nil
}

// Get returns n bytes (of large's, so that no work but the copy into the
// results is the server's).
func (s *benchServer) Get(ctx context.Context, call schema.Bench_get) error {
	n := int(call.Args().N())
	if n > len(large) {
		return fmt.Errorf("get: at most %d bytes", len(large))
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	return res.SetData(large[:n])
}

// fillTree fills t as a complete tree, numbering its nodes in pre-order.
func fillTree(t schema.Tree, depth, fanout uint8, next *uint64) error {
	t.SetValue(*next)
	*next++
	if depth <= 1 {
		return nil
	}
	kids, err := t.NewChildren(int32(fanout))
	if err != nil {
		return err
	}
	for i := range kids.Len() {
		if err := fillTree(kids.At(i), depth-1, fanout, next); err != nil {
			return err
		}
	}
	return nil
}

// treeNodes is how many nodes a complete tree of depth and fanout has.
func treeNodes(depth, fanout int) int {
	n, level := 0, 1
	for range depth {
		n += level
		level *= fanout
	}
	return n
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
