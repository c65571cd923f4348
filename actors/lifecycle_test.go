package actors_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"

	"github.com/vatactor/vatactor/actors"
	"github.com/vatactor/vatactor/conn"
	"github.com/vatactor/vatactor/interop"
	"github.com/vatactor/vatactor/supervisor"
)

// wireLog is a slog.Handler that records the messages a vat sends and
// receives (the connection traces them at debug level).
type wireLog struct {
	mu    sync.Mutex
	lines []string
}

func (w *wireLog) Enabled(context.Context, slog.Level) bool { return true }
func (w *wireLog) WithAttrs([]slog.Attr) slog.Handler       { return w }
func (w *wireLog) WithGroup(string) slog.Handler            { return w }
func (w *wireLog) Handle(_ context.Context, r slog.Record) error {
	if !strings.HasPrefix(r.Message, "capnp send") && !strings.HasPrefix(r.Message, "capnp recv") {
		return nil
	}
	line := strings.TrimPrefix(r.Message, "capnp ")
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "msg" {
			line += ": " + a.Value.String()
		}
		return true
	})
	w.mu.Lock()
	w.lines = append(w.lines, line)
	w.mu.Unlock()
	return nil
}

// count returns how many recorded lines start with prefix (e.g. "send:
// abort").
func (w *wireLog) count(prefix string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, l := range w.lines {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}

func (w *wireLog) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Join(w.lines, "\n")
}

// side is one vat of a test with what it recorded.
type side struct {
	vat  *actors.Vat
	wire *wireLog
	mu   sync.Mutex
	evs  []conn.Event
	down chan conn.Down
}

func newSide(t *testing.T, name string, boot capnp.Client, copts conn.Options) *side {
	s := &side{wire: &wireLog{}, down: make(chan conn.Down, 16)}
	s.vat = actors.Spawn(actors.Options{Name: name, Bootstrap: boot, Conn: copts, Logger: slog.New(s.wire),
		OnEvent: func(e conn.Event) {
			s.mu.Lock()
			s.evs = append(s.evs, e)
			s.mu.Unlock()
			if d, ok := e.(conn.Down); ok {
				s.down <- d
			}
		}})
	t.Cleanup(s.vat.Stop)
	return s
}

func (s *side) events() []conn.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]conn.Event(nil), s.evs...)
}

// waitDown returns the next connection end the side reports.
func (s *side) waitDown(t *testing.T) conn.Down {
	t.Helper()
	select {
	case d := <-s.down:
		return d
	case <-time.After(10 * time.Second):
		t.Fatalf("no connection ended; wire:\n%s", s.wire)
		return conn.Down{}
	}
}

// pair is a server vat serving Echo and a client vat dialed to it over
// loopback TCP.
type pair struct {
	server, client *side
	echo           interop.Echo
	clientConn     *conn.Conn
	serverConn     *conn.Conn
}

func newPair(t *testing.T, serverOpts, clientOpts conn.Options) *pair {
	t.Helper()
	p := &pair{
		server: newSide(t, "server", capnp.Client(interop.NewEchoServer().Client(actors.NewServer)), serverOpts),
		client: newSide(t, "client", capnp.Client{}, clientOpts),
	}
	addr, err := p.server.vat.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	boot, cc, err := p.client.vat.Dial(context.Background(), "tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(boot.Release)
	p.echo, p.clientConn = interop.Echo(boot), cc
	for p.serverConn == nil {
		if cs := p.server.vat.Conns(); len(cs) > 0 {
			p.serverConn = cs[0]
		}
	}
	// The bootstrap answered: the server's answers are the bootstrap's
	// (kept while the client holds it) and the test's calls.
	if err := boot.Resolve(context.Background()); err != nil {
		t.Fatal(err)
	}
	return p
}

func startWait(ctx context.Context, e interop.Echo, ms uint32) (interop.Echo_wait_Results_Future, capnp.ReleaseFunc) {
	return e.Wait(ctx, func(p interop.Echo_wait_Params) error { p.SetMs(ms); return nil })
}

func echoText(ctx context.Context, e interop.Echo, text string) (string, error) {
	f, release := e.Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText(text) })
	defer release()
	res, err := f.Struct()
	if err != nil {
		return "", err
	}
	return res.Text()
}

// assertCleanEnd checks that a side read a FIN, not a reset.
func assertCleanEnd(t *testing.T, who string, d conn.Down) {
	t.Helper()
	if !errors.Is(d.ReadEnd, io.EOF) {
		t.Errorf("%s: reading ended with %v, want EOF (a FIN, not a reset)", who, d.ReadEnd)
	}
}

