package actors_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	"capnproto.org/go/capnp/v3/rpc"
	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"go.uber.org/goleak"

	"github.com/vatactor/vatactor/actors"
	"github.com/vatactor/vatactor/conn"
	"github.com/vatactor/vatactor/interop"
	"github.com/vatactor/vatactor/supervisor"
)

// The fault suite: a toxiproxy proxy on loopback between a client vat and
// a server (one of our vats, go-capnp's rpc.Conn, the C++ reference), a
// steady workload of plain, pipelined and called-back calls through it,
// and one toxic at a time. Each case checks that no call is lost (each
// ends with its right result or an error that follows the error model),
// the reason each side reports, dead-peer detection within the keepalive
// timeout, and that no goroutine is left.

// Keepalive of the side that must notice a silent peer first, and of the
// other (slower, so that it reads the first one's FIN instead).
var (
	fastKeepAlive = conn.KeepAlive{Interval: 150 * time.Millisecond, Timeout: 500 * time.Millisecond}
	slowKeepAlive = conn.KeepAlive{Interval: 400 * time.Millisecond, Timeout: 2 * time.Second}
)

// A toxic as toxiproxy's API takes it.
func toxic(name, typ, stream string, toxicity float64, attrs string) string {
	return fmt.Sprintf(`{"name":%q,"type":%q,"stream":%q,"toxicity":%g,"attributes":{%s}}`, name, typ, stream, toxicity, attrs)
}

// bothWays is the toxic on each stream.
func bothWays(typ, attrs string) []string {
	return []string{toxic(typ+"-up", typ, "upstream", 1, attrs), toxic(typ+"-down", typ, "downstream", 1, attrs)}
}

func addToxics(t *testing.T, p *toxiproxy.Proxy, toxics []string) {
	t.Helper()
	for _, js := range toxics {
		if _, err := p.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
			t.Fatalf("toxic %s: %v", js, err)
		}
	}
}

// faultCase is one toxic and what it must do to the connection.
type faultCase struct {
	name string
	// atConnect: toxics in place before the client connects (toxiproxy
	// sets a socket up for resets only then).
	atConnect []string
	// during: toxics added once the workload runs.
	during []string
	// ends: the connection must end under the toxic; otherwise every
	// call must succeed and the client then shuts down gracefully.
	ends bool
	// silent: the peer goes silent; the side with the fast keepalive
	// must notice within its Interval + Timeout. serverNotices: that is
	// the server (the client has the slow one).
	silent, serverNotices bool
	// clientReason checks the client's reason when ends is set.
	clientReason func(supervisor.Reason) error
	// ourServerReason checks the reason of a server that is one of our
	// vats when ends is set.
	ourServerReason func(supervisor.Reason) error
	// foreignReset: a go-capnp server's socket must report a reset.
	foreignReset bool
	// onlyOurs: run against our server vat only.
	onlyOurs bool
}

func isTransport(sentinel error) func(supervisor.Reason) error {
	return func(r supervisor.Reason) error {
		var te supervisor.TransportError
		if !errors.As(r, &te) {
			return fmt.Errorf("reason %v (%T), want a TransportError", r, r)
		}
		if sentinel != nil && !errors.Is(te.Err, sentinel) {
			return fmt.Errorf("reason %v, want a TransportError wrapping %v", r, sentinel)
		}
		return nil
	}
}

func isPeerEOF(r supervisor.Reason) error {
	if _, ok := r.(supervisor.PeerEOF); !ok {
		return fmt.Errorf("reason %v (%T), want PeerEOF (the other side's FIN through the proxy)", r, r)
	}
	return nil
}

var faultCases = []faultCase{
	{name: "latency with jitter", during: bothWays("latency", `"latency":30,"jitter":20`)},
	{name: "bandwidth", during: bothWays("bandwidth", `"rate":256`)},
	{name: "slicer", during: bothWays("slicer", `"average_size":8,"size_variation":7,"delay":20`)},
	{name: "slow close", during: bothWays("slow_close", `"delay":300`)},
	{
		// A reset toxic that never runs (toxicity 0) makes the proxy set
		// both sockets to reset on close; limit_data then cuts the stream
		// to the server 5,003 bytes after it is added, in a frame.
		name:            "reset mid-frame",
		atConnect:       []string{toxic("rst", "reset_peer", "downstream", 0, `"timeout":0`)},
		during:          []string{toxic("cut", "limit_data", "upstream", 1, `"bytes":5003`)},
		ends:            true,
		clientReason:    isTransport(syscall.ECONNRESET),
		ourServerReason: isTransport(syscall.ECONNRESET),
		foreignReset:    true,
	},
	{
		name:            "blackhole, the client notices",
		during:          bothWays("timeout", `"timeout":0`),
		ends:            true,
		silent:          true,
		clientReason:    isTransport(conn.ErrPeerUnresponsive),
		ourServerReason: isPeerEOF,
	},
	{
		name:            "blackhole, the server notices",
		during:          bothWays("timeout", `"timeout":0`),
		ends:            true,
		silent:          true,
		serverNotices:   true,
		clientReason:    isPeerEOF,
		ourServerReason: isTransport(conn.ErrPeerUnresponsive),
		onlyOurs:        true,
	},
}

