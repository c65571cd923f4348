// Package actors is the public face of vatactor: a Vat is a protoactor
// actor that owns a bootstrap capability, listens and dials, and supervises
// one connection actor per socket; capabilities can be generated servers or
// ordinary protoactor actors.
package actors

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"capnproto.org/go/capnp/v3"
	"github.com/asynkron/protoactor-go/actor"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/vatactor/vatactor/conn"
	"github.com/vatactor/vatactor/supervisor"
)

// Options configures a vat. The zero value is a vat with no bootstrap
// capability, in the actor system the vats of this process share.
type Options struct {
	// Name is the vat's name, used in actor names and logs.
	Name string
	// Bootstrap is the capability served to peers' Bootstrap requests.
	// The vat takes ownership and releases it when it stops.
	Bootstrap capnp.Client
	// Conn configures every connection of the vat (limits, linger…); its
	// Bootstrap, Role and Peer fields are set by the vat.
	Conn conn.Options
	// System is the actor system to spawn into. Nil: the one the vats of
	// this process share (SharedSystem). A protoactor system costs about
	// 3 MB and 67,000 allocations to make (its process registry), a vat
	// in one about 40 KB; Stop stops the vat's actors, never the system.
	System *actor.ActorSystem
	// Logger receives the vat's and its connections' logs. Default: discard.
	Logger *slog.Logger
	// StopTimeout bounds the graceful shutdown of each connection during
	// Vat.Shutdown; when it expires the connection's remaining waits are
	// skipped and its socket closed. Default 10s.
	StopTimeout time.Duration
	// MaxConns bounds the connections accepted by the vat's listeners that
	// are open at once (the vat-wide budget: each connection has its own,
	// conn.Limits). At the bound the listeners accept nothing more, and
	// new peers wait in the kernel's backlog, until a connection ends.
	// Connections dialed or given to Serve are not counted. Default
	// 16384; negative: no bound.
	MaxConns int
	// OnEvent, if set, receives the lifecycle events of every connection
	// of the vat (conn.Up, conn.Busy, conn.Idle, conn.PhaseDone,
	// conn.ActorStopped, conn.Down), on the connection actor's goroutine:
	// it must not block.
	OnEvent func(conn.Event)
	// BootstrapFor, if set, picks the bootstrap capability of each
	// accepted connection from what is known of its peer (its address;
	// over TLS, its verified certificates: the handshake is done first,
	// within HandshakeTimeout), in place of Bootstrap; the connection takes
	// its own reference, the vat releases the one returned. An error
	// refuses the peer: its socket is closed before any RPC.
	BootstrapFor func(conn.PeerInfo) (capnp.Client, error)
	// MaxConnectionAge, when positive, ends each accepted connection
	// after that long (±10 %, so a fleet's connections do not end
	// together) with a graceful shutdown, epitaph UNAVAILABLE "max
	// connection age": its calls finish, later ones are refused as not
	// processed, and the client redials (gRPC's MaxConnectionAge), so
	// load rebalances across servers. MaxConnectionAgeGrace bounds that
	// shutdown (default: StopTimeout).
	MaxConnectionAge      time.Duration
	MaxConnectionAgeGrace time.Duration
	// HandshakeTimeout bounds an accepted TLS connection's handshake.
	// Default 10s.
	HandshakeTimeout time.Duration
	// Dial, if set, opens the sockets of Dial and DialSupervised (a
	// tls.Dialer's DialContext, a proxy's, …). Default: a net.Dialer.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// TracerProvider makes the spans of the vat's connections, calls and
	// shutdowns (see package tracing). Default: Conn.TracerProvider, else
	// the global provider.
	TracerProvider trace.TracerProvider
	// MeterProvider makes the metrics of the vat and its connections (see
	// package metering). Default: Conn.MeterProvider, else the global
	// provider.
	MeterProvider metric.MeterProvider
}

// Defaults of Options.
const (
	DefaultStopTimeout = 10 * time.Second
	// DefaultHandshakeTimeout is Options.HandshakeTimeout's default.
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultMaxConns         = 16384
)

// ErrStopped is returned by a vat's methods once it has stopped.
var ErrStopped = errors.New("vat stopped")