// The matrix of ways a connection ends, with our vats on both sides.
func TestEndOursBothSides(t *testing.T) {
	t.Run("local graceful close OK", func(t *testing.T) {
		p := newPair(t, conn.Options{}, conn.Options{})
		rep, err := p.clientConn.Shutdown(context.Background(), supervisor.Epitaph{Code: supervisor.OK, Message: "done"})
		if err != nil {
			t.Fatal(err)
		}
		var ls supervisor.LocalShutdown
		if !errors.As(rep.Reason, &ls) || ls.Epitaph.Code != supervisor.OK || !rep.EpitaphSent {
			t.Fatalf("client report: reason %v, epitaph sent %v", rep.Reason, rep.EpitaphSent)
		}
		cd := p.client.waitDown(t)
		sd := p.server.waitDown(t)
		var pe supervisor.PeerEpitaph
		if !errors.As(sd.Reason, &pe) || pe.Epitaph.Code != supervisor.OK || pe.Epitaph.Message != "done" || !sd.Reason.Expected() {
			t.Fatalf("server reason = %v, want PeerEpitaph{OK, done}, expected", sd.Reason)
		}
		assertCleanEnd(t, "client", cd)
		assertCleanEnd(t, "server", sd)
		if n := p.client.wire.count("send: abort disconnected"); n != 1 {
			t.Errorf("client sent %d epitaph aborts, want 1:\n%s", n, p.client.wire)
		}
		if n := p.server.wire.count("send: abort"); n != 0 {
			t.Errorf("server answered the epitaph with an Abort:\n%s", p.server.wire)
		}
	})

	t.Run("local graceful close with an error epitaph", func(t *testing.T) {
		p := newPair(t, conn.Options{}, conn.Options{})
		if _, err := p.serverConn.Shutdown(context.Background(), supervisor.Epitaph{Code: supervisor.Unavailable, Message: "maintenance"}); err != nil {
			t.Fatal(err)
		}
		sd := p.server.waitDown(t)
		cd := p.client.waitDown(t)
		var pe supervisor.PeerEpitaph
		if !errors.As(cd.Reason, &pe) || pe.Epitaph.Code != supervisor.Unavailable || cd.Reason.Expected() {
			t.Fatalf("client reason = %v, want PeerEpitaph{UNAVAILABLE}, unexpected", cd.Reason)
		}
		if !sd.Reason.Expected() {
			t.Errorf("server reason %v should be expected (we chose to close)", sd.Reason)
		}
		assertCleanEnd(t, "client", cd)
		assertCleanEnd(t, "server", sd)
		if n := p.server.wire.count("send: abort failed"); n != 1 {
			t.Errorf("server sent %d failed aborts, want 1 (the epitaph):\n%s", n, p.server.wire)
		}
		if n := p.client.wire.count("send: abort"); n != 0 {
			t.Errorf("client answered the epitaph with an Abort:\n%s", p.client.wire)
		}
		// Calls after the end fail with disconnected.
		if _, err := echoText(context.Background(), p.echo, "late"); !errors.Is(err, conn.ErrClosed) && !isDisconnected(err) {
			t.Errorf("call after the end: %v, want disconnected", err)
		}
	})
}

func isDisconnected(err error) bool {
	var pe supervisor.PeerEpitaph
	return err != nil && (errors.As(err, &pe) || exc.IsType(err, exc.Disconnected))
}

