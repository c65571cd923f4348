package actors_test

// The hostile-peer suite: hand-built frames over real loopback TCP against
// a vat serving Echo, one test per way a peer can try to crash, exhaust or
// wedge it. Each case checks that nothing panics (a panic anywhere ends
// the test binary), the victim connection's typed reason, what went back
// on the wire, that the heap grows with the budget and not with what the
// attacker declares, that no goroutine is left, and that a healthy
// connection on the same vat answers throughout without one failure.

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"
	"go.uber.org/goleak"

	"github.com/vatactor/vatactor/actors"
	"github.com/vatactor/vatactor/conn"
	"github.com/vatactor/vatactor/interop"
	"github.com/vatactor/vatactor/supervisor"
)

// arena is a server vat under attack and a healthy client calling it.
type arena struct {
	t      *testing.T
	vat    *actors.Vat
	addr   net.Addr
	mu     sync.Mutex
	downs  map[string]conn.Down // by the peer's address
	downCh chan struct{}

	logs         *wireLog // the victim's log lines
	healthy      interop.Echo
	calls, fails atomic.Int64
	stopHealthy  func()
}

// newArena starts the victim vat with copts (and a debug logger when
// debug) and a healthy vat-to-vat connection that echoes in a loop.
func newArena(t *testing.T, copts conn.Options, debug bool) *arena {
	t.Helper()
	return newArenaWith(t, actors.Options{}, copts, debug)
}

