package main

import (
	"bytes"
	"context"
	"net"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
	"github.com/asynkron/protoactor-go/actor"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/vatactor/vatactor/actors"
	"github.com/vatactor/vatactor/bench/schema"
	"github.com/vatactor/vatactor/conn"
	"github.com/vatactor/vatactor/supervisor"
)

// The hot paths one at a time, for benchstat:
//
//	go test -run XXX -bench . -benchmem -count 10 ./bench > old.txt
//	(change)
//	go test -run XXX -bench . -benchmem -count 10 ./bench > new.txt
//	benchstat old.txt new.txt

// callMessage is an echo Call of 64 bytes, as a client sends it.
func callMessage(tb testing.TB) *capnp.Message {
	msg, seg := capnp.NewSingleSegmentMessage(nil)
	m, err := rpccp.NewRootMessage(seg)
	if err != nil {
		tb.Fatal(err)
	}
	call, _ := m.NewCall()
	call.SetQuestionId(7)
	call.SetInterfaceId(schema.Bench_TypeID)
	call.SetMethodId(0)
	tgt, _ := call.NewTarget()
	tgt.SetImportedCap(0)
	params, _ := call.NewParams()
	args, _ := schema.NewBench_echo_Params(params.Segment())
	_ = args.SetData(small)
	_ = params.SetContent(args.ToPtr())
	return msg
}

// discardConn is a net.Conn that keeps the last write.
type discardConn struct {
	net.Conn
	last []byte
}

func (c *discardConn) Write(p []byte) (int, error) {
	c.last = append(c.last[:0], p...)
	return len(p), nil
}

// replayConn is a net.Conn whose reads return the same bytes forever.
type replayConn struct {
	net.Conn
	frame []byte
	r     bytes.Reader
}

func (c *replayConn) Read(p []byte) (int, error) {
	if c.r.Len() == 0 {
		c.r.Reset(c.frame)
	}
	return c.r.Read(p)
}