// A graceful shutdown with calls in flight loses nothing: calls in flight
// return their results, calls made during the drain are refused as not
// processed (both ways), calls still running at the drain deadline fail
// with disconnected and say they may have been processed.
func TestShutdownWithCallsInFlight(t *testing.T) {
	p := newPair(t, conn.Options{DrainTimeout: 2 * time.Second}, conn.Options{})
	ctx := context.Background()
	const n = 20
	before := p.serverConn.Stats().Answers // the bootstrap's
	type result struct {
		ms  uint32
		err error
	}
	results := make(chan result, n)
	for i := 0; i < n; i++ {
		f, release := startWait(ctx, p.echo, 300)
		go func() {
			defer release()
			res, err := f.Struct()
			results <- result{res.Ms(), err}
		}()
	}
	long, releaseLong := startWait(ctx, p.echo, 60_000) // cut by the drain deadline
	defer releaseLong()
	// The calls must be in flight on the server before it drains.
	for p.serverConn.Stats().Answers < before+n+1 {
		time.Sleep(time.Millisecond)
	}
	shut := make(chan conn.Report, 1)
	go func() {
		rep, _ := p.serverConn.Shutdown(ctx, supervisor.Epitaph{Code: supervisor.OK, Message: "deploy"})
		shut <- rep
	}()
	for len(p.server.events()) == 0 || p.serverConn.Err() == nil {
		time.Sleep(time.Millisecond)
	}
	// During the drain: a new call is refused, not processed.
	_, err := echoText(ctx, p.echo, "during drain")
	if !errors.Is(err, conn.ErrNotProcessed) {
		t.Errorf("call during drain: %v, want ErrNotProcessed", err)
	}
	for i := 0; i < n; i++ {
		r := <-results
		if r.err != nil || r.ms != 300 {
			t.Errorf("call in flight: ms=%d err=%v, want its result", r.ms, r.err)
		}
	}
	_, err = long.Struct()
	if err == nil || errors.Is(err, conn.ErrNotProcessed) || !strings.Contains(err.Error(), "may have been partly processed") {
		t.Errorf("call cut by the drain deadline: %v, want disconnected, possibly processed", err)
	}
	rep := <-shut
	if rep.Refused != 1 || rep.Abandoned != 1 || !rep.CutShort() {
		t.Errorf("server report: refused %d abandoned %d cut short %v, want 1, 1, true", rep.Refused, rep.Abandoned, rep.CutShort())
	}
	cd := p.client.waitDown(t)
	assertCleanEnd(t, "client", cd)
	assertCleanEnd(t, "server", p.server.waitDown(t))
	// After the end: a call fails at once with disconnected.
	if _, err := echoText(ctx, p.echo, "after"); err == nil {
		t.Error("call after the end succeeded")
	}
}

// The ordered termination is observable: on a graceful close, question
// actors stop newest first, then export actors newest first, then the
// connection reports Down.
func TestOrderedTermination(t *testing.T) {
	p := newPair(t, conn.Options{}, conn.Options{DrainTimeout: 100 * time.Millisecond})
	ctx := context.Background()
	// Three callBack calls whose callbacks block: the client holds three
	// questions (plus its bootstrap) and exports three callbacks.
	block := make(chan struct{})
	defer close(block)
	var releases []capnp.ReleaseFunc
	for i := 0; i < 3; i++ {
		cb := interop.Callback_ServerToClient(interop.CallbackFunc(func(s string) (string, error) {
			<-block
			return s, nil
		}))
		_, release := p.echo.CallBack(ctx, func(pp interop.Echo_callBack_Params) error {
			if err := pp.SetText("x"); err != nil {
				return err
			}
			return pp.SetCallback(cb)
		})
		releases = append(releases, release)
	}
	for st := p.clientConn.Stats(); st.Exports < 3 || st.Answers < 3; st = p.clientConn.Stats() {
		time.Sleep(time.Millisecond) // the callbacks run on the client
	}
	rep, err := p.clientConn.Shutdown(ctx, supervisor.Epitaph{Code: supervisor.OK})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range releases {
		r()
	}
	var got []string
	for _, e := range p.client.events() {
		switch e := e.(type) {
		case conn.ActorStopped:
			got = append(got, string(e.Kind)+fmtID(e.ID))
		case conn.PhaseDone:
			got = append(got, string(e.Phase.Phase))
		case conn.Down:
			got = append(got, "down")
		}
	}
	want := []string{"drain", "question3", "question2", "question1", "question0", "stopQuestions",
		"export2", "export1", "export0", "stopExports", "releaseImports", "sendEpitaph",
		"closeWrite", "linger", "closeSocket", "down"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("stop order:\n got %v\nwant %v\nwire:\n%s", got, want, p.client.wire)
	}
	if rep.Canceled != 3 || rep.StuckActors != 0 {
		t.Errorf("report: canceled %d stuck %d, want 3, 0", rep.Canceled, rep.StuckActors)
	}
}

func fmtID(id uint32) string { return string(rune('0' + id)) }

// rawPeer is a hand-driven peer over TCP: it writes frames we build and
// reads what our vat sends.
type rawPeer struct {
	t  *testing.T
	nc *net.TCPConn
}

func dialRaw(t *testing.T, addr net.Addr) *rawPeer {
	t.Helper()
	nc, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &rawPeer{t: t, nc: nc.(*net.TCPConn)}
}

