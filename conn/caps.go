package conn

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/server"
	"github.com/asynkron/protoactor-go/actor"
	"go.opentelemetry.io/otel/trace"

	"github.com/vatactor/vatactor/conn/core"
	"github.com/vatactor/vatactor/internal/mailbox"
	"github.com/vatactor/vatactor/internal/peakmap"
)

// An export is a capability of ours that the peer holds references to.
// It is an actor, a child of the connection, alive while the peer's
// reference count is above zero; stopping it releases the capability.
type export struct {
	c       *Conn
	id      uint32
	ref     core.Ref
	client  capnp.Client // our reference (none for exports the core makes itself)
	promise bool
	span    trace.Span // the export's lifetime

	stopResolve context.CancelFunc // export actor only
	mbox        *mailbox.Mailbox   // the export actor's, once spawned (wake)
}

// child is e as the core names it among the connection's children.
func (e *export) child() core.Child { return core.Child{Kind: core.ExportChild, ID: e.id, Ref: e.ref} }

// exportResolved: an exported promise has resolved (export actor → conn).
type exportResolved struct{ e *export }

// Receive is the export actor.
func (e *export) Receive(ctx actor.Context) {
	switch ctx.Message().(type) {
	case *actor.Started:
		if e.promise {
			rctx, cancel := context.WithCancel(context.Background())
			e.stopResolve = cancel
			client := e.client.AddRef()
			go func() {
				defer client.Release()
				if client.Resolve(rctx) == nil {
					_ = e.c.post(exportResolved{e: e})
				}
			}()
		}
	case *actor.Stopping:
		if e.stopResolve != nil {
			e.stopResolve()
		}
		e.end()
	}
}

// end is what an export does as it stops: it releases our reference and
// ends its span. Its actor does it (Stopping), or the connection's last
// turn for an export still dormant then (state.releaseDormant).
func (e *export) end() {
	e.release()
	e.span.End()
}

// release drops our reference to the exported capability. A panic in the
// capability's Shutdown is logged, never allowed to hang the connection's
// ordered stop.
func (e *export) release() {
	defer func() {
		if r := recover(); r != nil {
			e.c.opts.Logger.Error("capnp: exported capability panicked while shutting down", "peer", e.c.opts.Peer, "export", e.id, "panic", r)
		}
	}()
	e.client.Release()
}

// exportResolved: tell the core what an exported promise has become.
func (s *state) exportResolved(e *export) {
	if s.pids[e.child()] == nil {
		return // released meanwhile
	}
	to := s.describe(e.client)
	s.feed(&core.LocalResolved{Ref: e.ref, To: to})
}

// exportKeyOf returns an identity for the capability behind brand, or
// nil when it has none we can trust (then every send exports anew).
func exportKeyOf(b capnp.Brand) any {
	v := b.Value
	if x, ok := server.IsServer(b); ok {
		v = x // the implementation behind a generated server
	}
	if rv := reflect.ValueOf(v); rv.IsValid() && rv.Kind() == reflect.Pointer && !rv.IsNil() {
		return v
	}
	return nil
}

// describe names client (borrowed) as the core knows capabilities: one of
// the peer's imported on this connection, a capability in one of our
// questions' or the peer's answers, or one of ours (a Ref, made if new).
func (s *state) describe(client capnp.Client) core.Cap {
	if !client.IsValid() {
		return core.Cap{}
	}
	snap := client.Snapshot()
	brand := snap.Brand()
	isPromise := snap.IsPromise()
	snap.Release()
	switch h := brand.Value.(type) {
	case *importHook:
		if h.c == s.c {
			return core.Cap{Kind: core.CapImport, ID: h.id}
		}
	case *coreCapHook:
		if h.c == s.c {
			return h.cap
		}
	case capnp.PipelineClient:
		if q := s.byAns[h.Answer()]; q != nil {
			return core.Cap{Kind: core.CapQuestion, Call: q.call, Transform: pipelineOps(h.Transform())}
		}
	}
	key := exportKeyOf(brand)
	if key != nil {
		if r, ok := s.refByKey.Get(key); ok {
			return core.Cap{Kind: core.CapLocal, Ref: r, Promise: isPromise}
		}
	}
	s.nextRef++
	r := s.nextRef
	s.locals.Set(r, &localCap{client: client.AddRef(), key: key})
	if key != nil {
		s.refByKey.Set(key, r)
	}
	s.fresh = append(s.fresh, r)
	return core.Cap{Kind: core.CapLocal, Ref: r, Promise: isPromise}
}

// describeAll names the capabilities of a message's cap table as the core
// does (nil for none), each with a reference of its own, in dst's storage
// (nil: new). A local call's goes in new storage (the core keeps its
// params' table while the call waits); a Return's in the state's scratch
// (the core copies the results' table it keeps, Core.returned).
func (s *state) describeAll(dst []core.Cap, ct *capnp.CapTable) []core.Cap {
	n := ct.Len()
	if n == 0 {
		return nil
	}
	caps := slices.Grow(dst[:0], n)[:n]
	for i := range caps {
		caps[i] = s.describe(ct.At(i))
	}
	return caps
}

// clients turns capabilities the core hands out (with their references)
// into clients, in a slice of the turn's storage that the next call
// reuses: for CapTable.Reset, which copies it.
func (s *state) clients(caps []core.Cap) []capnp.Client {
	if len(caps) == 0 {
		return nil
	}
	t := s.storage()
	clear(t.clients)
	out := slices.Grow(t.clients[:0], len(caps))[:len(caps)]
	for i, cp := range caps {
		out[i] = s.client(cp)
	}
	t.clients = out
	return out
}

