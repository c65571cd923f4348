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
	"google.golang.org/grpc/encoding"
	"google.golang.org/protobuf/encoding/protowire"
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
	Methods: []grpc.MethodDesc{{MethodName: "Echo", Handler: grpcEcho}, {MethodName: "Tree", Handler: grpcTree},
		{MethodName: "Put", Handler: grpcPut}, {MethodName: "Get", Handler: grpcGet}},
	Streams: []grpc.StreamDesc{{StreamName: "Upload", Handler: grpcUpload, ClientStreams: true}},
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

// grpcPut returns the length of its argument.
func grpcPut(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
	in := new(wrapperspb.BytesValue)
	if err := dec(in); err != nil {
		return nil, err
	}
	return wrapperspb.UInt64(uint64(len(in.Value))), nil
}

// grpcGet returns n bytes.
func grpcGet(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
	in := new(wrapperspb.UInt32Value)
	if err := dec(in); err != nil {
		return nil, err
	}
	if int(in.Value) > len(large) {
		return nil, fmt.Errorf("get: at most %d bytes", len(large))
	}
	return wrapperspb.Bytes(large[:in.Value]), nil
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

func (g *grpcBench) put(ctx context.Context) error {
	out := new(wrapperspb.UInt64Value)
	if err := g.cc.Invoke(ctx, "/"+grpcService+"/Put", wrapperspb.Bytes(large), out); err != nil {
		return err
	}
	if out.Value != uint64(len(large)) {
		return fmt.Errorf("put: the server got %d bytes", out.Value)
	}
	return nil
}

func (g *grpcBench) get(ctx context.Context) error {
	out := new(wrapperspb.BytesValue)
	if err := g.cc.Invoke(ctx, "/"+grpcService+"/Get", wrapperspb.UInt32(uint32(len(large))), out); err != nil {
		return err
	}
	if len(out.Value) != len(large) {
		return fmt.Errorf("get: %d bytes", len(out.Value))
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

// The deep tree for gRPC-Go, as protoc-gen-go would give it for
//
//	message TreeRequest { uint32 depth = 1; uint32 fanout = 2; }
//	message Tree { uint64 value = 1; repeated Tree children = 2; }
//	rpc Tree(TreeRequest) returns (Tree);
//
// written out with protowire (the same wire bytes generated code makes)
// under a codec of its own, so no generated code is needed.

type treeRequest struct{ depth, fanout uint32 }

type pbTree struct {
	value    uint64
	children []*pbTree
	size     int // of its encoding, computed before appending it
}

func (t *pbTree) computeSize() int {
	n := 0
	if t.value != 0 {
		n += protowire.SizeTag(1) + protowire.SizeVarint(t.value)
	}
	for _, c := range t.children {
		n += protowire.SizeTag(2) + protowire.SizeBytes(c.computeSize())
	}
	t.size = n
	return n
}

func (t *pbTree) appendTo(b []byte) []byte {
	if t.value != 0 {
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, t.value)
	}
	for _, c := range t.children {
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(c.size))
		b = c.appendTo(b)
	}
	return b
}

func (t *pbTree) unmarshal(b []byte) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			t.value, b = v, b[n:]
		case num == 2 && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			c := new(pbTree)
			if err := c.unmarshal(v); err != nil {
				return err
			}
			t.children, b = append(t.children, c), b[n:]
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			b = b[n:]
		}
	}
	return nil
}

// treeCodec marshals treeRequest and pbTree.
type treeCodec struct{}

const treeCodecName = "vatactor-tree"

func (treeCodec) Name() string { return treeCodecName }

func (treeCodec) Marshal(v any) ([]byte, error) {
	switch v := v.(type) {
	case *treeRequest:
		b := protowire.AppendTag(nil, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(v.depth))
		b = protowire.AppendTag(b, 2, protowire.VarintType)
		return protowire.AppendVarint(b, uint64(v.fanout)), nil
	case *pbTree:
		return v.appendTo(make([]byte, 0, v.computeSize())), nil
	}
	return nil, fmt.Errorf("treeCodec: cannot marshal %T", v)
}

func (treeCodec) Unmarshal(data []byte, v any) error {
	switch v := v.(type) {
	case *treeRequest:
		for len(data) > 0 {
			num, _, n := protowire.ConsumeTag(data)
			if n < 0 {
				return protowire.ParseError(n)
			}
			x, m := protowire.ConsumeVarint(data[n:])
			if m < 0 {
				return protowire.ParseError(m)
			}
			switch num {
			case 1:
				v.depth = uint32(x)
			case 2:
				v.fanout = uint32(x)
			}
			data = data[n+m:]
		}
		return nil
	case *pbTree:
		return v.unmarshal(data)
	}
	return fmt.Errorf("treeCodec: cannot unmarshal into %T", v)
}

func init() { encoding.RegisterCodec(treeCodec{}) }

func grpcTree(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
	in := new(treeRequest)
	if err := dec(in); err != nil {
		return nil, err
	}
	var next uint64
	return buildPBTree(int(in.depth), int(in.fanout), &next), nil
}

func buildPBTree(depth, fanout int, next *uint64) *pbTree {
	t := &pbTree{value: *next}
	*next++
	if depth > 1 {
		t.children = make([]*pbTree, fanout)
		for i := range t.children {
			t.children[i] = buildPBTree(depth-1, fanout, next)
		}
	}
	return t
}

func (g *grpcBench) tree(ctx context.Context) error {
	out := new(pbTree)
	if err := g.cc.Invoke(ctx, "/"+grpcService+"/Tree", &treeRequest{depth: treeDepth, fanout: treeFanout}, out,
		grpc.CallContentSubtype(treeCodecName)); err != nil {
		return err
	}
	var sum, n uint64
	var walk func(t *pbTree)
	walk = func(t *pbTree) {
		sum += t.value
		n++
		for _, c := range t.children {
			walk(c)
		}
	}
	walk(out)
	if want := uint64(treeNodes(treeDepth, treeFanout)); n != want || sum != want*(want-1)/2 {
		return fmt.Errorf("tree of %d nodes summing to %d, want %d", n, sum, want)
	}
	return nil
}