func (r *rawPeer) send(fill func(rpccp.Message) error) {
	r.t.Helper()
	msg, seg := capnp.NewSingleSegmentMessage(nil)
	m, _ := rpccp.NewRootMessage(seg)
	if err := fill(m); err != nil {
		r.t.Fatal(err)
	}
	if err := capnp.NewEncoder(r.nc).Encode(msg); err != nil {
		r.t.Fatal(err)
	}
}

// readAll reads frames until the connection ends; it returns each
// message's kind and how reading ended.
func (r *rawPeer) readAll() ([]string, error) {
	_ = r.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	dec := capnp.NewDecoder(r.nc)
	var kinds []string
	for {
		msg, err := dec.Decode()
		if err != nil {
			return kinds, err
		}
		m, err := rpccp.ReadRootMessage(msg)
		if err != nil {
			return kinds, err
		}
		kinds = append(kinds, m.Which().String())
	}
}

func bootstrapMsg(q uint32) func(rpccp.Message) error {
	return func(m rpccp.Message) error {
		b, err := m.NewBootstrap()
		b.SetQuestionId(q)
		return err
	}
}

// waitCall: a Call of Echo.wait(ms) on the answer to question boot.
func waitCall(q, boot, ms uint32) func(rpccp.Message) error {
	return callOn(q, onAnswer(boot), methodWait, waitArgs(ms))
}

// The ways a peer can end a connection, produced by a hand-driven peer
// against our server vat over TCP.
func TestEndRawPeer(t *testing.T) {
	server := newSide(t, "server", capnp.Client(interop.NewEchoServer().Client(actors.NewServer)),
		conn.Options{WriteTimeout: 300 * time.Millisecond, LingerTimeout: 300 * time.Millisecond})
	addr, err := server.vat.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	noAbort := func(t *testing.T, kinds []string) {
		t.Helper()
		for _, k := range kinds {
			if k == "abort" {
				t.Errorf("we wrote an Abort: %v", kinds)
			}
		}
	}

	t.Run("peer EOF while idle", func(t *testing.T) {
		r := dialRaw(t, addr)
		_ = r.nc.CloseWrite()
		kinds, err := r.readAll()
		if len(kinds) != 0 || !errors.Is(err, io.EOF) {
			t.Errorf("peer read %v then %v, want nothing then EOF", kinds, err)
		}
		d := server.waitDown(t)
		if d.Reason != (supervisor.PeerEOF{Idle: true}) || !d.Reason.Expected() {
			t.Errorf("reason %v, want PeerEOF{Idle}", d.Reason)
		}
	})

	t.Run("peer EOF with calls in flight", func(t *testing.T) {
		r := dialRaw(t, addr)
		r.send(bootstrapMsg(0))
		r.send(waitCall(1, 0, 5000))
		time.Sleep(50 * time.Millisecond)
		_ = r.nc.CloseWrite()
		kinds, err := r.readAll()
		noAbort(t, kinds)
		if !errors.Is(err, io.EOF) {
			t.Errorf("peer read %v then %v, want EOF", kinds, err)
		}
		d := server.waitDown(t)
		if d.Reason != (supervisor.PeerEOF{Idle: false}) || d.Reason.Expected() {
			t.Errorf("reason %v, want PeerEOF with work in flight (unexpected)", d.Reason)
		}
	})

	t.Run("peer Abort", func(t *testing.T) {
		r := dialRaw(t, addr)
		r.send(func(m rpccp.Message) error {
			e, err := m.NewAbort()
			e.SetType(rpccp.Exception_Type_failed)
			_ = e.SetReason("bye")
			return err
		})
		_ = r.nc.CloseWrite()
		kinds, err := r.readAll()
		noAbort(t, kinds)
		if !errors.Is(err, io.EOF) {
			t.Errorf("peer read %v then %v, want EOF", kinds, err)
		}
		d := server.waitDown(t)
		if d.Reason != (supervisor.PeerAbort{Type: "failed", Reason: "bye", Idle: true}) || d.Reason.Expected() {
			t.Errorf("reason %v, want PeerAbort{failed, bye}, unexpected", d.Reason)
		}
		assertCleanEnd(t, "server", d)
	})

	t.Run("peer RST", func(t *testing.T) {
		r := dialRaw(t, addr)
		r.send(bootstrapMsg(0))
		time.Sleep(50 * time.Millisecond)
		_ = r.nc.SetLinger(0)
		_ = r.nc.Close()
		d := server.waitDown(t)
		var te supervisor.TransportError
		if !errors.As(d.Reason, &te) || !errors.Is(d.Reason, syscall.ECONNRESET) || d.Reason.Expected() {
			t.Errorf("reason %v, want TransportError(connection reset)", d.Reason)
		}
	})

	t.Run("peer that stops reading", func(t *testing.T) {
		r := dialRaw(t, addr)
		_ = r.nc.SetReadBuffer(4096)
		r.send(bootstrapMsg(0))
		big := strings.Repeat("x", 1<<20)
		for q := uint32(1); q <= 16; q++ {
			r.send(func(m rpccp.Message) error {
				c, err := m.NewCall()
				if err != nil {
					return err
				}
				c.SetQuestionId(q)
				c.SetInterfaceId(interop.Echo_TypeID)
				c.SetMethodId(0)
				tgt, _ := c.NewTarget()
				pa, _ := tgt.NewPromisedAnswer()
				pa.SetQuestionId(0)
				params, _ := c.NewParams()
				args, err := capnp.NewStruct(params.Segment(), capnp.ObjectSize{PointerCount: 1})
				if err != nil {
					return err
				}
				txt, _ := capnp.NewText(params.Segment(), big)
				_ = args.SetPtr(0, txt.ToPtr())
				return params.SetContent(args.ToPtr())
			})
		}
		var sc *conn.Conn
		for sc == nil {
			if cs := server.vat.Conns(); len(cs) > 0 {
				sc = cs[0]
			}
		}
		time.Sleep(100 * time.Millisecond)
		rep, err := sc.Shutdown(context.Background(), supervisor.Epitaph{Code: supervisor.OK})
		if err != nil {
			t.Fatal(err)
		}
		server.waitDown(t)
		// A write that makes no progress for WriteTimeout ends the
		// connection by itself; if the Shutdown came first, its
		// closeWrite is cut at WriteTimeout instead.
		if errors.Is(rep.Reason, conn.ErrPeerNotReading) {
			var te supervisor.TransportError
			if !errors.As(rep.Reason, &te) {
				t.Errorf("reason %v, want a TransportError", rep.Reason)
			}
			return
		}
		cut := false
		for _, ph := range rep.Phases {
			if ph.Phase == conn.PhaseCloseWrite && ph.CutShort {
				cut = true
			}
		}
		if !cut {
			t.Errorf("closeWrite not cut short although the peer never read: %v (%v)", rep.Phases, rep.Reason)
		}
	})

	t.Run("malformed frame", func(t *testing.T) {
		r := dialRaw(t, addr)
		_, _ = r.nc.Write([]byte{0xff, 0xff, 0xff, 0x0f, 0, 0, 0, 0})
		kinds, err := r.readAll()
		if len(kinds) != 1 || kinds[0] != "abort" || !errors.Is(err, io.EOF) {
			t.Errorf("peer read %v then %v, want one abort then EOF", kinds, err)
		}
		d := server.waitDown(t)
		var pe supervisor.ProtocolError
		if !errors.As(d.Reason, &pe) || !errors.Is(d.Reason, conn.ErrTooManySegments) {
			t.Errorf("reason %v, want ProtocolError(too many segments)", d.Reason)
		}
	})
}