// Vat is the handle of a vat actor. Its methods are safe for concurrent use.
type Vat struct {
	opts   Options
	system *actor.ActorSystem
	pid    *actor.PID

	stopping  chan struct{} // closed when the vat begins to stop
	connSlots chan struct{} // one token per accepted connection open (Options.MaxConns); nil: no bound

	mu          sync.Mutex // guards the following
	stopped     bool
	listeners   []net.Listener
	subscribers []*actor.PID
	redialers   []*Redialer
	accepting   sync.WaitGroup

	meters vatMeters
}

// SharedSystem is the actor system of the vats spawned without one
// (Options.System): made, quiet, on first use, and never shut down.
var SharedSystem = sync.OnceValue(QuietSystem)

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
	if opts.StopTimeout <= 0 {
		opts.StopTimeout = DefaultStopTimeout
	}
	if opts.MaxConns == 0 {
		opts.MaxConns = DefaultMaxConns
	}
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if opts.TracerProvider != nil {
		opts.Conn.TracerProvider = opts.TracerProvider
	}
	if opts.MeterProvider != nil {
		opts.Conn.MeterProvider = opts.MeterProvider
	}
	v := &Vat{opts: opts, system: opts.System, stopping: make(chan struct{})}
	v.startMeters(opts.Conn.MeterProvider)
	if opts.MaxConns > 0 {
		v.connSlots = make(chan struct{}, opts.MaxConns)
	}
	if v.system == nil {
		v.system = SharedSystem()
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
	return v.ServeListener(l)
}

// ServeListener serves every connection l accepts (a tls.NewListener
// one, say) until the vat stops, which closes l. It returns l's address.
func (v *Vat) ServeListener(l net.Listener) (net.Addr, error) {
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

// Accept retries: the first wait after a failed Accept, and the most.
const (
	acceptRetryFirst = 5 * time.Millisecond
	acceptRetryMax   = 1 * time.Second
)

// acceptLoop serves every connection l accepts until l is closed. A
// failed Accept (out of file descriptors, a connection aborted before it
// was accepted) is retried after a wait that doubles from 5 ms to 1 s, as
// net/http does; the first failure of a run is logged, and so is the
// recovery.
func (v *Vat) acceptLoop(l net.Listener) {
	defer v.accepting.Done()
	var delay time.Duration
	for {
		if !v.takeConnSlot() {
			return
		}
		c, err := l.Accept()
		if err != nil {
			v.giveConnSlot()
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if delay == 0 {
				delay = acceptRetryFirst
				v.opts.Logger.Warn("capnp: accept failed; retrying", "addr", l.Addr(), "err", err)
			} else {
				delay = min(2*delay, acceptRetryMax)
			}
			select {
			case <-time.After(delay):
			case <-v.stopping:
				return
			}
			continue
		}
		if delay > 0 {
			v.opts.Logger.Info("capnp: accepting again", "addr", l.Addr())
			delay = 0
		}
		if _, isTLS := c.(*tls.Conn); isTLS || v.opts.BootstrapFor != nil {
			// A handshake, or a choice of bootstrap, must not hold up
			// the accepting of others.
			v.accepting.Add(1)
			go func() {
				defer v.accepting.Done()
				v.admit(c)
			}()
			continue
		}
		v.admit(c)
	}
}

// admit serves an accepted connection: over TLS once its handshake is
// done, with the bootstrap capability BootstrapFor picks for its peer.
func (v *Vat) admit(c net.Conn) {
	refuse := func(why string, err error) {
		v.opts.Logger.Debug("capnp: peer refused", "vat", v.opts.Name, "peer", c.RemoteAddr().String(), "why", why, "err", err)
		v.giveConnSlot()
		c.Close()
	}
	if tc, ok := c.(*tls.Conn); ok {
		ctx, cancel := context.WithTimeout(context.Background(), v.opts.HandshakeTimeout)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			refuse("TLS handshake", err)
			return
		}
	}
	sc := spawnConn{nc: c, role: "server", slot: v.connSlots != nil, peer: conn.PeerInfoOf(c)}
	if pick := v.opts.BootstrapFor; pick != nil {
		boot, err := pick(*sc.peer)
		if err != nil {
			refuse("BootstrapFor", err)
			return
		}
		sc.boot, sc.ownBoot = boot, true
	}
	if _, err := v.serve(sc); err != nil {
		v.giveConnSlot()
		c.Close()
	}
	if sc.ownBoot {
		sc.boot.Release()
	}
}

