package main

import (
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"text/tabwriter"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// The scaling figures (-sweep): echo calls/s and p99 against the calls in
// flight on one connection and against the number of connections (one
// call in flight on each, the clients in a process of their own), then a
// server's memory per idle connection and the time of a graceful shutdown
// against the number of connections.
// Printed as tables; with -plots DIR, drawn as PNG files there too.

var (
	sweepInFlight = []int{1, 4, 16, 64, 256, 1024}
	sweepConns    = []int{1, 10, 100, 1000, 5000, 10000}
	sweepIdle     = []int{100, 1000, 10000}
)

// sweepPoint is one measurement of a sweep.
type sweepPoint struct {
	impl        string
	x           int
	callsPerSec float64
	p99us       float64
}

type sweepResult struct {
	inFlight, conns []sweepPoint
	idle            []idleFigures
}

// raiseFileLimit lets the process, and the processes it starts, open as
// many sockets as the hard limit allows.
func raiseFileLimit() uint64 {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0
	}
	l.Cur = l.Max
	_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l)
	return l.Cur
}

func runSweep(impls []string, d time.Duration, stderr io.Writer) (*sweepResult, error) {
	files := raiseFileLimit()
	res := &sweepResult{}
	point := func(impl string, sc scenario, x int, s setup) (sweepPoint, error) {
		r := &result{scenario: sc.name, impl: impl}
		s.conns = sc.conns
		if err := measure(sc, impl, s, d, r); err != nil {
			return sweepPoint{}, err
		}
		return sweepPoint{impl: impl, x: x, callsPerSec: r.callsPerSec(), p99us: us(r.lat.quantile(0.99))}, nil
	}
	for _, impl := range impls {
		for _, k := range sweepInFlight {
			fmt.Fprintf(stderr, "bench: sweep, %s, %d in flight\n", impl, k)
			sc := scenario{name: fmt.Sprintf("inflight%d", k), conns: 1, workers: k, op: echoOp(small),
				grpcOp: grpcEchoOp(small), cxx: "echo64", calls: 1, warmup: 2}
			p, err := point(impl, sc, k, setup{})
			if err != nil {
				return nil, err
			}
			res.inFlight = append(res.inFlight, p)
		}
		for _, n := range sweepConns {
			// The clients are a process of their own, so each process
			// holds one end of each connection: leave room for the rest.
			if uint64(n+1000) > files {
				fmt.Fprintf(stderr, "bench: sweep, %s, %d connections: skipped (open file limit %d)\n", impl, n, files)
				continue
			}
			fmt.Fprintf(stderr, "bench: sweep, %s, %d connections\n", impl, n)
			sc := scenario{name: fmt.Sprintf("conns%d", n), conns: n, workers: 1, op: echoOp(small),
				grpcOp: grpcEchoOp(small), cxx: "echo64", calls: 1, warmup: 2}
			p, err := point(impl, sc, n, setup{clientProcess: true})
			if err != nil {
				return nil, err
			}
			res.conns = append(res.conns, p)
		}
	}
	for _, impl := range impls {
		if impl != implVatactor && impl != implGoCapnp {
			continue
		}
		for _, n := range sweepIdle {
			if uint64(n+1000) > files {
				continue
			}
			fmt.Fprintf(stderr, "bench: sweep, %s, %d idle connections\n", impl, n)
			fig, err := measureIdle(impl, n)
			if err != nil {
				return nil, fmt.Errorf("idle connections on %s: %w", impl, err)
			}
			res.idle = append(res.idle, fig)
		}
	}
	return res, nil
}