// newArenaWith is newArena with the victim vat's options (its Name,
// Conn, Bootstrap, OnEvent and Logger are set here).
func newArenaWith(t *testing.T, opts actors.Options, copts conn.Options, debug bool) *arena {
	t.Helper()
	leaks := append([]goleak.Option{goleak.IgnoreCurrent()}, leakOptions...)
	t.Cleanup(func() { goleak.VerifyNone(t, leaks...) }) // runs last
	if copts.LingerTimeout == 0 {
		copts.LingerTimeout = 200 * time.Millisecond // the peers here never send their FIN
	}
	a := &arena{t: t, downs: map[string]conn.Down{}, downCh: make(chan struct{}, 1), logs: &wireLog{}}
	opts.Name, opts.Conn = "victim", copts
	opts.Bootstrap = capnp.Client(interop.NewEchoServer().Client(actors.NewServer))
	opts.OnEvent = func(e conn.Event) {
		if d, ok := e.(conn.Down); ok {
			a.mu.Lock()
			a.downs[d.Conn.Peer()] = d
			a.mu.Unlock()
			select {
			case a.downCh <- struct{}{}:
			default:
			}
		}
	}
	opts.Logger = slog.New(logRecorder{a.logs, debug})
	a.vat = actors.Spawn(opts)
	addr, err := a.vat.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a.addr = addr

	client := actors.Spawn(actors.Options{Name: "healthy"})
	boot, _, err := client.Dial(context.Background(), "tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	a.healthy = interop.Echo(boot)
	ctx, cancel := context.WithCancel(context.Background())
	var loop sync.WaitGroup
	loop.Add(1)
	go func() {
		defer loop.Done()
		for ctx.Err() == nil {
			cctx, done := context.WithTimeout(ctx, 10*time.Second)
			got, err := echoText(cctx, a.healthy, "still here")
			done()
			if ctx.Err() != nil {
				return
			}
			a.calls.Add(1)
			if err != nil || got != "still here" {
				a.fails.Add(1)
				t.Errorf("healthy connection: %q, %v", got, err)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	a.stopHealthy = func() { cancel(); loop.Wait() }
	t.Cleanup(func() {
		a.checkHealthy()
		boot.Release()
		client.Stop()
		a.vat.Stop()
	})
	return a
}

// logRecorder keeps the victim vat's log messages (its wire, at debug
// level, only when debug).
type logRecorder struct {
	w     *wireLog
	debug bool
}

func (l logRecorder) Enabled(_ context.Context, lvl slog.Level) bool {
	return l.debug || lvl >= slog.LevelInfo
}
func (l logRecorder) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l logRecorder) WithGroup(string) slog.Handler      { return l }
func (l logRecorder) Handle(_ context.Context, r slog.Record) error {
	line := r.Message
	r.Attrs(func(a slog.Attr) bool { line += " " + a.String(); return true })
	l.w.mu.Lock()
	l.w.lines = append(l.w.lines, line)
	l.w.mu.Unlock()
	return nil
}

// checkHealthy stops the healthy loop and checks it made calls, all fine.
func (a *arena) checkHealthy() {
	a.t.Helper()
	if a.stopHealthy == nil {
		return
	}
	for deadline := time.Now().Add(10 * time.Second); a.calls.Load() == 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond) // at least one call made during the attack
	}
	a.stopHealthy()
	a.stopHealthy = nil
	if a.calls.Load() == 0 || a.fails.Load() != 0 {
		a.t.Errorf("healthy connection: %d calls, %d failed", a.calls.Load(), a.fails.Load())
	}
}

// down waits for the end of the victim connection whose peer is p.
func (a *arena) down(p *hostilePeer) conn.Down {
	a.t.Helper()
	peer := p.nc.LocalAddr().String()
	deadline := time.After(30 * time.Second)
	for {
		a.mu.Lock()
		d, ok := a.downs[peer]
		a.mu.Unlock()
		if ok {
			return d
		}
		select {
		case <-a.downCh:
		case <-time.After(10 * time.Millisecond):
		case <-deadline:
			a.t.Fatalf("the connection of %s did not end", peer)
		}
	}
}

// wantReason checks the victim's reason: of kind R, wrapping sentinel.
func wantReason[R supervisor.Reason](t *testing.T, d conn.Down, sentinel error) {
	t.Helper()
	var r R
	if !errors.As(d.Reason, &r) || (sentinel != nil && !errors.Is(d.Reason, sentinel)) {
		t.Fatalf("reason %v (%T), want %T wrapping %v", d.Reason, d.Reason, r, sentinel)
	}
}

var leakOptions = []goleak.Option{
	goleak.IgnoreAnyFunction("github.com/asynkron/protoactor-go/actor.(*deadLetterProcess).init.func1"),
	goleak.IgnoreAnyFunction("github.com/asynkron/protoactor-go/actor.NewDeadLetter.NewThrottle.func4.1"),
}

// hostilePeer writes what it likes to the victim and records what comes
// back.
type hostilePeer struct {
	t    *testing.T
	log  *wireLog // the victim's
	nc   *net.TCPConn
	recv chan string // DescribeMessage of each message received; closed at the end
	end  chan error  // how reading ended
	sent int64       // bytes written
}

// attack connects a hostile peer; read: whether it reads what the victim
// sends (a peer that never reads leaves it in the socket).
func (a *arena) attack(read bool) *hostilePeer {
	a.t.Helper()
	nc, err := net.Dial("tcp", a.addr.String())
	if err != nil {
		a.t.Fatal(err)
	}
	p := &hostilePeer{t: a.t, log: a.logs, nc: nc.(*net.TCPConn), recv: make(chan string, 1024), end: make(chan error, 1)}
	a.t.Cleanup(func() { nc.Close() })
	if read {
		go func() {
			dec := capnp.NewDecoder(nc)
			dec.MaxMessageSize = 1 << 30
			for {
				msg, err := dec.Decode()
				if err != nil {
					close(p.recv)
					p.end <- err
					return
				}
				m, err := rpccp.ReadRootMessage(msg)
				if err == nil {
					keepLatest(p.recv, conn.DescribeMessage(m))
				}
			}
		}()
	}
	return p
}

// keepLatest queues d; a peer flooded with answers drops the oldest it
// has not looked at, so that the last messages (an Abort) are kept.
func keepLatest(ch chan string, d string) {
	for {
		select {
		case ch <- d:
			return
		default:
		}
		select {
		case <-ch:
		default:
		}
	}
}

// send writes one message built by fill.
func (p *hostilePeer) send(fill func(rpccp.Message) error) {
	p.t.Helper()
	msg, seg := capnp.NewSingleSegmentMessage(nil)
	m, _ := rpccp.NewRootMessage(seg)
	if err := fill(m); err != nil {
		p.t.Fatal(err)
	}
	b, err := msg.Marshal()
	if err != nil {
		p.t.Fatal(err)
	}
	p.write(b)
}

// write writes raw bytes (a write the victim no longer reads fails; the
// attack is over then).
func (p *hostilePeer) write(b []byte) bool {
	_ = p.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	n, err := p.nc.Write(b)
	p.sent += int64(n)
	return err == nil
}

// expect waits for a received message whose description starts with
// prefix, skipping others; it returns it.
func (p *hostilePeer) expect(prefix string) string {
	p.t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case d, ok := <-p.recv:
			if !ok {
				p.t.Fatalf("connection ended before %q; victim's log: %s", prefix, p.log)
			}
			if strings.HasPrefix(d, prefix) {
				return d
			}
		case <-timeout:
			p.t.Fatalf("no %q", prefix)
		}
	}
}

// heapWatch samples the live heap (what the last collection found
// reachable: the attacker's own garbage does not count) until stopped,
// and reports the largest growth over the start.
type heapWatch struct {
	base uint64
	peak atomic.Uint64
	stop chan struct{}
	done chan struct{}
}

// end stops the watch (once).
func (h *heapWatch) end() {
	select {
	case <-h.stop:
	default:
		close(h.stop)
	}
	<-h.done
}

func liveHeap() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

