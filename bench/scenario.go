package main

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"capnproto.org/go/capnp/v3/flowcontrol"

	"github.com/vatactor/vatactor/bench/schema"
)

// A scenario is one kind of work, run the same way against each
// implementation: conns connections, each with workers goroutines that
// repeat op back to back (so workers calls are in flight per connection).
type scenario struct {
	name    string
	doc     string
	conns   int
	workers int
	// op does one unit of work; calls is how many calls it counts for.
	op    func(ctx context.Context, impl string, b schema.Bench) error
	calls int
	// grpcOp is the same work for gRPC-Go (nil: the scenario has no
	// gRPC equivalent, and gRPC-Go sits it out).
	grpcOp func(ctx context.Context, g *grpcBench) error
	// cxx names the same work for the C++ client (bench.c++'s SCENARIO;
	// empty: the C++ client sits it out).
	cxx string
	// costOf, if set, names the scenario this one is with a feature on
	// (feature: traced, every span recorded; metered, every instrument
	// recording): it runs vatactor only, alternating with the same work
	// without it ("<costOf>/un<feature>").
	costOf, feature string
	// window is the flow control window of the client's calls (0: none).
	window int
	// warmup is how many ops each worker does before the clock starts
	// (default warmupOps).
	warmup int
}

// Payloads and sizes of the scenarios.
const (
	smallPayload = 64
	largePayload = 1 << 20
	streamChunks = 10_000
	streamChunk  = 1 << 10
	// streamWindow is the flow-control window of the upload, the same
	// for both implementations: bytes of writes in flight.
	streamWindow = 256 << 10
)

var (
	small = make([]byte, smallPayload)
	large = make([]byte, largePayload)
	chunk = make([]byte, streamChunk)
)

// The features whose cost a scenario measures (scenario.feature).
const (
	traced  = "traced"
	metered = "metered"
)

func scenarios() []scenario {
	return []scenario{
		{name: "echo", doc: "sequential echo of 64 bytes, one connection",
			conns: 1, workers: 1, op: echoOp(small), grpcOp: grpcEchoOp(small), cxx: "echo64", calls: 1},
		{name: "inflight64", doc: "64 echo calls in flight on one connection",
			conns: 1, workers: 64, op: echoOp(small), grpcOp: grpcEchoOp(small), cxx: "echo64", calls: 1},
		{name: "conns100x8", doc: "100 connections × 8 echo calls in flight",
			conns: 100, workers: 8, op: echoOp(small), grpcOp: grpcEchoOp(small), cxx: "echo64", calls: 1, warmup: 2},
		{name: "payload1MiB", doc: "sequential echo of 1 MiB",
			conns: 1, workers: 1, op: echoOp(large), grpcOp: grpcEchoOp(large), cxx: "echo1MiB", calls: 1, warmup: 3},
		{name: "put1MiB", doc: "sequential put(1 MiB) -> its length: a large request, a small reply",
			conns: 1, workers: 1, op: putOp, grpcOp: grpcPutOp, cxx: "put1MiB", calls: 1, warmup: 3},
		{name: "get1MiB", doc: "sequential get(1 MiB) -> 1 MiB: a small request, a large reply",
			conns: 1, workers: 1, op: getOp, grpcOp: grpcGetOp, cxx: "get1MiB", calls: 1, warmup: 3},
		{name: "pipeline3", doc: "next().next().echo() pipelined, waiting for the last (one op = 3 calls; gRPC has no pipelining)",
			conns: 1, workers: 1, op: pipelineOp, cxx: "pipeline3", calls: 3},
		{name: "stream10k", doc: "upload of 10k × 1 KiB -> stream writes, 256 KiB window (gRPC: a client stream); one op = one upload",
			conns: 1, workers: 1, op: uploadOp, grpcOp: grpcUploadOp, cxx: "stream10k", calls: streamChunks + 2, window: streamWindow, warmup: 1},
		{name: "tree16", doc: "16 connections, each asking for a deep tree (6 levels × 4 children, 1,365 nodes) and walking it",
			conns: 16, workers: 1, op: treeOp, grpcOp: grpcTreeOp, cxx: "tree", calls: 1, warmup: 3},
		{name: "echo/traced", doc: "echo with every span recorded, alternating with echo/untraced (vatactor only)",
			conns: 1, workers: 1, op: echoOp(small), calls: 1, costOf: "echo", feature: traced},
		{name: "inflight64/traced", doc: "inflight64 with every span recorded, alternating with inflight64/untraced (vatactor only)",
			conns: 1, workers: 64, op: echoOp(small), calls: 1, costOf: "inflight64", feature: traced},
		{name: "echo/metered", doc: "echo with an SDK meter provider recording every instrument, alternating with echo/unmetered (vatactor only)",
			conns: 1, workers: 1, op: echoOp(small), calls: 1, costOf: "echo", feature: metered},
		{name: "inflight64/metered", doc: "inflight64 with every instrument recording, alternating with inflight64/unmetered (vatactor only)",
			conns: 1, workers: 64, op: echoOp(small), calls: 1, costOf: "inflight64", feature: metered},
	}
}