// takeConnSlot waits until an accepted connection may be opened
// (Options.MaxConns); false: the vat is stopping.
func (v *Vat) takeConnSlot() bool {
	if v.connSlots == nil {
		return true
	}
	select {
	case v.connSlots <- struct{}{}:
		return true
	case <-v.stopping:
		return false
	}
}

// giveConnSlot returns the slot of an accepted connection that has ended.
func (v *Vat) giveConnSlot() {
	if v.connSlots != nil {
		<-v.connSlots
	}
}

// Serve runs a connection over an already-open socket, as the accepting
// side.
func (v *Vat) Serve(c net.Conn) (*conn.Conn, error) { return v.serve(spawnConn{nc: c, role: "server"}) }

// Dial connects to address and returns the peer's bootstrap capability,
// resolved, and the connection. The caller releases the client. The
// connection's span is a child of ctx's span.
func (v *Vat) Dial(ctx context.Context, network, address string) (capnp.Client, *conn.Conn, error) {
	dial := v.opts.Dial
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	nc, err := dial(ctx, network, address)
	if err != nil {
		return capnp.Client{}, nil, err
	}
	return v.connect(ctx, nc, address)
}

// Connect is Dial over a socket the caller opened (a tls.Client one, a
// Unix socket pair, …): the vat owns nc from now on. It returns the
// peer's bootstrap capability once the peer has answered for it.
func (v *Vat) Connect(ctx context.Context, nc net.Conn) (capnp.Client, *conn.Conn, error) {
	return v.connect(ctx, nc, nc.RemoteAddr().String())
}

func (v *Vat) connect(ctx context.Context, nc net.Conn, address string) (capnp.Client, *conn.Conn, error) {
	cn, err := v.serve(spawnConn{nc: nc, role: "client",
		spanParent: trace.ContextWithSpanContext(context.Background(), trace.SpanContextFromContext(ctx))})
	if err != nil {
		nc.Close()
		return capnp.Client{}, nil, err
	}
	boot := cn.Bootstrap(ctx)
	err = boot.Resolve(ctx)
	if err == nil {
		err = clientError(boot) // the handshake failed: the peer's exception, or why the connection ended
	}
	if err != nil {
		boot.Release()
		cn.Close()
		return capnp.Client{}, nil, fmt.Errorf("vat %s: dial %s: bootstrap: %w", v.opts.Name, address, err)
	}
	return boot, cn, nil
}

// clientError returns the error a resolved client fails every call with,
// or nil when it is a capability.
func clientError(c capnp.Client) error {
	snap := c.Snapshot()
	defer snap.Release()
	if err, ok := snap.Brand().Value.(error); ok {
		return err
	}
	return nil
}

// spawnConn asks the vat actor to start a connection as its child.
type spawnConn struct {
	nc         net.Conn
	role       string
	spanParent context.Context
	slot       bool // it holds a slot of Options.MaxConns, given back at its Down
	peer       *conn.PeerInfo
	boot       capnp.Client // BootstrapFor's pick, in place of Options.Bootstrap
	ownBoot    bool
}

func (v *Vat) serve(sc spawnConn) (*conn.Conn, error) {
	v.mu.Lock()
	stopped := v.stopped
	v.mu.Unlock()
	if stopped {
		return nil, ErrStopped
	}
	res, err := v.system.Root.RequestFuture(v.pid, sc, 10*time.Second).Result()
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

// spawnChild asks the vat actor to spawn a child (a redialer).
type spawnChild struct{ props *actor.Props }

func (v *Vat) spawnChild(props *actor.Props) (*actor.PID, error) {
	res, err := v.system.Root.RequestFuture(v.pid, spawnChild{props: props}, 10*time.Second).Result()
	if err != nil {
		return nil, fmt.Errorf("vat %s: %w", v.opts.Name, err)
	}
	return res.(*actor.PID), nil
}

// listConns asks the vat actor for its connections in start order.
type listConns struct{}

// Conns returns the vat's connections that have not ended yet, oldest
// first.
func (v *Vat) Conns() []*conn.Conn {
	res, err := v.system.Root.RequestFuture(v.pid, listConns{}, 10*time.Second).Result()
	if err != nil {
		return nil
	}
	cs, _ := res.([]*conn.Conn)
	return cs
}

// Subscribe sends every lifecycle event of the vat's connections (see
// Options.OnEvent) to pid as a message, from now on.
func (v *Vat) Subscribe(pid *actor.PID) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.subscribers = append(v.subscribers, pid)
}