// faultServer is the far side of the proxy for one case.
type faultServer struct {
	addr string
	// down returns how the server's side ended, once it has: the reason
	// (ours only), how reading ended, and whether the socket was reset.
	down func(t *testing.T) (reason supervisor.Reason, readEnd error, reset bool)
	// alive checks the server still serves, dialed directly.
	alive func(t *testing.T)
	// logged is what a go-capnp server logged at Warn and Error.
	logged func() []string
}

// faultPeers are the servers the suite runs against.
var faultPeers = []struct {
	name  string
	ours  bool
	start func(t *testing.T, ka conn.KeepAlive) faultServer
}{
	{"vat", true, func(t *testing.T, ka conn.KeepAlive) faultServer {
		s := newSide(t, "server", capnp.Client(interop.NewEchoServer().Client(actors.NewServer)), conn.Options{KeepAlive: ka})
		addr, err := s.vat.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		return faultServer{addr: addr.String(),
			down: func(t *testing.T) (supervisor.Reason, error, bool) {
				d := s.waitDown(t)
				return d.Reason, d.ReadEnd, errors.Is(d.ReadEnd, syscall.ECONNRESET)
			},
			alive: func(t *testing.T) { checkAlive(t, addr.String()) }}
	}},
	{"go-capnp", false, func(t *testing.T, _ conn.KeepAlive) faultServer {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		type served struct {
			rc *rpc.Conn
			nc *recConn
		}
		ch := make(chan served, 1)
		log := &capturedLog{}
		go func() {
			c, err := l.Accept()
			if err != nil {
				close(ch)
				return
			}
			nc := &recConn{Conn: c}
			ch <- served{rpc.NewConn(rpc.NewStreamTransport(nc), &rpc.Options{Logger: log,
				BootstrapClient: capnp.Client(interop.NewEchoServer().Client(interop.PlainServer))}), nc}
		}()
		var s served
		t.Cleanup(func() {
			if s.rc != nil {
				s.rc.Close()
				<-s.rc.Done()
			}
		})
		return faultServer{addr: l.Addr().String(),
			down: func(t *testing.T) (supervisor.Reason, error, bool) {
				select {
				case s = <-ch:
				case <-time.After(10 * time.Second):
					t.Fatal("go-capnp accepted no connection")
				}
				select {
				case <-s.rc.Done():
				case <-time.After(10 * time.Second):
					t.Fatal("go-capnp's connection did not end")
				}
				return nil, s.nc.end(), s.nc.wasReset()
			},
			logged: func() []string {
				log.mu.Lock()
				defer log.mu.Unlock()
				return slices.Clone(log.lines)
			}}
	}},
	{"C++", false, func(t *testing.T, _ conn.KeepAlive) faultServer {
		addr, _ := startCxxServer(t, cxxPeer(t))
		return faultServer{addr: addr, alive: func(t *testing.T) { checkAlive(t, addr) }}
	}},
}

// checkAlive: a new connection straight to addr answers a call.
func checkAlive(t *testing.T, addr string) {
	t.Helper()
	e, cn := dialEcho(t, addr)
	if got, err := echoText(context.Background(), e, "still there?"); err != nil || got != "still there?" {
		t.Errorf("the server, dialed again: %q %v", got, err)
	}
	if _, err := cn.Shutdown(context.Background(), supervisor.Epitaph{Code: supervisor.OK}); err != nil {
		t.Errorf("ending the check: %v", err)
	}
}

// workload keeps workers calling through one Echo capability: plain
// calls, calls pipelined on an answer not yet returned, and calls the
// server answers by calling us back. Payloads run from 1 byte to 2 KiB.
type workload struct {
	e    interop.Echo
	cb   interop.Callback
	stop chan struct{}
	wg   sync.WaitGroup

	mu      sync.Mutex
	ok      int
	toxic   bool // set once the toxic is on
	okAfter int
	failed  []error
	wrong   []string
}