// Idle is an event; with IdleTimeout set, a connection whose tables stay
// empty that long is closed gracefully with an OK epitaph.
func TestIdleTimeout(t *testing.T) {
	p := newPair(t, conn.Options{IdleTimeout: 100 * time.Millisecond}, conn.Options{})
	if _, err := echoText(context.Background(), p.echo, "x"); err != nil {
		t.Fatal(err)
	}
	p.echo.Release() // the client holds nothing more: both sides become idle
	d := p.client.waitDown(t)
	var pe supervisor.PeerEpitaph
	if !errors.As(d.Reason, &pe) || pe.Epitaph.Code != supervisor.OK || pe.Epitaph.Message != "idle timeout" || !d.Reason.Expected() {
		t.Fatalf("client reason %v, want PeerEpitaph{OK, idle timeout}", d.Reason)
	}
	var busy, idle int
	for _, e := range p.server.events() {
		switch e.(type) {
		case conn.Busy:
			busy++
		case conn.Idle:
			idle++
		}
	}
	if busy == 0 || idle == 0 {
		t.Errorf("server events: %d busy, %d idle; want both", busy, idle)
	}
	sd := p.server.waitDown(t)
	if ls, ok := sd.Reason.(supervisor.LocalShutdown); !ok || ls.Epitaph.Message != "idle timeout" {
		t.Errorf("server reason %v, want LocalShutdown(idle timeout)", sd.Reason)
	}
}