// Report is what a vat's shutdown did: one report per connection, newest
// first.
type Report struct {
	Conns []conn.Report
	// Took is how long the shutdown took (a connection's whole life is
	// conn.Report.Lifetime).
	Took time.Duration
}

// CutShort reports whether any connection's end was cut short.
func (r Report) CutShort() bool {
	for _, c := range r.Conns {
		if c.CutShort() {
			return true
		}
	}
	return false
}

// Shutdown stops the vat gracefully, in this order:
//
//  1. listeners are closed and their accept loops waited for; Dial and
//     Serve fail with ErrStopped from now on;
//  2. connections shut down all at once (they are independent), each with
//     conn.Conn.Shutdown and epitaph ep, bounded by Options.StopTimeout
//     and by ctx (past either, its remaining waits are skipped and its
//     socket closed: the hard close), and Shutdown waits for all of them;
//  3. the bootstrap capability is released;
//  4. the vat actor stops (and its actor system, if the vat started it).
//
// It returns each connection's report. When ctx ends, every remaining
// wait is skipped but every step still runs; the error is then ctx's.
// Shutdown after Stop or Shutdown returns ErrStopped.
func (v *Vat) Shutdown(ctx context.Context, ep supervisor.Epitaph) (Report, error) {
	return v.stop(ctx, ep, true)
}

// Stop stops the vat without draining: the same order as Shutdown, but
// each connection is closed with conn.Conn.Close (calls in flight fail
// with disconnected). Stop waits for every goroutine of the vat to exit.
func (v *Vat) Stop() {
	_, _ = v.stop(context.Background(), supervisor.Epitaph{Code: supervisor.OK}, false)
}

// stop is the one stop path of Shutdown and Stop.
func (v *Vat) stop(ctx context.Context, ep supervisor.Epitaph, graceful bool) (Report, error) {
	start := time.Now()
	v.mu.Lock()
	if v.stopped {
		v.mu.Unlock()
		return Report{}, ErrStopped
	}
	v.stopped = true
	close(v.stopping)
	ls := v.listeners
	v.listeners = nil
	v.mu.Unlock()

	for _, l := range ls {
		l.Close()
	}
	v.accepting.Wait()
	v.mu.Lock()
	rds := v.redialers
	v.redialers = nil
	v.mu.Unlock()
	for _, r := range rds {
		r.Close() // no redial while the connections close
	}
	// Connections are independent: they end all at once, each within
	// StopTimeout (OTP stops dynamic children so; gRPC's GracefulStop
	// drains all its connections together).
	cs := v.Conns()
	rep := Report{Conns: make([]conn.Report, len(cs))}
	var ending sync.WaitGroup
	for i, c := range cs {
		ending.Add(1)
		go func() {
			defer ending.Done()
			rep.Conns[len(cs)-1-i] = v.stopConn(ctx, c, ep, graceful)
		}()
	}
	ending.Wait()
	_ = v.system.Root.StopFuture(v.pid).Wait()
	v.stopMeters()
	v.opts.Bootstrap.Release()
	rep.Took = time.Since(start)
	return rep, ctx.Err()
}

// jittered is d ±10 %, by r in [0, 1).
func jittered(d time.Duration, r float64) time.Duration {
	return time.Duration(float64(d) * (0.9 + 0.2*r))
}

