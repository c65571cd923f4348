package actors

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	"github.com/asynkron/protoactor-go/actor"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/vatactor/vatactor/conn"
	"github.com/vatactor/vatactor/supervisor"
	"github.com/vatactor/vatactor/tracing"
)

// RedialOptions configures Vat.DialSupervised.
type RedialOptions struct {
	// Policy decides, from each connection's end reason, whether and when
	// to redial. Zero fields take supervisor.DefaultPolicy's values
	// (permanent, 10 restarts a minute, gRPC's backoff).
	Policy supervisor.Policy
	// WaitDuringOutage makes calls made while there is no connection wait
	// for the next one (bounded by the call's context), and sends a call
	// the connection refused as not processed (a draining server) once
	// more on the next connection. Default: they fail at once with a
	// disconnected error that wraps conn.ErrNotProcessed.
	WaitDuringOutage bool
	// DialTimeout bounds each dial, bootstrap included. Default 10s.
	DialTimeout time.Duration
	// OnEvent, if set, is told each step: dialing, connected, down,
	// waiting, escalated, stopped. It must not block.
	OnEvent func(RedialEvent)
}

// RedialEvent is one step of a supervised dial.
type RedialEvent struct {
	Kind    string        // "dialing", "connected", "down", "waiting", "retrying" (a call refused as not processed), "escalated", "stopped"
	Attempt int           // dials made so far
	Delay   time.Duration // for "waiting": the backoff before the next dial
	Reason  supervisor.Reason
	Err     error // a failed dial, or the escalation
}

func (e RedialEvent) String() string {
	s := fmt.Sprintf("redial %s (attempt %d)", e.Kind, e.Attempt)
	if e.Delay > 0 {
		s += fmt.Sprintf(" in %v", e.Delay.Round(time.Millisecond))
	}
	if e.Reason != nil {
		s += fmt.Sprintf(": %v", e.Reason)
	}
	if e.Err != nil {
		s += fmt.Sprintf(": %v", e.Err)
	}
	return s
}

// Redialer keeps a connection to one peer alive, as Cap'n Proto C++'s
// autoReconnect does: its Client stays valid across redials and reaches
// the peer's bootstrap capability over whichever connection is current.
// Calls in flight when a connection ends fail with disconnected (they are
// not retried: whether they ran is in the error, see conn.ErrNotProcessed).
type Redialer struct {
	v              *Vat
	network, addr  string
	opts           RedialOptions
	pid            *actor.PID
	client         capnp.Client // the stable client users hold
	done           chan struct{}
	dialCtx        context.Context
	cancelDialling context.CancelFunc

	mu       sync.Mutex // guards the following
	boot     capnp.Client
	cn       *conn.Conn
	ready    chan struct{} // closed when boot becomes valid; replaced at each loss
	err      error         // set once the redialer has stopped (escalation or Close)
	attempts int
	span     trace.Span // the caller's: it records the steps
}

// DialSupervised dials network/address and keeps the connection alive:
// when it ends, the policy decides from the reason whether to redial,
// after a backoff; exceeding the restart intensity stops the redialer
// (Err then wraps supervisor.ErrEscalated). It returns at once; the first
// dial runs in the background.
//
// ctx's span is the parent of every connection span the redialer makes,
// and gets an event per step ("redial": dialing, connected, down, waiting
// with its backoff, escalated, stopped; each with its attempt). Its end
// does not stop the redialer: Close does.
func (v *Vat) DialSupervised(ctx context.Context, network, address string, opts RedialOptions) (*Redialer, error) {
	def := supervisor.DefaultPolicy
	if opts.Policy.Intensity.MaxRestarts <= 0 || opts.Policy.Intensity.Period <= 0 {
		opts.Policy.Intensity = def.Intensity
	}
	if opts.Policy.Backoff.Initial <= 0 || opts.Policy.Backoff.Multiplier < 1 || opts.Policy.Backoff.Max <= 0 {
		opts.Policy.Backoff = def.Backoff
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 10 * time.Second
	}
	r := &Redialer{v: v, network: network, addr: address, opts: opts, done: make(chan struct{}), ready: make(chan struct{})}
	r.dialCtx, r.cancelDialling = context.WithCancel(context.WithoutCancel(ctx))
	r.span = trace.SpanFromContext(ctx)
	r.client = capnp.NewClient(&redialHook{r: r})
	v.mu.Lock()
	if v.stopped {
		v.mu.Unlock()
		return nil, ErrStopped
	}
	v.redialers = append(v.redialers, r)
	v.mu.Unlock()
	ra := &redialActor{r: r, sup: supervisor.Supervisor{Policy: opts.Policy}}
	pid, err := v.spawnChild(actor.PropsFromProducer(func() actor.Actor { return ra }))
	if err != nil {
		return nil, err
	}
	r.pid = pid
	return r, nil
}

