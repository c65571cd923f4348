package main

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc"
	"capnproto.org/go/capnp/v3/server"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/vatactor/vatactor/actors"
	"github.com/vatactor/vatactor/bench/schema"
	"github.com/vatactor/vatactor/conn"
	"github.com/vatactor/vatactor/supervisor"
)

// Implementation names, as printed in the "impl" field.
const (
	implVatactor = "vatactor"
	implGoCapnp  = "go-capnp"
)

// setup is what a scenario asks of an implementation.
type setup struct {
	conns  int                  // client connections to the server, each with its bootstrap Bench
	tracer trace.TracerProvider // vatactor only; nil: the global (no-op) provider
	meter  metric.MeterProvider // vatactor only; nil: the global (no-op) provider
	// window is the flow control of the client's calls, in bytes (0:
	// none): vatactor's Options.FlowWindow; go-capnp's limiter is set by
	// the scenario on the capability it streams to.
	window int
	// clientProcess: the client side runs in a process of its own
	// (measureProcess); a C++ client always does.
	clientProcess bool
}

// serverSide is a Bench server of one implementation listening on
// loopback TCP.
type serverSide struct {
	addr  string
	bench *benchServer
	// conns counts the connections it serves.
	conns func() int
	// shutdown ends it and every connection: vatactor's graceful
	// Vat.Shutdown, go-capnp's rpc.Conn.Close on each connection at once.
	shutdown func(ctx context.Context) error
}

// clientSide is a client of one implementation and its bootstrap
// capabilities, one per connection (gRPC: its connections).
type clientSide struct {
	benches []schema.Bench
	grpc    []*grpcBench
	close   func()
}

// env is one running server and its connected clients.
type env struct {
	server  *benchServer
	clients []schema.Bench
	grpc    []*grpcBench
	close   func()
}

// connect starts a server of implementation impl and dials it s.conns
// times from a client of the same implementation.
func connect(impl string, s setup) (*env, error) {
	srv, err := startServer(impl, s)
	if err != nil {
		return nil, err
	}
	cli, err := dial(impl, srv.addr, s)
	if err != nil {
		_ = srv.shutdown(context.Background())
		return nil, err
	}
	return &env{server: srv.bench, clients: cli.benches, grpc: cli.grpc, close: func() {
		cli.close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.shutdown(ctx)
	}}, nil
}

func startServer(impl string, s setup) (*serverSide, error) {
	switch impl {
	case implVatactor:
		return startVatServer(s)
	case implGoCapnp:
		return startGoCapnpServer()
	case implGRPC:
		return startGRPCServer()
	case implCxx, implVatToCxx:
		return startCxxServer()
	}
	return nil, fmt.Errorf("unknown implementation %q", impl)
}

func dial(impl, addr string, s setup) (*clientSide, error) {
	switch impl {
	case implVatactor:
		return dialVat(addr, s)
	case implGoCapnp:
		return dialGoCapnp(addr, s.conns)
	case implGRPC:
		return dialGRPC(addr, s.conns)
	case implVatToCxx:
		return dialVat(addr, s)
	}
	return nil, fmt.Errorf("unknown implementation %q", impl)
}

// vatOptions are the connection options of the bench vats: room for the
// 10,000 live questions of the scale figures, and the flow control
// window; the rest default.
func vatOptions(window int) conn.Options {
	return conn.Options{MaxAnswers: 1 << 15, FlowWindow: window}
}

func startVatServer(s setup) (*serverSide, error) {
	bs, boot := newBench(actors.NewServer)
	v := actors.Spawn(actors.Options{Name: "bench-server", Bootstrap: boot, Conn: vatOptions(0), TracerProvider: s.tracer, MeterProvider: s.meter})
	addr, err := v.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		v.Stop()
		return nil, err
	}
	return &serverSide{
		addr:  addr.String(),
		bench: bs,
		conns: func() int { return len(v.Conns()) },
		shutdown: func(ctx context.Context) error {
			_, err := v.Shutdown(ctx, supervisor.Epitaph{Code: supervisor.OK})
			return err
		},
	}, nil
}

func dialVat(addr string, s setup) (*clientSide, error) {
	v := actors.Spawn(actors.Options{Name: "bench-client", Conn: vatOptions(s.window), TracerProvider: s.tracer, MeterProvider: s.meter})
	c := &clientSide{}
	c.close = func() {
		for _, b := range c.benches {
			b.Release()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _ = v.Shutdown(ctx, supervisor.Epitaph{Code: supervisor.OK})
	}
	for range s.conns {
		boot, _, err := v.Dial(context.Background(), "tcp", addr)
		if err != nil {
			c.close()
			return nil, err
		}
		c.benches = append(c.benches, schema.Bench(boot))
	}
	return c, nil
}

// plainServer builds a capability with capnp's own server.New.
func plainServer(methods []server.Method, impl any) capnp.Client {
	return capnp.NewClient(server.New(methods, impl, nil))
}

func startGoCapnpServer() (*serverSide, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	bs, boot := newBench(plainServer)
	var (
		mu        sync.Mutex
		conns     []*rpc.Conn
		accepting sync.WaitGroup
	)
	accepting.Add(1)
	go func() {
		defer accepting.Done()
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			c := rpc.NewConn(rpc.NewStreamTransport(nc), &rpc.Options{BootstrapClient: boot.AddRef()})
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	return &serverSide{
		addr:  l.Addr().String(),
		bench: bs,
		conns: func() int {
			mu.Lock()
			defer mu.Unlock()
			return len(conns)
		},
		shutdown: func(ctx context.Context) error {
			l.Close()
			accepting.Wait()
			mu.Lock()
			cs := conns
			conns = nil
			mu.Unlock()
			var wg sync.WaitGroup
			for _, c := range cs {
				wg.Go(func() { _ = c.Close() })
			}
			wg.Wait()
			boot.Release()
			return ctx.Err()
		},
	}, nil
}

func dialGoCapnp(addr string, n int) (*clientSide, error) {
	var conns []*rpc.Conn
	c := &clientSide{}
	c.close = func() {
		for _, b := range c.benches {
			b.Release()
		}
		for _, rc := range conns {
			_ = rc.Close()
		}
	}
	for range n {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			c.close()
			return nil, err
		}
		rc := rpc.NewConn(rpc.NewStreamTransport(nc), nil)
		conns = append(conns, rc)
		c.benches = append(c.benches, schema.Bench(rc.Bootstrap(context.Background())))
	}
	return c, nil
}
