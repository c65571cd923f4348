package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc"

	"github.com/vatactor/vatactor/bench/schema"
)

// idleFigures is what a server holding idle connections costs, and how its
// shutdown went as its peers saw it. The peers run in another process
// (this program again, with peerEnv set), so only the server's side is
// counted.
type idleFigures struct {
	Impl              string  `json:"impl"`
	Conns             int     `json:"conns"`
	BytesPerConn      float64 `json:"bytes_per_conn"`
	LiveBytesPerConn  float64 `json:"live_bytes_per_conn"`
	GoroutinesPerConn float64 `json:"goroutines_per_conn"`
	ShutdownMS        float64 `json:"shutdown_ms"`
	PeersEOF          int     `json:"peers_eof"`
	PeersReset        int     `json:"peers_reset"`
	PeersOther        int     `json:"peers_other"`
}

// liveFigures is what one question in flight costs, both ends counted
// (the client's question and the server's answer, with the server
// method's goroutine that holds it).
type liveFigures struct {
	Impl                  string  `json:"impl"`
	Questions             int     `json:"questions"`
	BytesPerQuestion      float64 `json:"bytes_per_question"`
	GoroutinesPerQuestion float64 `json:"goroutines_per_question"`
}

// settle is how long the scale figures wait for earlier work to wind
// down; idleFor is how long connections stay idle before they are
// measured.
const (
	settle  = 300 * time.Millisecond
	idleFor = time.Second
)

// memInUse is the memory the process holds for Go objects and goroutine
// stacks, after a collection.
func memInUse() (uint64, int) {
	m, g := memSample()
	return m.HeapInuse + m.StackInuse, g
}

// memSample collects twice and reads the memory statistics and the
// number of goroutines.
func memSample() (runtime.MemStats, int) {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	if os.Getenv("BENCH_MEMDEBUG") != "" {
		fmt.Fprintf(os.Stderr, "heap %d (live %d) stack %d goroutines %d\n", m.HeapInuse, m.HeapAlloc, m.StackInuse, runtime.NumGoroutine())
	}
	return m, runtime.NumGoroutine()
}

// waitFor polls cond until it holds or d passes.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// measureIdle serves n idle connections (each has bootstrapped) dialed by
// a peer process, measures the server's memory and goroutines per
// connection, then shuts the server down and asks the peers what they saw.
func measureIdle(impl string, n int) (idleFigures, error) {
	fig := idleFigures{Impl: impl, Conns: n}
	exe, err := os.Executable()
	if err != nil {
		return fig, err
	}
	srv, err := startServer(impl, setup{})
	if err != nil {
		return fig, err
	}
	// The server's own cost is not the connections': measure from here,
	// once what earlier scenarios started (pooled workers) has wound down.
	time.Sleep(settle)
	m0, g0 := memSample()
	peer := exec.Command(exe)
	peer.Env = append(os.Environ(), fmt.Sprintf("%s=%s,%d,%d", peerEnv, srv.addr, n, idleBurst))
	peer.Stderr = os.Stderr
	stdin, _ := peer.StdinPipe()
	stdout, _ := peer.StdoutPipe()
	if err := peer.Start(); err != nil {
		_ = srv.shutdown(context.Background())
		return fig, err
	}
	defer func() { _ = peer.Wait() }()
	lines := bufio.NewScanner(stdout)
	if !lines.Scan() || lines.Text() != "ready" {
		_ = srv.shutdown(context.Background())
		return fig, fmt.Errorf("peer process did not get ready: %q %v", lines.Text(), lines.Err())
	}
	if !waitFor(10*time.Second, func() bool { return srv.conns() >= n }) {
		_ = srv.shutdown(context.Background())
		return fig, fmt.Errorf("server has %d of %d connections", srv.conns(), n)
	}
	time.Sleep(idleFor) // idle: the last Finish messages are in, writers have stopped
	m1, g1 := memSample()
	if idleProfile != "" {
		if err := writeHeapProfile(idleProfile + "." + impl); err != nil {
			return fig, err
		}
	}
	// In use: the heap's spans that hold any object, and the stacks;
	// live: the objects themselves, and the stacks. The difference is
	// where the connections' objects landed in a heap that earlier work
	// shaped (partly filled spans), which moves from run to run.
	perConn := func(a, b uint64) float64 { return float64(int64(b)-int64(a)) / float64(n) }
	fig.BytesPerConn = perConn(m0.HeapInuse+m0.StackInuse, m1.HeapInuse+m1.StackInuse)
	fig.LiveBytesPerConn = perConn(m0.HeapAlloc+m0.StackInuse, m1.HeapAlloc+m1.StackInuse)
	fig.GoroutinesPerConn = float64(g1-g0) / float64(n)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t0 := time.Now()
	err = srv.shutdown(ctx)
	fig.ShutdownMS = float64(time.Since(t0).Microseconds()) / 1e3
	if err != nil {
		return fig, fmt.Errorf("shutdown: %w", err)
	}
	_, _ = io.WriteString(stdin, "report\n")
	if !lines.Scan() {
		return fig, fmt.Errorf("peer process gave no report: %v", lines.Err())
	}
	var seen peerReport
	if err := json.Unmarshal(lines.Bytes(), &seen); err != nil {
		return fig, fmt.Errorf("peer report %q: %w", lines.Text(), err)
	}
	fig.PeersEOF, fig.PeersReset, fig.PeersOther = seen.EOF, seen.Reset, seen.Other
	return fig, nil
}

// idleProfile, if set (-idleprofile), names the heap profiles taken while
// the idle connections are open, one per implementation.
var idleProfile string

func writeHeapProfile(name string) error {
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	defer f.Close()
	return pprof.Lookup("heap").WriteTo(f, 0)
}