func watchHeap(t *testing.T) *heapWatch {
	runtime.GC()
	h := &heapWatch{base: liveHeap(), stop: make(chan struct{}), done: make(chan struct{})}
	h.peak.Store(h.base)
	t.Cleanup(h.end)
	go func() {
		defer close(h.done)
		for {
			if l := liveHeap(); l > h.peak.Load() {
				h.peak.Store(l)
			}
			select {
			case <-h.stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	return h
}

// check stops the watch and checks the growth is within limit.
func (h *heapWatch) check(t *testing.T, limit uint64, what string) {
	t.Helper()
	h.end()
	grew := int64(h.peak.Load()) - int64(h.base)
	t.Logf("%s: live heap grew by at most %.1f MiB (bound %.1f MiB)", what, float64(grew)/(1<<20), float64(limit)/(1<<20))
	if grew > int64(limit) {
		t.Fatalf("%s: live heap grew by %d bytes, more than %d", what, grew, limit)
	}
}

// Message builders.

// callOn builds a Call of iface/method with question q on the target set
// by tgt, with params filled by args (nil: an empty struct).
func callOn(q uint32, tgt func(rpccp.MessageTarget) error, method uint16, args func(rpccp.Payload) error) func(rpccp.Message) error {
	return func(m rpccp.Message) error {
		c, err := m.NewCall()
		if err != nil {
			return err
		}
		c.SetQuestionId(q)
		c.SetInterfaceId(interop.Echo_TypeID)
		c.SetMethodId(method)
		t, err := c.NewTarget()
		if err != nil {
			return err
		}
		if err := tgt(t); err != nil {
			return err
		}
		p, err := c.NewParams()
		if err != nil {
			return err
		}
		if args != nil {
			return args(p)
		}
		st, err := capnp.NewStruct(p.Segment(), capnp.ObjectSize{})
		if err != nil {
			return err
		}
		return p.SetContent(st.ToPtr())
	}
}

// onAnswer targets the answer to q, at the pointer fields path.
func onAnswer(q uint32, path ...uint16) func(rpccp.MessageTarget) error {
	return func(t rpccp.MessageTarget) error {
		pa, err := t.NewPromisedAnswer()
		if err != nil {
			return err
		}
		pa.SetQuestionId(q)
		ops, err := pa.NewTransform(int32(len(path)))
		for i, f := range path {
			ops.At(i).SetGetPointerField(f)
		}
		return err
	}
}

// textArgs are the params of echo(text) or self(tag).
func textArgs(text string) func(rpccp.Payload) error {
	return func(p rpccp.Payload) error {
		args, err := interop.NewEcho_echo_Params(p.Segment())
		if err != nil {
			return err
		}
		if err := args.SetText(text); err != nil {
			return err
		}
		return p.SetContent(args.ToPtr())
	}
}

// waitArgs are the params of wait(ms).
func waitArgs(ms uint32) func(rpccp.Payload) error {
	return func(p rpccp.Payload) error {
		args, err := capnp.NewStruct(p.Segment(), capnp.ObjectSize{DataSize: 8})
		if err != nil {
			return err
		}
		args.SetUint32(0, ms)
		return p.SetContent(args.ToPtr())
	}
}

func finishMsg(q uint32) func(rpccp.Message) error {
	return func(m rpccp.Message) error {
		f, err := m.NewFinish()
		f.SetQuestionId(q)
		return err
	}
}

// Echo's method ids.
const (
	methodEcho     = 0
	methodSelf     = 2
	methodCallBack = 5
	methodWait     = 6
)

// TestHostilePipelinedOnNull: calls pipelined on the answer to a call
// still running, whose results have no capability there (or that name a
// method the capability lacks), are answered with exceptions. They used
// to crash the process inside go-capnp's answer queue.
func TestHostilePipelinedOnNull(t *testing.T) {
	a := newArena(t, conn.Options{}, false)
	p := a.attack(true)
	p.send(bootstrapMsg(0))
	p.send(callOn(1, onAnswer(0), methodWait, waitArgs(100)))          // runs 100 ms
	p.send(callOn(2, onAnswer(1, 0), methodEcho, textArgs("x")))       // wait's results have no pointer
	p.send(callOn(3, onAnswer(0), methodSelf, textArgs("t")))          // an Echo in its results…
	p.send(callOn(4, onAnswer(3, 0), 99, nil))                         // …which has no method 99
	p.send(callOn(5, onAnswer(3, 0, 0), methodEcho, textArgs("x")))    // a path through a capability
	p.send(callOn(6, onAnswer(4, 0), methodEcho, textArgs("x")))       // pipelined on the failed one
	p.send(callOn(7, onAnswer(3, 0), methodEcho, textArgs("through"))) // and one that works
	got := map[string]string{}
	for _, q := range []string{"q2", "q4", "q5", "q6", "q7"} {
		for got[q] == "" {
			d := p.expect("return q")
			got[strings.Fields(d)[1]] = d
		}
	}
	for q, want := range map[string]string{
		"q2": "exception failed", "q4": "exception unimplemented", "q5": "exception failed",
		"q6": "exception", "q7": "results",
	} {
		if !strings.Contains(got[q], want) {
			t.Errorf("%s: %s, want %s", q, got[q], want)
		}
	}
	a.checkHealthy()
}

// TestHostilePipelinedChainThenEOF: a chain of 10,000 calls, each
// pipelined on the one before, then EOF: the connection ends with PeerEOF,
// nothing crashes, nothing is left.
func TestHostilePipelinedChainThenEOF(t *testing.T) {
	a := newArena(t, conn.Options{}, false)
	p := a.attack(true)
	var buf []byte
	add := func(fill func(rpccp.Message) error) {
		msg, seg := capnp.NewSingleSegmentMessage(nil)
		m, _ := rpccp.NewRootMessage(seg)
		if err := fill(m); err != nil {
			t.Fatal(err)
		}
		b, _ := msg.Marshal()
		buf = append(buf, b...)
	}
	add(bootstrapMsg(0))
	add(callOn(1, onAnswer(0), methodWait, waitArgs(50)))
	for q := uint32(2); q <= 10_000; q++ {
		add(callOn(q, onAnswer(q-1, 0), methodSelf, textArgs("x")))
	}
	p.write(buf)
	_ = p.nc.CloseWrite()
	d := a.down(p)
	wantReason[supervisor.PeerEOF](t, d, nil)
	a.checkHealthy()
}

// TestHostileResolveLoop: a promise resolved to itself, directly or
// through another promise, is a protocol error; the connection ends at
// once (it used to spin forever).
func TestHostileResolveLoop(t *testing.T) {
	for _, tc := range []struct {
		name  string
		steps [][2]uint32 // Resolve(promise → promise)
		loop  bool        // the steps close a loop for certain
	}{
		{"to itself", [][2]uint32{{7, 7}}, true},
		{"through another", [][2]uint32{{7, 8}, {8, 7}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newArena(t, conn.Options{}, false)
			p := a.attack(true)
			p.send(bootstrapMsg(0))
			// callBack(callback = our promise 7) makes the vat import 7
			// and call it.
			p.send(callOn(1, onAnswer(0), methodCallBack, func(pl rpccp.Payload) error {
				args, err := interop.NewEcho_callBack_Params(pl.Segment())
				if err != nil {
					return err
				}
				caps, err := pl.NewCapTable(1)
				if err != nil {
					return err
				}
				caps.At(0).SetSenderPromise(7)
				if err := capnp.Struct(args).SetPtr(0, capnp.NewInterface(pl.Segment(), 0).ToPtr()); err != nil {
					return err
				}
				if err := args.SetText("hi"); err != nil {
					return err
				}
				return pl.SetContent(args.ToPtr())
			}))
			p.expect("call q") // the vat calls the callback: promise 7 is imported
			for _, st := range tc.steps {
				p.send(func(m rpccp.Message) error {
					r, err := m.NewResolve()
					if err != nil {
						return err
					}
					r.SetPromiseId(st[0])
					d, err := r.NewCap()
					d.SetSenderPromise(st[1])
					return err
				})
			}
			if !tc.loop {
				// Once 7 has resolved, the vat releases it: the 7 the
				// second Resolve names is a new promise, unless it
				// arrives before that Release is sent. Either way the
				// connection must not spin: it answers, or it aborts.
				p.send(callOn(2, onAnswer(0), methodEcho, textArgs("x")))
				d := p.expect("")
				for !strings.HasPrefix(d, "return q2") && !strings.HasPrefix(d, "abort") {
					d = p.expect("")
				}
				if strings.HasPrefix(d, "return q2") {
					a.checkHealthy()
					return
				}
			} else if ab := p.expect("abort"); !strings.Contains(ab, "promise resolution loop") {
				t.Fatalf("abort %s", ab)
			}
			wantReason[supervisor.ProtocolError](t, a.down(p), conn.ErrResolveLoop)
			a.checkHealthy()
		})
	}
}

// TestHostileUnknownTargetWithDebugLog: a call whose target is of an
// unknown kind, with every message logged at debug level: a protocol
// error naming it, not a dead connection actor.
func TestHostileUnknownTargetWithDebugLog(t *testing.T) {
	a := newArena(t, conn.Options{}, true)
	p := a.attack(true)
	p.send(bootstrapMsg(0))
	p.send(callOn(1, func(t rpccp.MessageTarget) error {
		t.SetImportedCap(0)
		capnp.Struct(t).SetUint16(4, 7) // the union's tag: no such kind
		return nil
	}, methodEcho, textArgs("x")))
	if ab := p.expect("abort"); !strings.Contains(ab, "unknown kind") {
		t.Fatalf("abort %s", ab)
	}
	wantReason[supervisor.ProtocolError](t, a.down(p), conn.ErrMalformedFrame)
	a.checkHealthy()
}

// TestHostileNeverReads: a peer that sends calls and never reads what
// comes back. The vat stops reading it once its send queue is over
// budget, then ends it after WriteTimeout without progress; the heap
// stays near the budgets (what waits to be written, what was read and
// not yet handled, the calls running).
func TestHostileNeverReads(t *testing.T) {
	const budget = 1 << 20
	a := newArena(t, conn.Options{Limits: conn.Limits{MaxSendQueue: budget, MaxRecvQueue: budget, MaxCallBytes: budget}, WriteTimeout: 500 * time.Millisecond}, false)
	p := a.attack(false)
	h := watchHeap(t)
	big := strings.Repeat("x", 32<<10)
	p.send(bootstrapMsg(0))
	for q := uint32(1); ; q++ {
		// Each call finished at once: only the send queue holds its
		// answer (held answers have budgets of their own).
		frame := append(marshal(t, callOn(q, onAnswer(0), methodEcho, textArgs(big))), marshal(t, finishMsg(q))...)
		if !p.write(frame) {
			break // the vat no longer reads us
		}
		if q > 1<<16 {
			t.Fatal("the vat read 2 GiB from a peer that never reads")
		}
	}
	d := a.down(p)
	t.Logf("the peer sent %.1f MiB before the vat stopped reading it", float64(p.sent)/(1<<20))
	h.check(t, 16<<20, "never reads")
	wantReason[supervisor.TransportError](t, d, conn.ErrPeerNotReading)
	a.checkHealthy()
}

// TestHostileNeverFinishes: calls and bootstraps without Finish fill the
// held-answer budget, then the connection ends; overloaded answers and
// bootstraps count too.
func TestHostileNeverFinishes(t *testing.T) {
	for _, tc := range []struct {
		name string
		msg  func(q uint32) func(rpccp.Message) error
	}{
		{"calls", func(q uint32) func(rpccp.Message) error {
			return callOn(q, onAnswer(0), methodEcho, textArgs("x"))
		}},
		{"bootstraps", bootstrapMsg},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const held = 2000
			a := newArena(t, conn.Options{MaxAnswers: 100, Limits: conn.Limits{MaxHeldAnswers: held}}, false)
			p := a.attack(true)
			h := watchHeap(t)
			p.send(bootstrapMsg(0))
			for q := uint32(1); q <= 3*held; q++ {
				if !p.write(marshal(t, tc.msg(q))) {
					break
				}
			}
			if ab := p.expect("abort"); !strings.Contains(ab, "MaxHeldAnswers") {
				t.Fatalf("abort %s", ab)
			}
			d := a.down(p)
			h.check(t, 32<<20, "never finishes")
			wantReason[supervisor.ProtocolError](t, d, conn.ErrBudgetExceeded)
			var be *conn.BudgetError
			if !errors.As(d.Reason, &be) || be.Budget != "MaxHeldAnswers" {
				t.Fatalf("reason %v: want the MaxHeldAnswers budget", d.Reason)
			}
			a.checkHealthy()
		})
	}
}

func marshal(t *testing.T, fill func(rpccp.Message) error) []byte {
	msg, seg := capnp.NewSingleSegmentMessage(nil)
	m, _ := rpccp.NewRootMessage(seg)
	if err := fill(m); err != nil {
		t.Fatal(err)
	}
	b, err := msg.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestHostileDeclaredSize: 50 peers each declare a 64 MiB frame and send
// a few bytes of it: the heap grows with what they sent, not with what
// they declared, and each ends at FrameTimeout.
func TestHostileDeclaredSize(t *testing.T) {
	a := newArena(t, conn.Options{Limits: conn.Limits{FrameTimeout: time.Second}}, false)
	h := watchHeap(t)
	var peers []*hostilePeer
	for range 50 {
		p := a.attack(true)
		hdr := make([]byte, 8+1000)
		binary.LittleEndian.PutUint32(hdr[0:], 0)             // one segment
		binary.LittleEndian.PutUint32(hdr[4:], (64<<20)/8-16) // of nearly 64 MiB
		p.write(hdr)
		peers = append(peers, p)
	}
	for _, p := range peers {
		wantReason[supervisor.TransportError](t, a.down(p), conn.ErrFrameTimeout)
		if n := countPrefix(p, ""); n != 0 {
			t.Fatalf("%d messages sent to a peer whose frame never came", n)
		}
	}
	h.check(t, 50*256<<10+8<<20, "50 peers declaring 64 MiB") // a first chunk each (256 KiB), not 64 MiB
	a.checkHealthy()
}

// TestHostileSlowFrame: a peer that sends its frame a byte at a time ends
// at FrameTimeout.
func TestHostileSlowFrame(t *testing.T) {
	a := newArena(t, conn.Options{Limits: conn.Limits{FrameTimeout: 300 * time.Millisecond}}, false)
	p := a.attack(true)
	frame := marshal(t, bootstrapMsg(0))
	go func() {
		for _, b := range frame {
			if !p.write([]byte{b}) {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	wantReason[supervisor.TransportError](t, a.down(p), conn.ErrFrameTimeout)
	a.checkHealthy()
}

// TestHostileUnimplementedEcho: a 1 MiB message of a kind we do not know
// is not echoed back whole: the connection ends, naming the budget.
func TestHostileUnimplementedEcho(t *testing.T) {
	a := newArena(t, conn.Options{}, false)
	p := a.attack(true)
	h := watchHeap(t)
	p.send(func(m rpccp.Message) error {
		if err := callOn(1, onAnswer(0), methodEcho, textArgs(strings.Repeat("u", 1<<20)))(m); err != nil {
			return err
		}
		capnp.Struct(m).SetUint16(0, 60) // the Message union's tag: unknown
		return nil
	})
	if ab := p.expect("abort"); !strings.Contains(ab, "MaxUnimplementedEcho") {
		t.Fatalf("abort %s", ab)
	}
	d := a.down(p)
	h.check(t, 8<<20, "1 MiB unknown message")
	wantReason[supervisor.ProtocolError](t, d, conn.ErrBudgetExceeded)
	a.checkHealthy()
}

// TestHostileManyCaps: one call carrying a million capability
// descriptors ends the connection before any is imported.
func TestHostileManyCaps(t *testing.T) {
	a := newArena(t, conn.Options{}, false)
	p := a.attack(true)
	p.send(bootstrapMsg(0))
	frame := marshal(t, callOn(1, onAnswer(0), methodEcho, func(pl rpccp.Payload) error {
		caps, err := pl.NewCapTable(1_000_000)
		if err != nil {
			return err
		}
		for i := 0; i < caps.Len(); i++ {
			caps.At(i).SetSenderHosted(uint32(i))
		}
		return textArgs("x")(pl)
	}))
	h := watchHeap(t)
	p.write(frame)
	if ab := p.expect("abort"); !strings.Contains(ab, "MaxCapsPerMessage") {
		t.Fatalf("abort %s", ab)
	}
	d := a.down(p)
	h.check(t, 48<<20, "a million capabilities") // the 16 MB frame itself, read once
	wantReason[supervisor.ProtocolError](t, d, conn.ErrBudgetExceeded)
	if rel := countPrefix(p, "release"); rel != 0 {
		t.Fatalf("%d releases sent back", rel)
	}
	a.checkHealthy()
}

// countPrefix counts the messages left to receive that start with prefix.
func countPrefix(p *hostilePeer, prefix string) int {
	n := 0
	for d := range p.recv {
		if strings.HasPrefix(d, prefix) {
			n++
		}
	}
	return n
}

// TestHostileLongAbortReason: a 10 MB Abort reason is kept cut.
func TestHostileLongAbortReason(t *testing.T) {
	a := newArena(t, conn.Options{}, false)
	p := a.attack(true)
	p.send(func(m rpccp.Message) error {
		e, err := m.NewAbort()
		if err != nil {
			return err
		}
		e.SetType(rpccp.Exception_Type_failed)
		return e.SetReason(strings.Repeat("r", 10<<20))
	})
	d := a.down(p)
	var pa supervisor.PeerAbort
	if !errors.As(d.Reason, &pa) {
		t.Fatalf("reason %v", d.Reason)
	}
	if len(pa.Reason) > 2*conn.DefaultMaxReasonLength || !strings.Contains(pa.Reason, "10485760 bytes, cut") {
		t.Fatalf("reason kept: %d bytes, ends %q", len(pa.Reason), pa.Reason[max(0, len(pa.Reason)-40):])
	}
	a.checkHealthy()
}

// TestHostileStopFromBusy: stopping a connection actor the protoactor way
// from an OnEvent hook (on Busy, inside the actor's turn) ends it through
// the same close path as Close; it used to deadlock.
func TestHostileStopFromBusy(t *testing.T) {
	var server atomic.Pointer[actors.Vat]
	var victim atomic.Pointer[conn.Conn]
	v := actors.Spawn(actors.Options{Name: "server",
		Bootstrap: capnp.Client(interop.NewEchoServer().Client(actors.NewServer)),
		OnEvent: func(e conn.Event) {
			if b, ok := e.(conn.Busy); ok && victim.CompareAndSwap(nil, b.Conn) {
				server.Load().System().Root.Stop(b.Conn.PID())
			}
		}})
	server.Store(v)
	defer v.Stop()
	addr, err := v.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	client := actors.Spawn(actors.Options{Name: "client"})
	defer client.Stop()
	boot, _, err := client.Dial(context.Background(), "tcp", addr.String())
	if err == nil {
		boot.Release()
	}
	for deadline := time.Now().Add(10 * time.Second); victim.Load() == nil && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	c := victim.Load()
	if c == nil {
		t.Fatal("no Busy event")
	}
	select {
	case <-c.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("the stopped connection never ended")
	}
	var ls supervisor.LocalShutdown
	if !errors.As(c.Err(), &ls) || ls.Epitaph.Code != supervisor.Canceled {
		t.Fatalf("reason %v", c.Err())
	}
	if ph := c.Report().Phases; len(ph) == 0 || ph[len(ph)-1].Phase != conn.PhaseCloseSocket {
		t.Fatalf("phases %v", ph)
	}
}

// TestHostileDialHandshake: Dial fails when the handshake does: garbage,
// a Return for a question never asked, an Abort.
func TestHostileDialHandshake(t *testing.T) {
	for _, tc := range []struct {
		name  string
		reply []byte
	}{
		{"garbage", []byte("HTTP/1.1 400 Bad Request\r\n\r\n")},
		{"return for an unknown question", marshal(t, func(m rpccp.Message) error {
			r, err := m.NewReturn()
			r.SetAnswerId(77)
			r.SetCanceled()
			return err
		})},
		{"abort", marshal(t, func(m rpccp.Message) error {
			e, err := m.NewAbort()
			e.SetType(rpccp.Exception_Type_failed)
			_ = e.SetReason("go away")
			return err
		})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			go func() {
				c, err := l.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				_, _ = c.Write(tc.reply)
				_, _ = io.Copy(io.Discard, c)
			}()
			v := actors.Spawn(actors.Options{Name: "dialer"})
			defer v.Stop()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			boot, _, err := v.Dial(ctx, "tcp", l.Addr().String())
			if err == nil {
				boot.Release()
				t.Fatal("Dial succeeded")
			}
			t.Logf("Dial: %v", err)
		})
	}
}

// TestHostileAcceptEMFILE: a burst of connections past the file
// descriptor limit makes Accept fail (EMFILE); the listener retries and
// serves again once descriptors are free. The burst comes from another
// process (this test binary again), so that only Accept runs out.
func TestHostileAcceptEMFILE(t *testing.T) {
	a := newArena(t, conn.Options{}, false)
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperDialBurst$")
	cmd.Env = append(os.Environ(), "VATACTOR_DIAL_BURST="+a.addr.String())
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); _ = cmd.Wait() }()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	low := lim
	low.Cur = uint64(countOpenFiles()) // no descriptor left above those in use
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	restored := false
	restore := func() {
		if !restored {
			restored = true
			if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
				t.Fatal(err)
			}
		}
	}
	defer restore()
	// Fill the descriptors free below the limit, so that none is left.
	var fill []*os.File
	for {
		f, err := os.Open(os.DevNull)
		if err != nil {
			break
		}
		fill = append(fill, f)
	}
	defer func() {
		for _, f := range fill {
			f.Close()
		}
	}()
	_, _ = stdin.Write([]byte("go\n"))
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	if !strings.HasPrefix(line, "dialed") {
		t.Fatalf("helper: %q", line)
	}
	for deadline := time.Now().Add(10 * time.Second); a.logs.count("capnp: accept failed; retrying") == 0; {
		if time.Now().After(deadline) {
			t.Fatalf("the burst (%s) did not make Accept fail", strings.TrimSpace(line))
		}
		time.Sleep(5 * time.Millisecond)
	}
	stdin.Close() // the helper closes its connections and exits
	for _, f := range fill {
		f.Close()
	}
	fill = nil
	restore()
	v := actors.Spawn(actors.Options{Name: "after"})
	defer v.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	boot, cn, err := v.Dial(ctx, "tcp", a.addr.String())
	if err != nil {
		t.Fatalf("after the burst: %v", err)
	}
	defer cn.Close()
	defer boot.Release()
	if got, err := echoText(ctx, interop.Echo(boot), "again"); err != nil || got != "again" {
		t.Fatalf("after the burst: %q, %v", got, err)
	}
	a.checkHealthy()
}

// TestHelperDialBurst is TestHostileAcceptEMFILE's other process: told
// to on its standard input, it opens 64 connections to the address it is
// given and holds them until its standard input closes.
func TestHelperDialBurst(t *testing.T) {
	addr := os.Getenv("VATACTOR_DIAL_BURST")
	if addr == "" {
		t.Skip("the helper process of TestHostileAcceptEMFILE")
	}
	in := bufio.NewReader(os.Stdin)
	_, _ = in.ReadString('\n')
	var cs []net.Conn
	for range 64 {
		if c, err := net.DialTimeout("tcp", addr, 2*time.Second); err == nil {
			cs = append(cs, c)
		}
	}
	fmt.Printf("dialed %d\n", len(cs))
	_, _ = io.Copy(io.Discard, in)
	for _, c := range cs {
		c.Close()
	}
}

// countOpenFiles returns one more than the highest file descriptor open.
func countOpenFiles() int {
	n := 0
	for fd := 0; fd < 4096; fd++ {
		var st syscall.Stat_t
		if syscall.Fstat(fd, &st) == nil {
			n = fd + 1
		}
	}
	return n
}

// TestHostileShutdownManyLingering: 50 peers that never send their FIN:
// Vat.Shutdown closes them all at once, each lingering at most
// LingerTimeout, so it ends well within its context.
func TestHostileShutdownManyLingering(t *testing.T) {
	a := newArena(t, conn.Options{LingerTimeout: time.Second}, false)
	var peers []*hostilePeer
	for range 50 {
		p := a.attack(true)
		p.send(bootstrapMsg(0))
		p.expect("return q0")
		peers = append(peers, p)
	}
	a.checkHealthy()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second) // one at a time: 50 s
	defer cancel()
	rep, err := a.vat.Shutdown(ctx, supervisor.Epitaph{Code: supervisor.OK})
	if err != nil {
		t.Fatalf("Shutdown: %v (took %v)", err, rep.Took)
	}
	lingered := 0
	for _, c := range rep.Conns {
		for _, ph := range c.Phases {
			if ph.Phase == conn.PhaseLinger && ph.CutShort {
				lingered++
			}
		}
	}
	if lingered < 50 {
		t.Fatalf("%d connections cut at linger, want the 50 silent peers", lingered)
	}
	t.Logf("51 connections shut down in %v", rep.Took)
}