func echoOp(payload []byte) func(context.Context, string, schema.Bench) error {
	return func(ctx context.Context, _ string, b schema.Bench) error {
		f, release := b.Echo(ctx, func(p schema.Bench_echo_Params) error { return p.SetData(payload) })
		defer release()
		res, err := f.Struct()
		if err != nil {
			return err
		}
		data, err := res.Data()
		if err != nil {
			return err
		}
		if len(data) != len(payload) {
			return fmt.Errorf("echo returned %d bytes, sent %d", len(data), len(payload))
		}
		return nil
	}
}

func putOp(ctx context.Context, _ string, b schema.Bench) error {
	f, release := b.Put(ctx, func(p schema.Bench_put_Params) error { return p.SetData(large) })
	defer release()
	res, err := f.Struct()
	if err != nil {
		return err
	}
	if res.N() != uint64(len(large)) {
		return fmt.Errorf("put: the server got %d bytes, sent %d", res.N(), len(large))
	}
	return nil
}

func getOp(ctx context.Context, _ string, b schema.Bench) error {
	f, release := b.Get(ctx, func(p schema.Bench_get_Params) error { p.SetN(uint32(len(large))); return nil })
	defer release()
	res, err := f.Struct()
	if err != nil {
		return err
	}
	data, err := res.Data()
	if err != nil {
		return err
	}
	if len(data) != len(large) {
		return fmt.Errorf("get: %d bytes, want %d", len(data), len(large))
	}
	return nil
}

func grpcPutOp(ctx context.Context, g *grpcBench) error { return g.put(ctx) }
func grpcGetOp(ctx context.Context, g *grpcBench) error { return g.get(ctx) }

// The tree of the deep scenario: 6 levels of 4 children, 1,365 nodes.
const (
	treeDepth  = 6
	treeFanout = 4
)

// treeOp asks for a tree and walks all of it.
func treeOp(ctx context.Context, _ string, b schema.Bench) error {
	f, release := b.Tree(ctx, func(p schema.Bench_tree_Params) error {
		p.SetDepth(treeDepth)
		p.SetFanout(treeFanout)
		return nil
	})
	defer release()
	res, err := f.Struct()
	if err != nil {
		return err
	}
	t, err := res.Tree()
	if err != nil {
		return err
	}
	var sum, n uint64
	if err := walkTree(t, &sum, &n); err != nil {
		return err
	}
	if want := uint64(treeNodes(treeDepth, treeFanout)); n != want || sum != want*(want-1)/2 {
		return fmt.Errorf("tree of %d nodes summing to %d, want %d", n, sum, want)
	}
	return nil
}

func walkTree(t schema.Tree, sum, n *uint64) error {
	*sum += t.Value()
	*n++
	kids, err := t.Children()
	if err != nil {
		return err
	}
	for i := range kids.Len() {
		if err := walkTree(kids.At(i), sum, n); err != nil {
			return err
		}
	}
	return nil
}

func grpcEchoOp(payload []byte) func(context.Context, *grpcBench) error {
	return func(ctx context.Context, g *grpcBench) error { return g.echo(ctx, payload) }
}