const faultWorkers = 4

func startWorkload(e interop.Echo) *workload {
	w := &workload{e: e, stop: make(chan struct{}),
		cb: interop.Callback_ServerToClient(interop.CallbackFunc(func(s string) (string, error) {
			return strings.ToUpper(s) + "!", nil
		}))}
	for i := 0; i < faultWorkers; i++ {
		w.wg.Add(1)
		go w.run(i)
	}
	return w
}

func (w *workload) toxicOn() {
	w.mu.Lock()
	w.toxic = true
	w.mu.Unlock()
}

func (w *workload) run(worker int) {
	defer w.wg.Done()
	for i := 0; ; i++ {
		select {
		case <-w.stop:
			return
		default:
		}
		text := strings.Repeat(string(rune('a'+worker)), 1+(i*397+worker*131)%2048)
		got, want, err := w.call(i%3, text)
		w.mu.Lock()
		switch {
		case err != nil:
			w.failed = append(w.failed, err)
		case got != want:
			w.wrong = append(w.wrong, fmt.Sprintf("call %d of worker %d: %.20q…, want %.20q…", i, worker, got, want))
		default:
			w.ok++
			if w.toxic {
				w.okAfter++
			}
		}
		w.mu.Unlock()
		if err != nil {
			return // the connection is gone (or the suite fails anyway)
		}
	}
}

// call makes one call of the kind given; a generous deadline bounds it so
// that a call never settled shows as one.
func (w *workload) call(kind int, text string) (got, want string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	switch kind {
	case 0:
		got, err = echoText(ctx, w.e, text)
		return got, text, err
	case 1:
		f1, r1 := w.e.Self(ctx, func(p interop.Echo_self_Params) error { return p.SetTag("p:") })
		defer r1()
		got, err = echoText(ctx, f1.Echo(), text)
		return got, "p:" + text, err
	default:
		f, release := w.e.CallBack(ctx, func(p interop.Echo_callBack_Params) error {
			if err := p.SetText(text); err != nil {
				return err
			}
			return p.SetCallback(w.cb.AddRef())
		})
		defer release()
		res, err := f.Struct()
		if err == nil {
			got, err = res.Text()
		}
		return got, strings.ToUpper(text) + "!", err
	}
}

// end stops the workers and waits for every call they made to settle.
func (w *workload) end(t *testing.T) {
	t.Helper()
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	settled := make(chan struct{})
	go func() { w.wg.Wait(); close(settled) }()
	select {
	case <-settled:
	case <-time.After(20 * time.Second):
		t.Fatal("calls in flight never settled")
	}
	w.cb.Release()
}

func TestFaultSuite(t *testing.T) {
	for _, peer := range faultPeers {
		t.Run(peer.name, func(t *testing.T) {
			if !peer.ours {
				if peer.name == "C++" {
					cxxPeer(t) // built (or skipped) before the leak snapshot
				}
			}
			for _, tc := range faultCases {
				if tc.onlyOurs && !peer.ours {
					continue
				}
				before := goleak.IgnoreCurrent()
				t.Run(tc.name, func(t *testing.T) { runFaultCase(t, peer.start, peer.ours, tc) })
				if err := goleak.Find(append(notLeaks, before)...); err != nil {
					t.Errorf("%s left goroutines: %v", tc.name, err)
				}
			}
		})
	}
}