// TestStopByProtoactorParent: stopping a vat actor the protoactor way
// stops its connections through the same close path as Close: the peer
// (one of ours) reads the epitaph CANCELED, not a reset.
func TestStopByProtoactorParent(t *testing.T) {
	p := newPair(t, conn.Options{}, conn.Options{})
	if got, err := echoText(context.Background(), p.echo, "before"); err != nil || got != "before" {
		t.Fatalf("echo: %q, %v", got, err)
	}
	p.server.vat.System().Root.Stop(p.server.vat.PID())
	sd := p.server.waitDown(t)
	var ls supervisor.LocalShutdown
	if !errors.As(sd.Reason, &ls) || ls.Epitaph.Code != supervisor.Canceled {
		t.Fatalf("server: %v", sd.Reason)
	}
	cd := p.client.waitDown(t)
	var pe supervisor.PeerEpitaph
	if !errors.As(cd.Reason, &pe) || pe.Epitaph.Code != supervisor.Canceled {
		t.Fatalf("client: %v", cd.Reason)
	}
	if ph := sd.Phases; ph[len(ph)-1].Phase != conn.PhaseCloseSocket {
		t.Fatalf("server phases: %v", ph)
	}
}

// TestHostileManyConns: the vat accepts at most MaxConns connections at
// once; the next peer waits in the backlog until one ends, then is served.
func TestHostileManyConns(t *testing.T) {
	a := newArenaWith(t, actors.Options{MaxConns: 3}, conn.Options{}, false) // the healthy connection is one
	first, second := a.attack(true), a.attack(true)
	for _, p := range []*hostilePeer{first, second} {
		p.send(bootstrapMsg(0))
		p.expect("return q0")
	}
	third := a.attack(true) // connected in the kernel, not accepted
	third.send(bootstrapMsg(0))
	select {
	case d := <-third.recv:
		t.Fatalf("a connection past MaxConns was served: %s", d)
	case <-time.After(200 * time.Millisecond):
	}
	first.nc.Close()
	third.expect("return q0")
	a.checkHealthy()
}