func grpcUploadOp(ctx context.Context, g *grpcBench) error { return g.upload(ctx) }

func grpcTreeOp(ctx context.Context, g *grpcBench) error { return g.tree(ctx) }

func pipelineOp(ctx context.Context, _ string, b schema.Bench) error {
	n1, r1 := b.Next(ctx, nil)
	defer r1()
	n2, r2 := n1.Bench().Next(ctx, nil)
	defer r2()
	return echoOp(small)(ctx, "", n2.Bench())
}

func uploadOp(ctx context.Context, impl string, b schema.Bench) error {
	up, release := b.Upload(ctx, nil)
	defer release()
	sink := up.Sink().AddRef()
	defer sink.Release()
	// vatactor's window (Options.FlowWindow) counts calls on an import,
	// so both wait for the sink before streaming into it.
	if err := sink.Resolve(ctx); err != nil {
		return err
	}
	if impl == implGoCapnp {
		// go-capnp's flow control: a limiter on the client reference.
		sink.SetFlowLimiter(flowcontrol.NewFixedLimiter(streamWindow))
	}
	for range streamChunks {
		if err := sink.Write(ctx, func(p schema.Sink_write_Params) error { return p.SetChunk(chunk) }); err != nil {
			return err
		}
	}
	done, release2 := sink.Done(ctx, nil)
	defer release2()
	res, err := done.Struct()
	if err != nil {
		return err
	}
	if err := sink.WaitStreaming(); err != nil {
		return err
	}
	if res.Chunks() != streamChunks || res.Bytes() != streamChunks*streamChunk {
		return fmt.Errorf("sink got %d chunks, %d bytes", res.Chunks(), res.Bytes())
	}
	return nil
}

// result is what one scenario measured for one implementation, summed
// over its rounds.
type result struct {
	scenario, impl string
	ops, calls     uint64
	elapsed        time.Duration
	mallocs, bytes uint64
	lat            hist
	err            error
	// foreign: a C++ client measured it; its allocations are not counted.
	foreign bool
	// roundRates: calls/s of each round, in order.
	roundRates []float64
	// cpu is the machine's busy time over the rounds whose cpu was
	// measured (cpu.go), cpuCalls their calls.
	cpu      time.Duration
	cpuCalls uint64
}

// cpuPerCall is the machine's busy time per call, and whether it was
// measured.
func (r *result) cpuPerCall() (time.Duration, bool) {
	if r.cpuCalls == 0 {
		return 0, false
	}
	return r.cpu / time.Duration(r.cpuCalls), true
}

// pairedCost is a feature's cost from the rounds of the scenario with it
// on and with it off: 1 − the median, over rounds, of on/off calls/s.
// runScenario runs the two one after the other each round (in turn
// first), so a round's pair shares the machine's state of the moment,
// and the median drops the rounds a neighbour's burst upset; the ratio of
// the totals would carry every burst.
func pairedCost(on, off *result) float64 {
	n := min(len(on.roundRates), len(off.roundRates))
	if n == 0 {
		return 0
	}
	ratios := make([]float64, 0, n)
	for i := range n {
		if off.roundRates[i] > 0 {
			ratios = append(ratios, on.roundRates[i]/off.roundRates[i])
		}
	}
	if len(ratios) == 0 {
		return 0
	}
	slices.Sort(ratios)
	m := ratios[len(ratios)/2]
	if len(ratios)%2 == 0 {
		m = (ratios[len(ratios)/2-1] + m) / 2
	}
	return 1 - m
}

func (r *result) callsPerSec() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.calls) / r.elapsed.Seconds()
}

func (r *result) allocsPerCall() float64 {
	if r.calls == 0 {
		return 0
	}
	return float64(r.mallocs) / float64(r.calls)
}

func (r *result) bytesPerCall() float64 {
	if r.calls == 0 {
		return 0
	}
	return float64(r.bytes) / float64(r.calls)
}

// warmupOps is how many ops each worker of a scenario does before the
// clock starts, unless the scenario says otherwise.
const warmupOps = 20