// idleBurst (-idle-burst) is how many calls each idle peer makes at once
// before it goes idle: what a connection keeps after a burst.
var idleBurst int

// peerEnv, set to "address,n,burst", makes this program (or its test
// binary) the peer process of the idle-connection figures.
const peerEnv = "VATACTOR_BENCH_PEER"

// peerMain is the peer process: spec is peerEnv's value.
func peerMain(spec string) error {
	var addr string
	var n, burst int
	f := strings.Split(spec, ",")
	var err1, err2 error
	if len(f) == 3 {
		addr = f[0]
		n, err1 = strconv.Atoi(f[1])
		burst, err2 = strconv.Atoi(f[2])
	}
	if len(f) != 3 || err1 != nil || err2 != nil {
		return fmt.Errorf("%s=%q: want address,count,burst", peerEnv, spec)
	}
	return runPeers(addr, n, burst, os.Stdin, os.Stdout)
}

// peerReport is how the peers' connections ended.
type peerReport struct {
	EOF   int `json:"eof"`
	Reset int `json:"reset"`
	Other int `json:"other"`
}

// runPeers is the peer process: it dials addr n times with go-capnp's
// rpc.Conn, bootstraps each connection, makes burst echo calls at once on
// each and waits for them, says "ready", and once told to
// report (a line on in) waits for every connection to end and writes how
// each one's socket read ended: EOF (the server's FIN), a reset, or other.
func runPeers(addr string, n, burst int, in io.Reader, out io.Writer) error {
	type peer struct {
		nc   *recordingConn
		rc   *rpc.Conn
		boot schema.Bench
	}
	peers := make([]peer, 0, n)
	for range n {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		p := peer{nc: &recordingConn{Conn: nc, ended: make(chan struct{})}}
		p.rc = rpc.NewConn(rpc.NewStreamTransport(p.nc), nil)
		p.boot = schema.Bench(p.rc.Bootstrap(context.Background()))
		peers = append(peers, p)
	}
	for _, p := range peers {
		if err := p.boot.Resolve(context.Background()); err != nil {
			return fmt.Errorf("bootstrap: %w", err)
		}
	}
	if burst > 0 {
		caps := make([]schema.Bench, len(peers))
		for i, p := range peers {
			caps[i] = p.boot
		}
		if err := burstCalls(caps, burst); err != nil {
			return err
		}
	}
	fmt.Fprintln(out, "ready")
	if _, err := bufio.NewReader(in).ReadString('\n'); err != nil {
		return err
	}
	var rep peerReport
	timeout := time.After(20 * time.Second)
	for _, p := range peers {
		select {
		case <-p.nc.ended:
		case <-timeout:
		}
		switch err := p.nc.readErr(); {
		case errors.Is(err, io.EOF):
			rep.EOF++
		case errors.Is(err, syscall.ECONNRESET):
			rep.Reset++
		default:
			rep.Other++
		}
		p.boot.Release()
		_ = p.rc.Close()
	}
	return json.NewEncoder(out).Encode(rep)
}

// burstCalls makes burst echo calls at once on each of caps, all
// together, and waits for every result.
func burstCalls(caps []schema.Bench, burst int) error {
	ctx := context.Background()
	type pending struct {
		f       schema.Bench_echo_Results_Future
		release capnp.ReleaseFunc
	}
	calls := make([]pending, 0, len(caps)*burst)
	payload := make([]byte, 64)
	for _, b := range caps {
		for range burst {
			f, release := b.Echo(ctx, func(a schema.Bench_echo_Params) error { return a.SetData(payload) })
			calls = append(calls, pending{f, release})
		}
	}
	var first error
	for _, c := range calls {
		if _, err := c.f.Struct(); err != nil && first == nil {
			first = fmt.Errorf("burst call: %w", err)
		}
		c.release()
	}
	return first
}

// recordingConn remembers the first error a Read returned.
type recordingConn struct {
	net.Conn
	once  sync.Once
	mu    sync.Mutex
	err   error
	ended chan struct{}
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil {
		c.once.Do(func() {
			c.mu.Lock()
			c.err = err
			c.mu.Unlock()
			close(c.ended)
		})
	}
	return n, err
}

func (c *recordingConn) readErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// measureLive puts n hold() calls in flight on one connection and
// measures what each costs, both ends in this process.
func measureLive(impl string, n int) (liveFigures, error) {
	fig := liveFigures{Impl: impl, Questions: n}
	e, err := connect(impl, setup{conns: 1})
	if err != nil {
		return fig, err
	}
	defer e.close()
	b := e.clients[0]
	if err := b.Resolve(context.Background()); err != nil {
		return fig, err
	}
	time.Sleep(settle)
	mem0, g0 := memInUse()
	futures := make([]schema.Bench_hold_Results_Future, 0, n)
	releases := make([]func(), 0, n)
	for range n {
		f, release := b.Hold(context.Background(), nil)
		futures = append(futures, f)
		releases = append(releases, release)
	}
	if !waitFor(30*time.Second, func() bool { return e.server.holding() >= n }) {
		return fig, fmt.Errorf("server holds %d of %d calls", e.server.holding(), n)
	}
	mem1, g1 := memInUse()
	fig.BytesPerQuestion = float64(int64(mem1)-int64(mem0)) / float64(n)
	fig.GoroutinesPerQuestion = float64(g1-g0) / float64(n)
	uf, urel := b.Unhold(context.Background(), nil)
	defer urel()
	if _, err := uf.Struct(); err != nil {
		return fig, err
	}
	for i, f := range futures {
		if _, err := f.Struct(); err != nil {
			return fig, fmt.Errorf("held call %d: %w", i, err)
		}
		releases[i]()
	}
	return fig, nil
}