// TestHostileNeverReadsOurCalls: a server that answers the bootstrap,
// then reads nothing: our callers making calls on it wait once the send
// queue is over budget (the heap stays near it), and the connection ends
// after WriteTimeout without progress; their calls fail.
func TestHostileNeverReadsOurCalls(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	hold := make(chan struct{})
	defer close(hold)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if _, err := capnp.NewDecoder(c).Decode(); err != nil { // our Bootstrap
			return
		}
		_, _ = c.Write(marshal(t, func(m rpccp.Message) error {
			r, err := m.NewReturn()
			if err != nil {
				return err
			}
			r.SetAnswerId(0)
			p, _ := r.NewResults()
			caps, _ := p.NewCapTable(1)
			caps.At(0).SetSenderHosted(0)
			return p.SetContent(capnp.NewInterface(p.Segment(), 0).ToPtr())
		}))
		<-hold // and never read again
	}()
	const budget = 1 << 20
	var down atomic.Pointer[conn.Down]
	v := actors.Spawn(actors.Options{Name: "caller",
		Conn: conn.Options{Limits: conn.Limits{MaxSendQueue: budget}, WriteTimeout: time.Second},
		OnEvent: func(e conn.Event) {
			if d, ok := e.(conn.Down); ok {
				down.Store(&d)
			}
		}})
	defer v.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	boot, _, err := v.Dial(ctx, "tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer boot.Release()
	echo := interop.Echo(boot)
	h := watchHeap(t)
	big := strings.Repeat("y", 64<<10)
	var failed, sent int
	for i := 0; i < 4096 && down.Load() == nil; i++ { // 256 MiB, were nothing to hold it back
		f, rel := echo.Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText(big) })
		sent++
		select {
		case <-f.Done():
			failed++
		default:
		}
		defer rel()
	}
	for down.Load() == nil && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	d := down.Load()
	if d == nil {
		t.Fatal("the connection did not end")
	}
	h.check(t, 24<<20, "our calls to a peer that never reads")
	t.Logf("%d calls made before the end (%d failed at once)", sent, failed)
	wantReason[supervisor.TransportError](t, *d, conn.ErrPeerNotReading)
}
