package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// gRPC-Go, what a Go team would pick instead: the same work as a small
// protobuf service, over loopback TCP without TLS, like the others.
//
//	service Bench {
//	  rpc Echo(google.protobuf.BytesValue) returns (google.protobuf.BytesValue);
//	  rpc Upload(stream google.protobuf.BytesValue) returns (google.protobuf.UInt64Value);
//	}
//
// The messages are protobuf's well-known wrappers, so the service needs no
// generated code: its descriptor is written out below as protoc-gen-go-grpc
// would write it.

const implGRPC = "grpc-go"

const grpcService = "vatactor.bench.Bench"

var grpcDesc = grpc.ServiceDesc{
	ServiceName: grpcService,
	HandlerType: (*any)(nil),
	Methods:     []grpc.MethodDesc{{MethodName: "Echo", Handler: grpcEcho}},
	Streams:     []grpc.StreamDesc{{StreamName: "Upload", Handler: grpcUpload, ClientStreams: true}},
}

// grpcEcho returns its argument.
func grpcEcho(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
	in := new(wrapperspb.BytesValue)
	if err := dec(in); err != nil {
		return nil, err
	}
	srv.(*grpcBenchServer).calls.Add(1)
	return in, nil
}

// grpcUpload counts the bytes of an upload and returns the count.
func grpcUpload(srv any, stream grpc.ServerStream) error {
	var n uint64
	for {
		in := new(wrapperspb.BytesValue)
		err := stream.RecvMsg(in)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		n += uint64(len(in.Value))
	}
	srv.(*grpcBenchServer).calls.Add(1)
	return stream.SendMsg(wrapperspb.UInt64(n))
}

// grpcBenchServer is the service's implementation.
type grpcBenchServer struct{ calls atomic.Int64 }

func startGRPCServer() (*serverSide, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := grpc.NewServer()
	impl := &grpcBenchServer{}
	s.RegisterService(&grpcDesc, impl)
	served := make(chan struct{})
	go func() { defer close(served); _ = s.Serve(l) }()
	return &serverSide{
		addr:  l.Addr().String(),
		conns: func() int { return 0 },
		shutdown: func(ctx context.Context) error {
			s.GracefulStop()
			<-served
			return ctx.Err()
		},
	}, nil
}

// grpcBench is one gRPC client connection to the Bench service.
type grpcBench struct{ cc *grpc.ClientConn }

func dialGRPC(addr string, n int) (*clientSide, error) {
	c := &clientSide{}
	c.close = func() {
		for _, g := range c.grpc {
			_ = g.cc.Close()
		}
	}
	for range n {
		// One ClientConn each, so that n connections are n TCP
		// connections, as for the capnp implementations.
		cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			c.close()
			return nil, err
		}
		cc.Connect()
		c.grpc = append(c.grpc, &grpcBench{cc: cc})
	}
	return c, nil
}

func (g *grpcBench) echo(ctx context.Context, payload []byte) error {
	out := new(wrapperspb.BytesValue)
	if err := g.cc.Invoke(ctx, "/"+grpcService+"/Echo", wrapperspb.Bytes(payload), out); err != nil {
		return err
	}
	if len(out.Value) != len(payload) {
		return fmt.Errorf("echo returned %d bytes, sent %d", len(out.Value), len(payload))
	}
	return nil
}

func (g *grpcBench) upload(ctx context.Context) error {
	stream, err := g.cc.NewStream(ctx, &grpcDesc.Streams[0], "/"+grpcService+"/Upload")
	if err != nil {
		return err
	}
	msg := wrapperspb.Bytes(chunk)
	for range streamChunks {
		if err := stream.SendMsg(msg); err != nil {
			return err
		}
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	res := new(wrapperspb.UInt64Value)
	if err := stream.RecvMsg(res); err != nil {
		return err
	}
	if res.Value != streamChunks*streamChunk {
		return fmt.Errorf("the server got %d bytes", res.Value)
	}
	return nil
}
