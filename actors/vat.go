// Package actors is the public face of vatactor: a Vat is a protoactor
// actor that owns a bootstrap capability, listens and dials, and supervises
// one connection actor per socket; capabilities can be generated servers or
// ordinary protoactor actors.
package actors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"capnproto.org/go/capnp/v3"
	"github.com/asynkron/protoactor-go/actor"

	"github.com/vatactor/vatactor/conn"
)

// Options configures a vat. The zero value is a vat with no bootstrap
// capability and its own actor system.
type Options struct {
	// Name is the vat's name, used in actor names and logs.
	Name string
	// Bootstrap is the capability served to peers' Bootstrap requests.
	// The vat takes ownership and releases it when it stops.
	Bootstrap capnp.Client
	// Conn configures every connection of the vat (limits, linger…); its
	// Bootstrap, Role and Peer fields are set by the vat.
	Conn conn.Options
	// System is the actor system to spawn into. Nil: the vat starts its
	// own (with protoactor's logger quieted) and shuts it down on Stop.
	System *actor.ActorSystem
	// Logger receives the vat's and its connections' logs. Default: discard.
	Logger *slog.Logger
}

// ErrStopped is returned by a vat's methods once it has stopped.
var ErrStopped = errors.New("vat stopped")

// Vat is the handle of a vat actor. Its methods are safe for concurrent use.
type Vat struct {
	opts      Options
	system    *actor.ActorSystem
	ownSystem bool
	pid       *actor.PID

	mu        sync.Mutex // guards the following
	stopped   bool
	listeners []net.Listener
	accepting sync.WaitGroup
}

// QuietSystem returns a new actor system whose own logger is silent.
func QuietSystem() *actor.ActorSystem {
	return actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger {
		return slog.New(slog.DiscardHandler)
	}))
}

// Spawn starts a vat actor.
func Spawn(opts Options) *Vat {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Name == "" {
		opts.Name = "vat"
	}
	v := &Vat{opts: opts, system: opts.System}
	if v.system == nil {
		v.system, v.ownSystem = QuietSystem(), true
	}
	va := &vatActor{v: v}
	props := actor.PropsFromProducer(func() actor.Actor { return va },
		actor.WithSupervisor(actor.NewOneForOneStrategy(0, 0, func(any) actor.Directive { return actor.StopDirective })))
	v.pid = v.system.Root.Spawn(props)
	return v
}

// System is the actor system the vat runs in.
func (v *Vat) System() *actor.ActorSystem { return v.system }

// PID is the vat actor's process id.
func (v *Vat) PID() *actor.PID { return v.pid }

// Listen accepts connections on network ("tcp", "unix") and address (port
// 0 allowed) and serves each one. It returns the address actually bound.
func (v *Vat) Listen(network, address string) (net.Addr, error) {
	l, err := net.Listen(network, address)
	if err != nil {
		return nil, err
	}
	v.mu.Lock()
	if v.stopped {
		v.mu.Unlock()
		l.Close()
		return nil, ErrStopped
	}
	v.listeners = append(v.listeners, l)
	v.accepting.Add(1)
	v.mu.Unlock()
	go v.acceptLoop(l)
	return l.Addr(), nil
}

func (v *Vat) acceptLoop(l net.Listener) {
	defer v.accepting.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				v.opts.Logger.Warn("capnp: accept failed; listener stops", "addr", l.Addr(), "err", err)
			}
			return
		}
		if _, err := v.serve(c, "server"); err != nil {
			c.Close()
		}
	}
}

// Serve runs a connection over an already-open socket, as the accepting
// side.
func (v *Vat) Serve(c net.Conn) (*conn.Conn, error) { return v.serve(c, "server") }

// Dial connects to address and returns the peer's bootstrap capability,
// resolved, and the connection. The caller releases the client.
func (v *Vat) Dial(ctx context.Context, network, address string) (capnp.Client, *conn.Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, address)
	if err != nil {
		return capnp.Client{}, nil, err
	}
	cn, err := v.serve(nc, "client")
	if err != nil {
		nc.Close()
		return capnp.Client{}, nil, err
	}
	boot := cn.Bootstrap(ctx)
	if err := boot.Resolve(ctx); err != nil {
		boot.Release()
		cn.Close()
		return capnp.Client{}, nil, err
	}
	return boot, cn, nil
}

// spawnConn asks the vat actor to start a connection as its child.
type spawnConn struct {
	nc   net.Conn
	role string
}

func (v *Vat) serve(nc net.Conn, role string) (*conn.Conn, error) {
	v.mu.Lock()
	stopped := v.stopped
	v.mu.Unlock()
	if stopped {
		return nil, ErrStopped
	}
	res, err := v.system.Root.RequestFuture(v.pid, spawnConn{nc: nc, role: role}, 10*time.Second).Result()
	if err != nil {
		return nil, fmt.Errorf("vat %s: %w", v.opts.Name, err)
	}
	switch r := res.(type) {
	case *conn.Conn:
		return r, nil
	case error:
		return nil, r
	default:
		return nil, fmt.Errorf("vat %s: unexpected reply %T", v.opts.Name, res)
	}
}

// listConns asks the vat actor for its connections in start order.
type listConns struct{}

// Conns returns the vat's open connections, oldest first.
func (v *Vat) Conns() []*conn.Conn {
	res, err := v.system.Root.RequestFuture(v.pid, listConns{}, 10*time.Second).Result()
	if err != nil {
		return nil
	}
	cs, _ := res.([]*conn.Conn)
	return cs
}

// Stop stops the vat: listeners first, then connections in reverse start
// order (each closed, calls in flight failing with disconnected), then the
// bootstrap capability, then the vat actor (and its actor system if the
// vat started it). Stop waits for every goroutine of the vat to exit.
func (v *Vat) Stop() {
	v.mu.Lock()
	if v.stopped {
		v.mu.Unlock()
		return
	}
	v.stopped = true
	ls := v.listeners
	v.listeners = nil
	v.mu.Unlock()

	for _, l := range ls {
		l.Close()
	}
	v.accepting.Wait()
	cs := v.Conns()
	for i := len(cs) - 1; i >= 0; i-- {
		cs[i].Close()
	}
	_ = v.system.Root.StopFuture(v.pid).Wait()
	v.opts.Bootstrap.Release()
	if v.ownSystem {
		v.system.Shutdown()
	}
}

// vatActor is the vat's actor: it spawns connection actors as children and
// keeps them in start order.
type vatActor struct {
	v     *Vat
	conns []*conn.Conn
}

func (a *vatActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case spawnConn:
		opts := a.v.opts.Conn
		opts.Bootstrap = a.v.opts.Bootstrap
		opts.Role = m.role
		opts.Peer = m.nc.RemoteAddr().String()
		if opts.Logger == nil {
			opts.Logger = a.v.opts.Logger
		}
		c := conn.Spawn(ctx, a.v.system.Root, conn.NewStreamTransport(m.nc, opts.Limits), opts)
		a.conns = append(a.conns, c)
		ctx.Respond(c)
	case listConns:
		out := make([]*conn.Conn, 0, len(a.conns))
		for _, c := range a.conns {
			if c.Err() == nil {
				out = append(out, c)
			}
		}
		ctx.Respond(out)
	case conn.Down:
		for i, c := range a.conns {
			if c == m.Conn {
				a.conns = append(a.conns[:i], a.conns[i+1:]...)
				break
			}
		}
	}
}
