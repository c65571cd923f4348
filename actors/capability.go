package actors

import (
	"context"
	"fmt"
	"reflect"
	"sync"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	"capnproto.org/go/capnp/v3/server"
	"github.com/asynkron/protoactor-go/actor"
	"go.opentelemetry.io/otel/trace"

	"github.com/vatactor/vatactor/tracing"
)

// Call is the message an actor-implemented capability receives for each
// call made on it. The actor reads Args, optionally allocates results with
// AllocResults and fills them, then calls Return exactly once (from any
// goroutine, at any later time). Calls arrive in the order they were made.
//
// The trace crosses the hop into the actor: Context carries the call's
// span (the server span of a call from another vat, else the caller's
// span), so spans started from it inside the actor are its children, and
// the message envelope carries the same W3C "traceparent" and
// "tracestate" headers for protoactor middleware.
type Call struct {
	Method capnp.Method
	ctx    context.Context
	recv   capnp.Recv
	aq     *capnp.AnswerQueue
	res    capnp.Struct
	done   bool
}

// Context is the call's context: cancelled when the caller gives up.
func (c *Call) Context() context.Context { return c.ctx }

// Args returns the call's parameters; cast them with the generated
// type, e.g. echo.Echo_echo_Params(call.Args()).
func (c *Call) Args() capnp.Struct { return c.recv.Args }

// AllocResults allocates the results struct of the given size (the
// generated …_Results type's size), once. The package-level AllocResults
// takes the size from the generated type instead.
func (c *Call) AllocResults(sz capnp.ObjectSize) (capnp.Struct, error) {
	var err error
	c.res, err = c.recv.Returner.AllocResults(sz)
	return c.res, err
}

// AllocResults allocates call's results as the generated type whose
// constructor is newResults (for example interop.NewEcho_echo_Results),
// with that type's size, so that no size is copied out of the generated
// file:
//
//	res, err := actors.AllocResults(call, interop.NewEcho_echo_Results)
//
// The size is learnt once per constructor, from a struct it makes in a
// scratch message.
func AllocResults[T ~capnp.StructKind](call *Call, newResults func(*capnp.Segment) (T, error)) (T, error) {
	sz, err := resultsSize(newResults)
	if err != nil {
		return T{}, err
	}
	st, err := call.AllocResults(sz)
	return T(st), err
}

// resultSizes caches the results size of each constructor, by its code
// pointer.
var resultSizes sync.Map // uintptr → capnp.ObjectSize

func resultsSize[T ~capnp.StructKind](newResults func(*capnp.Segment) (T, error)) (capnp.ObjectSize, error) {
	key := reflect.ValueOf(newResults).Pointer()
	if sz, ok := resultSizes.Load(key); ok {
		return sz.(capnp.ObjectSize), nil
	}
	msg, seg := capnp.NewSingleSegmentMessage(nil)
	defer msg.Release()
	st, err := newResults(seg)
	if err != nil {
		return capnp.ObjectSize{}, fmt.Errorf("sizing results: %w", err)
	}
	sz := capnp.Struct(st).Size()
	resultSizes.Store(key, sz)
	return sz, nil
}

// Return answers the call: with the results allocated (or empty ones)
// when err is nil, else with err as an exception (its exc.Type is kept).
func (c *Call) Return(err error) {
	if c.done {
		return
	}
	c.done = true
	c.recv.ReleaseArgs()
	c.recv.Returner.PrepareReturn(err)
	if err != nil {
		c.aq.Reject(err)
	} else {
		c.aq.Fulfill(c.res.ToPtr())
	}
	c.recv.Returner.Return()
	c.recv.Returner.ReleaseResults()
}

// ActorClient returns a capability implemented by the actor pid: each call
// arrives there as a *Call message. Spawn the actor with CapabilityProps
// so that a panic while handling a call answers that call with a "failed"
// exception.
//
// methods, when given, are the generated ones of the interfaces the actor
// implements (for example interop.Echo_Methods(nil, nil): only their
// names are read), so that calls from peers, which name methods by ids
// alone, have their names in Call.Method, spans, logs and panic messages
// without the schema being registered by hand.
func ActorClient(system *actor.ActorSystem, pid *actor.PID, methods ...server.Method) capnp.Client {
	for _, m := range methods {
		tracing.RegisterMethods(m.Method)
	}
	return capnp.NewClient(&actorHook{root: system.Root, pid: pid})
}

type actorHook struct {
	root *actor.RootContext
	pid  *actor.PID
}