// Client returns a new reference to the stable client; the caller
// releases it.
func (r *Redialer) Client() capnp.Client { return r.client.AddRef() }

// Conn returns the current connection, or nil during an outage.
func (r *Redialer) Conn() *conn.Conn {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cn
}

// Done is closed when the redialer has stopped for good.
func (r *Redialer) Done() <-chan struct{} { return r.done }

// Err is why the redialer stopped (an *supervisor.EscalationError, or
// ErrStopped after Close), or nil while it runs.
func (r *Redialer) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// Close stops redialing and releases the current bootstrap capability;
// the connection itself is left to the vat. Calls on Client fail from now
// on.
func (r *Redialer) Close() {
	r.v.system.Root.Send(r.pid, redialStop{err: ErrStopped})
	<-r.done
	r.client.Release()
}

// current returns the bootstrap capability of the current connection,
// waiting for one if the options say so.
func (r *Redialer) current(ctx context.Context) (capnp.Client, error) {
	boot, _, err := r.after(ctx, nil)
	return boot, err
}

// after is current on a connection other than not (nil: any), and that
// connection.
func (r *Redialer) after(ctx context.Context, not *conn.Conn) (capnp.Client, *conn.Conn, error) {
	for {
		r.mu.Lock()
		boot, cn, ready, err := r.boot, r.cn, r.ready, r.err
		if boot.IsValid() && (not == nil || cn != not) {
			boot = boot.AddRef()
		} else {
			boot = capnp.Client{}
		}
		r.mu.Unlock()
		switch {
		case err != nil:
			return capnp.Client{}, nil, exc.WrapError("disconnected", &exc.Exception{Type: exc.Disconnected, Cause: err})
		case boot.IsValid():
			return boot, cn, nil
		case not != nil && cn == not:
			// The connection that refused: wait for the next one.
			select {
			case <-not.Done():
			case <-r.done:
			case <-ctx.Done():
				return capnp.Client{}, nil, ctx.Err()
			}
			continue
		case !r.opts.WaitDuringOutage:
			return capnp.Client{}, nil, &exc.Exception{Type: exc.Disconnected, Prefix: "disconnected",
				Cause: fmt.Errorf("%w: no connection to %s (redialing)", conn.ErrNotProcessed, r.addr)}
		}
		select {
		case <-ready:
		case <-r.done:
		case <-ctx.Done():
			return capnp.Client{}, nil, ctx.Err()
		}
	}
}

func (r *Redialer) emit(e RedialEvent) {
	if e.Attempt == 0 { // the dials made so far, whatever the step
		r.mu.Lock()
		e.Attempt = r.attempts
		r.mu.Unlock()
	}
	if r.span.IsRecording() {
		attrs := []attribute.KeyValue{tracing.AttrRedialStep.String(e.Kind), tracing.AttrRedialAttempt.Int(e.Attempt)}
		if e.Delay > 0 {
			attrs = append(attrs, tracing.AttrRedialBackoff.Int64(e.Delay.Milliseconds()))
		}
		if e.Reason != nil {
			attrs = append(attrs, tracing.AttrReason.String(e.Reason.Error()))
		}
		if e.Err != nil {
			attrs = append(attrs, tracing.AttrError.String(e.Err.Error()))
		}
		r.span.AddEvent("redial", trace.WithAttributes(attrs...))
	}
	if r.opts.OnEvent != nil {
		r.opts.OnEvent(e)
	}
}

// redialHook is the ClientHook of the stable client: each call goes to the
// current connection's bootstrap capability.
type redialHook struct{ r *Redialer }

func (h *redialHook) Send(ctx context.Context, s capnp.Send) (*capnp.Answer, capnp.ReleaseFunc) {
	if h.r.opts.WaitDuringOutage {
		return h.sendRetrying(ctx, s)
	}
	return h.sendOnce(ctx, s)
}