// BenchmarkCallEncode frames a Call for the wire (the writer's work).
func BenchmarkCallEncode(b *testing.B) {
	msg := callMessage(b)
	out := &discardConn{}
	t := conn.NewStreamTransport(out, conn.Limits{})
	frames := []conn.Frame{{Msg: msg}}
	b.ReportAllocs()
	for b.Loop() {
		if err := t.SendFrames(frames); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCallDecode reads a framed Call and its target and params (the
// reader's and the connection's work before delivery).
func BenchmarkCallDecode(b *testing.B) {
	out := &discardConn{}
	if err := conn.NewStreamTransport(out, conn.Limits{}).SendFrames([]conn.Frame{{Msg: callMessage(b)}}); err != nil {
		b.Fatal(err)
	}
	t := conn.NewStreamTransport(&replayConn{frame: out.last}, conn.Limits{})
	b.ReportAllocs()
	for b.Loop() {
		f, err := t.RecvFrame()
		if err != nil {
			b.Fatal(err)
		}
		m, err := rpccp.ReadRootMessage(f.Msg)
		if err != nil {
			b.Fatal(err)
		}
		call, _ := m.Call()
		tgt, _ := call.Target()
		params, _ := call.Params()
		content, _ := params.Content()
		if tgt.ImportedCap() != 0 || !content.IsValid() {
			b.Fatal("decoded the wrong call")
		}
		f.Msg.Release()
	}
}

// BenchmarkQuestionRoundTrip is one echo call between two connection
// actors over an in-memory pipe (net.Pipe, real framing): the question
// actor, the answer, both connections' readers and writers, no socket.
func BenchmarkQuestionRoundTrip(b *testing.B) { questionRoundTrip(b, nil) }

// BenchmarkQuestionRoundTripMetered is BenchmarkQuestionRoundTrip with
// an SDK meter provider recording every instrument on both sides: the
// CPU cost of metering, without the scheduling noise of TCP (run it
// pinned: GOMAXPROCS=1 taskset -c 1).
func BenchmarkQuestionRoundTripMetered(b *testing.B) {
	questionRoundTrip(b, sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader())))
}

func questionRoundTrip(b *testing.B, mp metric.MeterProvider) {
	sys := actors.QuietSystem()
	defer sys.Shutdown()
	ca, cb := net.Pipe()
	_, boot := newBench(actors.NewServer)
	defer boot.Release() // the connection took its own reference
	server := conn.Spawn(sys.Root, sys.Root, conn.NewStreamTransport(ca, conn.Limits{}), conn.Options{Bootstrap: boot, Role: "server", MeterProvider: mp})
	client := conn.Spawn(sys.Root, sys.Root, conn.NewStreamTransport(cb, conn.Limits{}), conn.Options{Role: "client", MeterProvider: mp})
	bench := schema.Bench(client.Bootstrap(context.Background()))
	echo := echoOp(small)
	ctx := context.Background()
	if err := echo(ctx, implVatactor, bench); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := echo(ctx, implVatactor, bench); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	bench.Release()
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, _ = client.Shutdown(sctx, supervisor.Epitaph{Code: supervisor.OK})
	<-server.Done()
}

// hopActor answers every echo call itself.
type hopActor struct{}

func (hopActor) Receive(ctx actor.Context) {
	call, ok := ctx.Message().(*actors.Call)
	if !ok {
		return
	}
	data, _ := schema.Bench_echo_Params(call.Args()).Data()
	res, err := call.AllocResults(capnp.ObjectSize{PointerCount: 1})
	if err == nil {
		err = schema.Bench_echo_Results(res).SetData(data)
	}
	call.Return(err)
}

// BenchmarkActorHop is one echo call into a capability implemented by an
// actor (actors.ActorClient): the mailbox hop and back, no connection.
func BenchmarkActorHop(b *testing.B) {
	sys := actors.QuietSystem()
	defer sys.Shutdown()
	pid := sys.Root.Spawn(actors.CapabilityProps(func() actor.Actor { return hopActor{} }))
	bench := schema.Bench(actors.ActorClient(sys, pid))
	defer bench.Release()
	echo := echoOp(small)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := echo(ctx, implVatactor, bench); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEchoTCP is the echo scenario as a Go benchmark: one call over
// loopback TCP, vatactor and go-capnp in the same run.
func BenchmarkEchoTCP(b *testing.B) {
	for _, impl := range []string{implVatactor, implGoCapnp} {
		b.Run(impl, func(b *testing.B) {
			e, err := connect(impl, setup{conns: 1})
			if err != nil {
				b.Fatal(err)
			}
			defer e.close()
			echo := echoOp(small)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if err := echo(ctx, impl, e.clients[0]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkScenario runs each sequential scenario of go run ./bench as a
// Go benchmark on vatactor over loopback TCP (echo/traced and
// echo/metered with the feature on), for allocation profiles:
//
//	go test -run XXX -bench Scenario/pipeline3 -benchtime 3000x \
//	    -memprofile mem.out -memprofilerate 1 ./bench
func BenchmarkScenario(b *testing.B) {
	for _, sc := range scenarios() {
		if sc.conns != 1 || sc.workers != 1 {
			continue
		}
		su := setup{conns: 1, window: sc.window}
		switch sc.feature { // echo/traced, echo/metered: the feature on
		case traced:
			su.tracer = sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))
		case metered:
			su.meter = sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
		}
		b.Run(sc.name, func(b *testing.B) {
			e, err := connect(implVatactor, su)
			if err != nil {
				b.Fatal(err)
			}
			defer e.close()
			ctx := context.Background()
			for range max(sc.warmup, 1) {
				if err := sc.op(ctx, implVatactor, e.clients[0]); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			for b.Loop() {
				if err := sc.op(ctx, implVatactor, e.clients[0]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