func (h *actorHook) Send(ctx context.Context, s capnp.Send) (*capnp.Answer, capnp.ReleaseFunc) {
	msg, seg := capnp.NewSingleSegmentMessage(nil)
	args, err := capnp.NewRootStruct(seg, s.ArgsSize)
	if err == nil && s.PlaceArgs != nil {
		err = s.PlaceArgs(args)
	}
	if err != nil {
		msg.Release()
		return capnp.ErrorAnswer(s.Method, err), func() {}
	}
	ret := new(capnp.StructReturner)
	pc := h.Recv(ctx, capnp.Recv{Method: s.Method, Args: args, ReleaseArgs: msg.Release, Returner: ret})
	return ret.Answer(s.Method, pc)
}

func (h *actorHook) Recv(ctx context.Context, r capnp.Recv) capnp.PipelineCaller {
	if r.Method.InterfaceName == "" { // a peer's call: ids only
		r.Method, _ = tracing.LookupMethod(r.Method.InterfaceID, r.Method.MethodID)
	}
	aq := capnp.NewAnswerQueue(r.Method)
	call := &Call{Method: r.Method, ctx: ctx, recv: r, aq: aq}
	if tp, ts := tracing.Inject(ctx); tp != "" {
		env := actor.WrapEnvelope(call)
		env.SetHeader("traceparent", tp)
		if ts != "" {
			env.SetHeader("tracestate", ts)
		}
		h.root.Send(h.pid, env)
		return aq
	}
	h.root.Send(h.pid, call)
	return aq
}

func (h *actorHook) Brand() capnp.Brand { return capnp.Brand{Value: h} }
func (h *actorHook) Shutdown()          {}
func (h *actorHook) String() string     { return "actor capability " + h.pid.String() }

// CapabilityProps returns props for an actor that implements a capability:
// a panic while it handles a *Call answers that call with a "failed"
// exception, then goes on to the actor's supervisor as usual. The call's
// span gets an event when the actor takes the call from its mailbox.
func CapabilityProps(producer actor.Producer, opts ...actor.PropsOption) *actor.Props {
	opts = append(opts, actor.WithReceiverMiddleware(receiveCall))
	return actor.PropsFromProducer(producer, opts...)
}

func receiveCall(next actor.ReceiverFunc) actor.ReceiverFunc {
	return func(ctx actor.ReceiverContext, env *actor.MessageEnvelope) {
		call, ok := env.Message.(*Call)
		if !ok {
			next(ctx, env)
			return
		}
		if span := trace.SpanFromContext(call.ctx); span.IsRecording() {
			span.AddEvent("actor.received", trace.WithAttributes(tracing.AttrActor.String(ctx.Self().String())))
		}
		defer func() {
			if r := recover(); r != nil {
				call.Return(panicError(call.Method, r))
				panic(r)
			}
		}()
		next(ctx, env)
	}
}

func panicError(m capnp.Method, r any) error {
	return exc.New(exc.Failed, "", fmt.Sprintf("panic in %s: %v", m.String(), r))
}

// NewServer is capnp's server.New with every method guarded: a panic in a
// method answers that call with a "failed" exception (and is logged with
// its stack) instead of ending the process. Use it in place of a generated
// …_ServerToClient:
//
//	client := actors.NewServer(echo.Echo_Methods(nil, impl), impl)
//
// It also makes the methods' names known to package tracing, so that the
// server spans of calls from other vats are named "Interface.method".
//
// A method's context ends when the caller is done with the call (its
// Finish arrives: it cancelled it, or released the answer) or when the
// connection ends; work that must outlive the call takes
// context.WithoutCancel(ctx). When the last reference to the capability
// is released, impl's Shutdown method, if it has one
// (server.Shutdowner), is called.
func NewServer(methods []server.Method, impl any) capnp.Client {
	return newServer(methods, impl, false)
}

// NewConcurrentServer is NewServer whose calls run at once, each on its
// own goroutine, instead of one after another (capnp's server runs a
// capability's calls in order, the next once the last returns or calls
// call.Go()). Calls still begin in the order they arrive, which is what
// E-order asks; they may end in any order, and impl must be safe for
// concurrent use. For a capability shared by many connections (a vat's
// bootstrap), it keeps one connection's slow call from holding up the
// others'.
func NewConcurrentServer(methods []server.Method, impl any) capnp.Client {
	return newServer(methods, impl, true)
}

func newServer(methods []server.Method, impl any, concurrent bool) capnp.Client {
	guarded := make([]server.Method, len(methods))
	for i, m := range methods {
		tracing.RegisterMethods(m.Method)
		impl := m.Impl
		method := m.Method
		m.Impl = func(ctx context.Context, call *server.Call) (err error) {
			defer func() {
				if r := recover(); r != nil {
					err = panicError(method, r)
				}
			}()
			if concurrent {
				call.Go()
			}
			return impl(ctx, call)
		}
		guarded[i] = m
	}
	sd, _ := impl.(server.Shutdowner)
	return capnp.NewClient(server.New(guarded, impl, sd))
}