func (h *redialHook) sendOnce(ctx context.Context, s capnp.Send) (*capnp.Answer, capnp.ReleaseFunc) {
	ans, rel, _ := h.sendOn(ctx, s, nil)
	return ans, rel
}

// sendOn sends s on a connection other than not (nil: the current one)
// and says which.
func (h *redialHook) sendOn(ctx context.Context, s capnp.Send, not *conn.Conn) (*capnp.Answer, capnp.ReleaseFunc, *conn.Conn) {
	c, cn, err := h.r.after(ctx, not)
	if err != nil {
		return capnp.ErrorAnswer(s.Method, err), func() {}, nil
	}
	defer c.Release()
	ans, rel := c.SendCall(ctx, s)
	return ans, rel, cn
}

// sendRetrying sends s and, when the connection refuses it as not
// processed (a draining server), sends it once more on the next
// connection: the caller never sees that refusal. A call whose outcome
// is unknown is never sent again; calls pipelined on its answer go with
// the attempt in flight and are not retried.
func (h *redialHook) sendRetrying(ctx context.Context, s capnp.Send) (*capnp.Answer, capnp.ReleaseFunc) {
	msg, seg := capnp.NewSingleSegmentMessage(nil)
	args, err := capnp.NewRootStruct(seg, s.ArgsSize)
	if err == nil && s.PlaceArgs != nil {
		err = s.PlaceArgs(args) // once: a retry sends a copy of these
	}
	if err != nil {
		msg.Release()
		return capnp.ErrorAnswer(s.Method, err), func() {}
	}
	again := capnp.Send{Method: s.Method, ArgsSize: s.ArgsSize, PlaceArgs: func(dst capnp.Struct) error { return dst.CopyFrom(args) }}
	rc := &retryingCall{}
	var used *conn.Conn
	rc.ans, rc.rel, used = h.sendOn(ctx, again, nil)
	p := capnp.NewPromise(s.Method, rc, nil)
	first := rc.ans
	go func() {
		defer msg.Release()
		st, err := first.Struct()
		rc.mu.Lock()
		retry := errors.Is(err, conn.ErrNotProcessed) && !rc.released && ctx.Err() == nil
		if retry {
			rc.rel() // the refused attempt
			rc.rel = nil
		}
		rc.mu.Unlock()
		if retry {
			h.r.emit(RedialEvent{Kind: "retrying", Err: err})
			ans, rel, _ := h.sendOn(ctx, again, used) // the next connection
			rc.mu.Lock()
			rc.ans, rc.rel = ans, rel
			released := rc.released
			rc.mu.Unlock()
			if released {
				rel() // released meanwhile: this cancels it
			}
			st, err = ans.Struct()
		}
		p.Resolve(st.ToPtr(), err)
	}()
	return p.Answer(), func() {
		rc.mu.Lock()
		if rc.released {
			rc.mu.Unlock()
			return
		}
		rc.released = true
		rel := rc.rel
		rc.mu.Unlock()
		if rel != nil {
			rel() // cancels the attempt in flight, or frees its results
		}
		p.ReleaseClients()
	}
}

// retryingCall is the attempt in flight of a call that sendRetrying may
// send twice.
type retryingCall struct {
	mu       sync.Mutex
	ans      *capnp.Answer
	rel      capnp.ReleaseFunc
	released bool
}

func (rc *retryingCall) current() *capnp.Answer {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.ans
}

func (rc *retryingCall) PipelineSend(ctx context.Context, transform []capnp.PipelineOp, s capnp.Send) (*capnp.Answer, capnp.ReleaseFunc) {
	return rc.current().PipelineSend(ctx, transform, s)
}

func (rc *retryingCall) PipelineRecv(ctx context.Context, transform []capnp.PipelineOp, r capnp.Recv) capnp.PipelineCaller {
	return rc.current().PipelineRecv(ctx, transform, r)
}

func (h *redialHook) Recv(ctx context.Context, rc capnp.Recv) capnp.PipelineCaller {
	c, err := h.r.current(ctx)
	if err != nil {
		rc.Reject(err)
		return nil
	}
	defer c.Release()
	return c.RecvCall(ctx, rc)
}

func (h *redialHook) Brand() capnp.Brand { return capnp.Brand{Value: h} }
func (h *redialHook) Shutdown()          {}
func (h *redialHook) String() string     { return "supervised dial to " + h.r.addr }