func (s *sweepResult) print(out io.Writer) {
	table := func(title, x string, pts []sweepPoint) {
		fmt.Fprintf(out, "\n%s\n", title)
		tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintf(tw, "%s\timpl\tcalls/s\tp99 µs\t\n", x)
		for _, p := range pts {
			fmt.Fprintf(tw, "%d\t%s\t%.0f\t%.0f\t\n", p.x, p.impl, p.callsPerSec, p.p99us)
		}
		tw.Flush()
	}
	table("echo against calls in flight (one connection)", "in flight", s.inFlight)
	table("echo against connections (one call in flight on each)", "connections", s.conns)
	fmt.Fprintf(out, "\nidle connections (the server's side)\n")
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "connections\timpl\tbytes/conn\tgoroutines/conn\tshutdown ms\tpeers EOF\tpeers reset\t")
	for _, f := range s.idle {
		fmt.Fprintf(tw, "%d\t%s\t%.0f\t%.2f\t%.0f\t%d\t%d\t\n", f.Conns, f.Impl, f.BytesPerConn, f.GoroutinesPerConn, f.ShutdownMS, f.PeersEOF, f.PeersReset)
	}
	tw.Flush()
}

// plot draws the sweep into dir as PNG files.
func (s *sweepResult) plot(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	type series struct {
		name string
		xy   plotter.XYs
	}
	byImpl := func(pts []sweepPoint, y func(sweepPoint) float64) []series {
		var out []series
		for _, p := range pts {
			i := slices.IndexFunc(out, func(s series) bool { return s.name == p.impl })
			if i < 0 {
				out = append(out, series{name: p.impl})
				i = len(out) - 1
			}
			out[i].xy = append(out[i].xy, plotter.XY{X: float64(p.x), Y: y(p)})
		}
		return out
	}
	draw := func(file, title, x, y string, ss []series, logY bool) error {
		if len(ss) == 0 {
			return nil // nothing measured (a log axis cannot be drawn empty)
		}
		p := plot.New()
		p.Title.Text = title
		p.X.Label.Text = x
		p.Y.Label.Text = y
		p.X.Scale = plot.LogScale{}
		p.X.Tick.Marker = plot.LogTicks{Prec: -1}
		if logY {
			p.Y.Scale = plot.LogScale{}
			p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
		}
		p.Legend.Top = true
		p.Legend.Left = true
		var args []any
		for _, s := range ss {
			args = append(args, s.name, s.xy)
		}
		if err := plotutil.AddLinePoints(p, args...); err != nil {
			return err
		}
		return p.Save(7*vg.Inch, 4*vg.Inch, filepath.Join(dir, file))
	}
	calls := func(p sweepPoint) float64 { return p.callsPerSec }
	p99 := func(p sweepPoint) float64 { return math.Max(p.p99us, 1) }
	if err := draw("inflight-calls.png", "echo calls/s against calls in flight (one connection)", "calls in flight", "calls/s", byImpl(s.inFlight, calls), false); err != nil {
		return err
	}
	if err := draw("inflight-p99.png", "echo p99 against calls in flight (one connection)", "calls in flight", "p99 (µs)", byImpl(s.inFlight, p99), true); err != nil {
		return err
	}
	if err := draw("conns-calls.png", "echo calls/s against connections (one call in flight each)", "connections", "calls/s", byImpl(s.conns, calls), false); err != nil {
		return err
	}
	if err := draw("conns-p99.png", "echo p99 against connections (one call in flight each)", "connections", "p99 (µs)", byImpl(s.conns, p99), true); err != nil {
		return err
	}
	var mem, shut []sweepPoint
	for _, f := range s.idle {
		mem = append(mem, sweepPoint{impl: f.Impl, x: f.Conns, callsPerSec: f.BytesPerConn})
		shut = append(shut, sweepPoint{impl: f.Impl, x: f.Conns, callsPerSec: math.Max(f.ShutdownMS, 0.1)})
	}
	if err := draw("idle-bytes.png", "server memory per idle connection", "idle connections", "bytes per connection", byImpl(mem, calls), false); err != nil {
		return err
	}
	return draw("shutdown.png", "graceful shutdown of every idle connection at once", "idle connections", "shutdown (ms)", byImpl(shut, calls), true)
}