func runFaultCase(t *testing.T, start func(*testing.T, conn.KeepAlive) faultServer, ours bool, tc faultCase) {
	clientKA, serverKA := fastKeepAlive, slowKeepAlive
	if tc.serverNotices {
		clientKA, serverKA = slowKeepAlive, fastKeepAlive
	}
	srv := start(t, serverKA)
	p := proxyTo(t, srv.addr)
	addToxics(t, p, tc.atConnect)
	client := newSide(t, "client", capnp.Client{}, conn.Options{KeepAlive: clientKA})
	ctx := context.Background()
	boot, cn, err := client.vat.Dial(ctx, "tcp", p.Listen)
	if err != nil {
		t.Fatal(err)
	}
	defer boot.Release()
	if err := boot.Resolve(ctx); err != nil {
		t.Fatal(err)
	}

	w := startWorkload(interop.Echo(boot))
	defer w.end(t)
	time.Sleep(150 * time.Millisecond) // calls flow before the toxic
	w.toxicOn()
	addToxics(t, p, tc.during)
	struck := time.Now()

	if !tc.ends {
		time.Sleep(700 * time.Millisecond)
		w.end(t)
		w.mu.Lock()
		if len(w.failed) > 0 || len(w.wrong) > 0 {
			t.Errorf("calls failed under a toxic that loses nothing: %v %v", w.failed, w.wrong)
		}
		if w.okAfter == 0 {
			t.Errorf("no call went through the toxic")
		}
		t.Logf("%d calls answered, %d of them through the toxic", w.ok, w.okAfter)
		w.mu.Unlock()
		rep, err := cn.Shutdown(ctx, supervisor.Epitaph{Code: supervisor.OK})
		if err != nil || !rep.Reason.Expected() || rep.CutShort() {
			t.Errorf("client's end: %v (%v), cut short %v: %+v", rep.Reason, err, rep.CutShort(), rep.Phases)
		}
		d := client.waitDown(t)
		assertCleanEnd(t, "client", d)
		if srv.down != nil {
			r, readEnd, _ := srv.down(t)
			if ours {
				if pe, ok := r.(supervisor.PeerEpitaph); !ok || pe.Epitaph.Code != supervisor.OK {
					t.Errorf("our server's reason %v (%T), want the client's epitaph OK", r, r)
				}
			}
			if !isCleanEOF(readEnd) {
				t.Errorf("the server's reading ended with %v, want EOF", readEnd)
			}
		}
		if srv.logged != nil {
			for _, l := range srv.logged() {
				// go-capnp logs every peer EOF at ERROR (README: Known
				// problems in go-capnp); anything else is the toxic's.
				if !strings.Contains(l, "receive: EOF") {
					t.Errorf("go-capnp logged: %s", l)
				}
			}
		}
		if srv.alive != nil {
			srv.alive(t)
		}
		return
	}

	// The toxic ends the connection: the client notices, within the
	// keepalive timeout when the peer went silent.
	limit := 10 * time.Second
	if tc.silent {
		// The side that notices, then its FIN through the proxy.
		limit = fastKeepAlive.Interval + fastKeepAlive.Timeout + time.Second
	}
	select {
	case <-cn.Done():
	case <-time.After(limit):
		t.Fatalf("the client's connection did not end within %v of the toxic", limit)
	}
	took := time.Since(struck)
	d := client.waitDown(t)
	if err := tc.clientReason(d.Reason); err != nil {
		t.Errorf("client: %v", err)
	}
	if d.Reason.Expected() {
		t.Errorf("client: reason %v is expected; a fault is not", d.Reason)
	}
	w.end(t)
	checkFaultErrors(t, w, d.Reason)
	if srv.down != nil {
		r, readEnd, reset := srv.down(t)
		switch {
		case ours:
			if err := tc.ourServerReason(r); err != nil {
				t.Errorf("server: %v", err)
			}
		case tc.foreignReset && !reset:
			t.Errorf("server: no reset seen (reading ended with %v)", readEnd)
		}
	}
	if srv.alive != nil {
		p.Stop()
		srv.alive(t)
	}
	t.Logf("ended %v after the toxic: client %v; %d calls answered, %d failed", took.Round(time.Millisecond), d.Reason, w.ok, len(w.failed))
}

// checkFaultErrors: every call that failed says what the error model
// says: exactly one of ErrNotProcessed and ErrOutcomeUnknown, the
// connection's reason, the type disconnected; none hit its own deadline.
func checkFaultErrors(t *testing.T, w *workload, reason supervisor.Reason) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.wrong) > 0 {
		t.Errorf("wrong results: %v", w.wrong)
	}
	unknown := 0
	for _, err := range w.failed {
		if errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("a call was lost (it never settled): %v", err)
			continue
		}
		ce := classify(err)
		if ce.notProcessed == ce.outcomeUnknown {
			t.Errorf("%v: not processed %v, outcome unknown %v: want exactly one", err, ce.notProcessed, ce.outcomeUnknown)
		}
		if ce.outcomeUnknown {
			unknown++
		}
		if ce.reason == nil || reflect.TypeOf(ce.reason) != reflect.TypeOf(reason) {
			t.Errorf("%v: reason %v, want the connection's (%v)", err, ce.reason, reason)
		}
		if ce.typ != exc.Disconnected || !strings.Contains(err.Error(), "disconnected") {
			t.Errorf("%v: type %v, want disconnected, said in the text", err, ce.typ)
		}
	}
	if len(w.failed) == 0 {
		t.Errorf("no call failed: the workload did not run into the fault")
	}
	t.Logf("failed calls: %d outcome unknown, %d not processed", unknown, len(w.failed)-unknown)
}

func isCleanEOF(err error) bool { return err == nil || errors.Is(err, io.EOF) }