// Messages of the redialer actor.
type (
	redialDial   struct{}
	redialDialed struct {
		boot capnp.Client
		cn   *conn.Conn
		err  error
	}
	redialDown struct{ cn *conn.Conn }
	redialStop struct{ err error }
)

// redialActor is the redialer's actor, a child of the vat: it owns the
// supervision state and decides after every end.
type redialActor struct {
	r       *Redialer
	sup     supervisor.Supervisor
	timer   *time.Timer
	stopped bool
}

func (a *redialActor) Receive(ctx actor.Context) {
	r := a.r
	switch m := ctx.Message().(type) {
	case *actor.Started:
		a.dial(ctx)
	case redialDial:
		if !a.stopped {
			a.dial(ctx)
		}
	case redialDialed:
		if a.stopped {
			if m.err == nil {
				m.boot.Release()
			}
			return
		}
		if m.err != nil {
			r.v.meterRedial("failed")
			a.ended(ctx, nil, m.err)
			return
		}
		r.v.meterRedial("connected")
		a.sup.Started()
		r.mu.Lock()
		r.boot, r.cn = m.boot, m.cn
		close(r.ready)
		attempts := r.attempts
		r.mu.Unlock()
		r.emit(RedialEvent{Kind: "connected", Attempt: attempts})
		self := ctx.Self()
		go func() {
			<-m.cn.Done()
			r.v.system.Root.Send(self, redialDown{cn: m.cn})
		}()
	case redialDown:
		r.mu.Lock()
		if r.cn != m.cn {
			r.mu.Unlock()
			return
		}
		boot := r.boot
		r.boot, r.cn, r.ready = capnp.Client{}, nil, make(chan struct{})
		r.mu.Unlock()
		boot.Release()
		if a.stopped {
			return
		}
		reason := m.cn.Err()
		r.emit(RedialEvent{Kind: "down", Reason: reason})
		a.ended(ctx, reason, nil)
	case redialStop:
		a.stop(m.err)
	case *actor.Stopping:
		a.stop(ErrStopped)
	}
}

// dial starts one dial in the background.
func (a *redialActor) dial(ctx actor.Context) {
	r := a.r
	r.mu.Lock()
	r.attempts++
	n := r.attempts
	r.mu.Unlock()
	r.emit(RedialEvent{Kind: "dialing", Attempt: n})
	self := ctx.Self()
	go func() {
		dctx, cancel := context.WithTimeout(r.dialCtx, r.opts.DialTimeout)
		defer cancel()
		boot, cn, err := r.v.Dial(dctx, r.network, r.addr)
		r.v.system.Root.Send(self, redialDialed{boot: boot, cn: cn, err: err})
	}()
}

// ended asks the policy what to do after a connection ended (reason) or a
// dial failed (dialErr).
func (a *redialActor) ended(ctx actor.Context, reason supervisor.Reason, dialErr error) {
	r := a.r
	d := a.sup.Ended(time.Now(), reason, dialErr)
	switch {
	case d.Escalate:
		r.v.meterRedial("escalated")
		r.emit(RedialEvent{Kind: "escalated", Err: d.Err})
		a.stop(d.Err)
	case d.Restart:
		r.mu.Lock()
		n := r.attempts
		r.mu.Unlock()
		r.emit(RedialEvent{Kind: "waiting", Attempt: n, Delay: d.After, Err: dialErr})
		self := ctx.Self()
		a.timer = time.AfterFunc(d.After, func() { r.v.system.Root.Send(self, redialDial{}) })
	default:
		a.stop(fmt.Errorf("not restarted (%v): %w", a.sup.Policy.Restart, reasonOrErr(reason, dialErr)))
	}
}

func reasonOrErr(r supervisor.Reason, err error) error {
	if r != nil {
		return r
	}
	return err
}

// stop ends the redialer once: no more dials, callers told why.
func (a *redialActor) stop(err error) {
	if a.stopped {
		return
	}
	a.stopped = true
	if a.timer != nil {
		a.timer.Stop()
	}
	r := a.r
	r.cancelDialling()
	r.mu.Lock()
	r.err = err
	boot := r.boot
	r.boot = capnp.Client{}
	r.mu.Unlock()
	boot.Release()
	r.emit(RedialEvent{Kind: "stopped", Err: err})
	close(r.done)
}