// client is the capnp.Client of cp, which comes with one reference.
func (s *state) client(cp core.Cap) capnp.Client {
	switch cp.Kind {
	case core.CapImport:
		if ie := s.imports[cp.ID]; ie != nil {
			if c, ok := ie.client.AddRef(); ok {
				s.releaseLater(cp) // the hook holds one
				return c
			}
		}
		return s.newImport(cp.ID, cp.Promise)
	case core.CapLocal:
		if l := s.locals.At(cp.Ref); l != nil {
			return l.client.AddRef()
		}
		return capnp.ErrorClient(errCapGone)
	case core.CapAnswer, core.CapQuestion:
		return capnp.NewClient(&coreCapHook{c: s.c, cap: cp})
	case core.CapBroken:
		return capnp.ErrorClient(excError(cp.Err))
	case core.CapNone:
		return capnp.Client{}
	}
	s.releaseLater(cp)
	return capnp.ErrorClient(fmt.Errorf("capnp: capability of kind %v cannot be held", cp.Kind))
}

// releaseCaps gives back references the core handed out that nobody
// takes.
func (s *state) releaseCaps(caps []core.Cap) {
	for _, cp := range caps {
		s.releaseLater(cp)
	}
}

var errCapGone = errors.New("the capability is gone")

// An importEntry is a capability of the peer that local code holds: its
// hook and, for a promise, what resolves it.
type importEntry struct {
	hook     *importHook
	client   *capnp.WeakClient
	resolver capnp.Resolver[capnp.Client] // set while a promise is unresolved
}

// importHook is the capnp.ClientHook of an import: calls become the
// core's LocalCalls on this connection. It holds one of the core's
// references to the import.
type importHook struct {
	c    *Conn
	id   uint32
	flow *window // nil: no flow control
}

// importShutdown: the last local reference to an import is gone.
type importShutdown struct{ hook *importHook }

func (h *importHook) target() callTarget {
	return callTarget{cap: core.Cap{Kind: core.CapImport, ID: h.id}, flow: h.flow}
}
func (h *importHook) Send(ctx context.Context, s capnp.Send) (*capnp.Answer, capnp.ReleaseFunc) {
	return h.c.sendLocalCall(ctx, h.target(), s)
}
func (h *importHook) Recv(ctx context.Context, r capnp.Recv) capnp.PipelineCaller {
	return h.c.forwardRecv(ctx, h.target(), r)
}
func (h *importHook) Brand() capnp.Brand { return capnp.Brand{Value: h} }
func (h *importHook) Shutdown()          { _ = h.c.post(importShutdown{hook: h}) }
func (h *importHook) String() string {
	return fmt.Sprintf("capnp import %d from %s", h.id, h.c.opts.Peer)
}

// newImport makes the client of import id, which takes the core's
// reference that comes with it.
func (s *state) newImport(id uint32, promise bool) capnp.Client {
	h := &importHook{c: s.c, id: id, flow: newWindow(s.c.opts.FlowWindow)}
	if h.flow != nil && s.c.meters != nil {
		h.flow.waited = s.c.meterFlowWait
	}
	ie := &importEntry{hook: h}
	var c capnp.Client
	if promise {
		c, ie.resolver = capnp.NewPromisedClient(h)
	} else {
		c = capnp.NewClient(h)
	}
	w := c.WeakRef()
	ie.client = &w
	peakmap.Set(&s.imports, id, ie)
	return c
}

// importResolved: a promise of the peer's has become to. A promise that
// resolved to the peer's capability, or broke, is resolved for local code
// too; one that resolved to ours stays as it is: its calls go on through
// the core, which keeps them in order behind the embargo.
func (s *state) importResolved(id uint32, to core.Cap) {
	ie := s.imports[id]
	if ie == nil || ie.resolver == nil {
		return
	}
	switch to.Kind {
	case core.CapBroken:
		ie.resolver.Reject(excError(to.Err))
	case core.CapImport:
		s.later = append(s.later, &core.LocalRetain{Cap: to})
		ie.resolver.Fulfill(s.client(to))
	default:
		return
	}
	ie.resolver = nil
}

// coreCapHook is the capnp.ClientHook of a capability the core reaches
// for us: one in one of the peer's answers (a receiverAnswer), or one in
// our question's results that is under embargo. Calls go to the core,
// which holds them as long as they must wait. It holds one of the core's
// references.
type coreCapHook struct {
	c   *Conn
	cap core.Cap
}

// capReleased: the last local reference to an coreCapHook is gone.
type capReleased struct{ cap core.Cap }

func (h *coreCapHook) Send(ctx context.Context, s capnp.Send) (*capnp.Answer, capnp.ReleaseFunc) {
	return h.c.sendLocalCall(ctx, callTarget{cap: h.cap}, s)
}
func (h *coreCapHook) Recv(ctx context.Context, r capnp.Recv) capnp.PipelineCaller {
	return h.c.forwardRecv(ctx, callTarget{cap: h.cap}, r)
}
func (h *coreCapHook) Brand() capnp.Brand { return capnp.Brand{Value: h} }
func (h *coreCapHook) Shutdown()          { _ = h.c.post(capReleased{cap: h.cap}) }
func (h *coreCapHook) String() string {
	return fmt.Sprintf("capnp %v of %s", h.cap, h.c.opts.Peer)
}