// ageOut ends c, which has reached MaxConnectionAge, gracefully.
func (v *Vat) ageOut(c *conn.Conn) {
	grace := v.opts.MaxConnectionAgeGrace
	if grace <= 0 {
		grace = v.opts.StopTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	v.opts.Logger.Debug("capnp: max connection age", "vat", v.opts.Name, "peer", c.Peer())
	_, _ = c.Shutdown(ctx, supervisor.Epitaph{Code: supervisor.Unavailable, Message: MaxConnectionAgeMessage})
}

// MaxConnectionAgeMessage is the epitaph's message of a connection ended
// by Options.MaxConnectionAge.
const MaxConnectionAgeMessage = "max connection age"

// stopConn ends one connection within Options.StopTimeout.
func (v *Vat) stopConn(ctx context.Context, c *conn.Conn, ep supervisor.Epitaph, graceful bool) conn.Report {
	if !graceful {
		_ = c.Close()
		return c.Report()
	}
	cctx, cancel := context.WithTimeout(ctx, v.opts.StopTimeout)
	defer cancel()
	rep, err := c.Shutdown(cctx, ep)
	if err != nil {
		v.opts.Logger.Warn("capnp: connection shutdown cut short", "vat", v.opts.Name, "peer", c.Peer(), "err", err)
	}
	return rep
}

// event passes a connection's lifecycle event to the vat's subscribers.
func (v *Vat) event(e conn.Event) {
	if v.opts.OnEvent != nil {
		v.opts.OnEvent(e)
	}
	v.mu.Lock()
	subs := v.subscribers
	v.mu.Unlock()
	for _, pid := range subs {
		v.system.Root.Send(pid, e)
	}
}

// vatActor is the vat's actor: it spawns connection actors as children and
// keeps them in start order.
type vatActor struct {
	v       *Vat
	aging   map[*conn.Conn]*time.Timer // MaxConnectionAge
	conns   []*conn.Conn
	slotted map[*conn.Conn]bool // accepted connections holding a slot of Options.MaxConns
}

func (a *vatActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case spawnConn:
		opts := a.v.opts.Conn
		opts.Bootstrap = a.v.opts.Bootstrap
		if m.ownBoot {
			opts.Bootstrap = m.boot
		}
		opts.PeerInfo = m.peer
		if opts.PeerInfo == nil {
			opts.PeerInfo = conn.PeerInfoOf(m.nc)
		}
		opts.Role = m.role
		opts.Peer = m.nc.RemoteAddr().String()
		if m.spanParent != nil {
			opts.SpanParent = m.spanParent
		}
		if opts.Logger == nil {
			opts.Logger = a.v.opts.Logger
		}
		if user := opts.OnEvent; user != nil {
			opts.OnEvent = func(e conn.Event) { user(e); a.v.event(e) }
		} else {
			opts.OnEvent = a.v.event
		}
		c := conn.Spawn(ctx, a.v.system.Root, conn.NewStreamTransport(m.nc, opts.Limits), opts)
		a.conns = append(a.conns, c)
		a.v.connUp(c)
		if age := a.v.opts.MaxConnectionAge; age > 0 && m.role == "server" {
			if a.aging == nil {
				a.aging = map[*conn.Conn]*time.Timer{}
			}
			a.aging[c] = time.AfterFunc(jittered(age, rand.Float64()), func() { a.v.ageOut(c) })
		}
		if m.slot {
			if a.slotted == nil {
				a.slotted = map[*conn.Conn]bool{}
			}
			a.slotted[c] = true
		}
		ctx.Respond(c)
	case spawnChild:
		ctx.Respond(ctx.Spawn(m.props))
	case listConns:
		out := make([]*conn.Conn, 0, len(a.conns))
		for _, c := range a.conns {
			select {
			case <-c.Done():
			default:
				out = append(out, c)
			}
		}
		ctx.Respond(out)
	case conn.Down:
		a.v.connDown(m.Conn)
		if t := a.aging[m.Conn]; t != nil {
			t.Stop()
			delete(a.aging, m.Conn)
		}
		for i, c := range a.conns {
			if c == m.Conn {
				a.conns = append(a.conns[:i], a.conns[i+1:]...)
				break
			}
		}
		if a.slotted[m.Conn] {
			delete(a.slotted, m.Conn)
			a.v.giveConnSlot()
		}
	}
}