// measure runs sc on a fresh env of impl for d and adds what it measured
// to r. With s.clientProcess, or a C++ client, the client side is a
// process of its own (measureProcess).
func measure(sc scenario, impl string, s setup, d time.Duration, r *result) error {
	if cxxClient(impl) || s.clientProcess {
		return measureProcess(sc, impl, s, d, r)
	}
	e, err := connect(impl, s)
	if err != nil {
		return err
	}
	defer e.close()
	run, err := runOps(clientOps(sc, impl, e.clients, e.grpc), sc.workers, sc.warmupOps(), d)
	if err != nil {
		return fmt.Errorf("%s on %s: %w", sc.name, impl, err)
	}
	r.add(run, sc.calls)
	return nil
}

// add adds one round's run to r; calls is how many calls an op counts
// for.
func (r *result) add(run *opsRun, calls int) {
	r.elapsed += run.elapsed
	r.mallocs += run.mallocs
	r.bytes += run.bytes
	r.ops += run.ops
	n := run.ops * uint64(calls)
	r.calls += n
	r.lat.merge(&run.lat)
	r.roundRates = append(r.roundRates, float64(n)/run.elapsed.Seconds())
	if run.cpuKnown {
		r.cpu += run.cpu
		r.cpuCalls += n
	}
}

// warmupOps is how many ops each of sc's workers does before the clock
// starts.
func (sc scenario) warmupOps() int {
	if sc.warmup == 0 {
		return warmupOps
	}
	return sc.warmup
}

// clientOps is sc's op on each connection of a client of impl: its
// bootstrap capabilities, or its gRPC connections.
func clientOps(sc scenario, impl string, benches []schema.Bench, grpc []*grpcBench) []func(context.Context) error {
	var ops []func(context.Context) error
	for _, b := range benches {
		ops = append(ops, func(ctx context.Context) error { return sc.op(ctx, impl, b) })
	}
	for _, g := range grpc {
		ops = append(ops, func(ctx context.Context) error { return sc.grpcOp(ctx, g) })
	}
	return ops
}

// opsRun is what the workers of one measurement did, and what this
// process allocated meanwhile (nothing counted for a client process's).
type opsRun struct {
	elapsed        time.Duration
	ops            uint64
	lat            hist
	mallocs, bytes uint64
	cpu            time.Duration // the machine's busy time meanwhile (cpu.go)
	cpuKnown       bool
}

// runOps runs workers goroutines on each of ops: each does warmup ops,
// then, once all are warm, ops back to back for d, timing each.
func runOps(ops []func(context.Context) error, workers, warmup int, d time.Duration) (*opsRun, error) {
	ctx := context.Background()
	type worker struct {
		lat hist
		ops uint64
		err error
	}
	all := make([]*worker, 0, len(ops)*workers)
	var (
		ready, done sync.WaitGroup
		start       = make(chan struct{})
		stop        atomic.Bool
	)
	for _, op := range ops {
		for range workers {
			w := new(worker)
			all = append(all, w)
			ready.Add(1)
			done.Add(1)
			go func() {
				defer done.Done()
				for range warmup {
					if w.err = op(ctx); w.err != nil {
						break
					}
				}
				ready.Done()
				<-start
				for w.err == nil && !stop.Load() {
					t0 := time.Now()
					if w.err = op(ctx); w.err == nil {
						w.lat.add(time.Since(t0))
						w.ops++
					}
				}
			}()
		}
	}
	ready.Wait()
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	busy := openBusyWindow()
	t0 := time.Now()
	close(start)
	time.Sleep(d)
	stop.Store(true)
	done.Wait()
	run := &opsRun{elapsed: time.Since(t0)}
	run.cpu, run.cpuKnown = busy.took()
	runtime.ReadMemStats(&after)
	run.mallocs = after.Mallocs - before.Mallocs
	run.bytes = after.TotalAlloc - before.TotalAlloc
	for _, w := range all {
		if w.err != nil {
			return nil, w.err
		}
		run.ops += w.ops
		run.lat.merge(&w.lat)
	}
	return run, nil
}
