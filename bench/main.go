// Command bench runs vatactor's vats and go-capnp's rpc.Conn side by side
// on the same work, in the same process, alternating, over loopback TCP,
// and prints what each did: a table, then one JSON object per line and a
// last line with vatactor/go-capnp ratios.
//
//	go run ./bench                       # every scenario, 1s each per implementation
//	go run ./bench -duration 3s -rounds 5
//	go run ./bench -scenarios echo,stream10k -scale=false
//	go run ./bench -impl vatactor -scenarios inflight64 -cpuprofile cpu.out
//	go run ./bench -impl vatactor -scenarios echo -scale=false -trace echo.trace && go run ./bench/handoff echo.trace
//
// bench/README.md says what each figure means.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

func main() {
	childMain()
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// run is the command: flags in args, the report on stdout, progress on
// stderr.
func run(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		duration   = fs.Duration("duration", time.Second, "measured time per scenario and implementation, split over the rounds")
		rounds     = fs.Int("rounds", 3, "rounds per scenario; the implementations alternate which goes first")
		costFor    = fs.Duration("cost-duration", 4*time.Second, "least measured time of each variant of a feature's cost scenario (…/traced, …/metered), split over at least 20 rounds")
		only       = fs.String("scenarios", "all", "comma-separated scenarios to run, all, or none (-list shows them)")
		impls      = fs.String("impl", "all", "vatactor, go-capnp, grpc-go, both (vatactor and go-capnp) or all")
		scale      = fs.Bool("scale", true, "also measure the scale figures (idle connections, live questions, shutdown)")
		clientProc = fs.Bool("client-process", false, "run the Go clients in a process of their own, as the C++ client is (their allocations are then not counted; a feature's cost scenarios stay in one process)")
		idleConns  = fs.Int("idle-conns", 1000, "idle connections for the scale figures")
		liveQs     = fs.Int("live-questions", 10000, "questions in flight for the scale figures")
		list       = fs.Bool("list", false, "list the scenarios and exit")
		cpuprofile = fs.String("cpuprofile", "", "write a CPU profile of the scenarios to this file")
		traceFile  = fs.String("trace", "", "write an execution trace of the scenarios to this file (go run ./bench/handoff reads it)")
		sweep      = fs.Bool("sweep", false, "measure the scaling figures instead of the scenarios (calls in flight, connections, idle connections)")
		plots      = fs.String("plots", "", "with -sweep: draw the figures as PNG files in this directory")
		memprofile = fs.String("memprofile", "", "write an allocation profile to this file at the end")
	)
	fs.StringVar(&idleProfile, "idleprofile", "", "write heap profiles (<file>.<impl>) while the idle connections are open")
	fs.IntVar(&idleBurst, "idle-burst", 0, "calls each idle peer makes at once, and waits for, before it goes idle (0: it only bootstraps)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if idleProfile != "" {
		runtime.MemProfileRate = 1 // every allocation, for an exact profile
	}
	slog.SetDefault(slog.New(slog.DiscardHandler))
	all := scenarios()
	if *list {
		for _, sc := range all {
			fmt.Fprintf(stdout, "%-18s %s\n", sc.name, sc.doc)
		}
		return nil
	}
	selected, err := selectScenarios(all, *only)
	if err != nil {
		return err
	}
	var which []string
	known := append([]string{implVatactor, implGoCapnp, implGRPC}, cxxImpls...)
	switch *impls {
	case "all":
		which = []string{implVatactor, implGoCapnp, implGRPC}
		if _, err := cxxBench(); err == nil {
			which = append(which, cxxImpls...)
		} else if os.Getenv("VATACTOR_REQUIRE_CXX") != "" {
			return fmt.Errorf("the C++ implementation (VATACTOR_REQUIRE_CXX is set): %w", err)
		} else {
			fmt.Fprintf(stderr, "bench: skipping the C++ reference: %v\n", err)
		}
	case "both":
		which = []string{implVatactor, implGoCapnp}
	default:
		for _, impl := range strings.Split(*impls, ",") {
			if !slices.Contains(known, impl) {
				return fmt.Errorf("-impl: %q is not one of %s, both (the first two) or all", impl, strings.Join(known, ", "))
			}
			which = append(which, impl)
		}
	}
	*rounds = max(*rounds, 1)
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if *traceFile != "" {
		f, err := os.Create(*traceFile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := trace.Start(f); err != nil {
			return err
		}
		defer trace.Stop()
	}

	if *sweep {
		res, err := runSweep(which, *duration, stderr)
		if err != nil {
			return err
		}
		res.print(stdout)
		if *plots != "" {
			return res.plot(*plots)
		}
		return nil
	}

	rep := &report{}
	fmt.Fprintf(stderr, "bench: %d scenario(s) × %v per implementation, %d rounds, GOMAXPROCS=%d\n",
		len(selected), *duration, *rounds, runtime.GOMAXPROCS(0))
	if slices.ContainsFunc(selected, func(sc scenario) bool { return sc.name == "echo" }) {
		fl, err := floor(*duration)
		if err != nil {
			return fmt.Errorf("tcp floor: %w", err)
		}
		rep.floor = fl
	}
	for _, sc := range selected {
		fmt.Fprintf(stderr, "bench: %s\n", sc.name)
		res, err := runScenario(sc, which, *rounds, *duration, *costFor, *clientProc)
		if err != nil {
			return err
		}
		rep.results = append(rep.results, res...)
	}
	if *scale {
		for _, impl := range which {
			if impl != implVatactor && impl != implGoCapnp {
				continue // the scale figures are the Go implementations' (heap, goroutines)
			}
			fmt.Fprintf(stderr, "bench: scale figures, %s\n", impl)
			idle, err := measureIdle(impl, *idleConns)
			if err != nil {
				return fmt.Errorf("idle connections on %s: %w", impl, err)
			}
			live, err := measureLive(impl, *liveQs)
			if err != nil {
				return fmt.Errorf("live questions on %s: %w", impl, err)
			}
			rep.idle = append(rep.idle, idle)
			rep.live = append(rep.live, live)
		}
	}
	if *memprofile != "" {
		f, err := os.Create(*memprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
			return err
		}
	}
	rep.print(stdout)
	return nil
}

func selectScenarios(all []scenario, only string) ([]scenario, error) {
	switch only {
	case "all", "":
		return all, nil
	case "none":
		return nil, nil
	}
	var out []scenario
	for _, name := range strings.Split(only, ",") {
		i := slices.IndexFunc(all, func(sc scenario) bool { return sc.name == strings.TrimSpace(name) })
		if i < 0 {
			return nil, fmt.Errorf("-scenarios: no scenario %q (-list shows them)", name)
		}
		out = append(out, all[i])
	}
	return out, nil
}

// runScenario runs sc for each implementation, rounds times, alternating
// which goes first, each for d/rounds. A scenario that measures a
// feature's cost runs vatactor twice instead, alternating in the same
// way: with the feature on ("<name>/traced": every span recorded;
// "<name>/metered": every instrument recording) and off ("…/untraced",
// "…/unmetered"), so that its cost is measured under the same
// conditions, in at least minCostRounds rounds and costFor.
func runScenario(sc scenario, impls []string, rounds int, d, costFor time.Duration, clientProcess bool) ([]*result, error) {
	type variant struct {
		res *result
		s   setup
	}
	base := setup{conns: sc.conns, window: sc.window, clientProcess: clientProcess && sc.costOf == ""}
	var vs []variant
	if sc.costOf != "" {
		if !slices.Contains(impls, implVatactor) {
			return nil, nil
		}
		on := base
		switch sc.feature {
		case traced:
			on.tracer = sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))
		case metered:
			on.meter = sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
		}
		vs = []variant{
			{&result{scenario: sc.costOf + "/un" + sc.feature, impl: implVatactor}, base},
			{&result{scenario: sc.name, impl: implVatactor}, on},
		}
		rounds, d = max(rounds, minCostRounds), max(d, costFor)
	} else {
		for _, impl := range impls {
			if impl == implGRPC && sc.grpcOp == nil || slices.Contains(cxxImpls, impl) && sc.cxx == "" {
				continue
			}
			vs = append(vs, variant{&result{scenario: sc.name, impl: impl}, base})
		}
	}
	per := d / time.Duration(rounds)
	for round := range rounds {
		for k := range vs {
			v := vs[k]
			if round%2 == 1 {
				v = vs[len(vs)-1-k]
			}
			if err := measure(sc, v.res.impl, v.s, per, v.res); err != nil {
				return nil, err
			}
		}
	}
	out := make([]*result, len(vs))
	for i, v := range vs {
		out[i] = v.res
	}
	return out, nil
}

// minCostRounds is the fewest rounds a feature's cost is measured in
// (its duration split over them): the cost is the median of the rounds'
// paired ratios (pairedCost), a few percent that the machine's noise
// swamps in the default three rounds (costs of −6 % to +12 % for the
// same binary); over twenty the median holds to about ±2 %.
// (-cost-duration's default, 4 s, is chosen the same way: over one
// second the same binary's cost still moved by ±5 %, over ten by ±2 %.)
const minCostRounds = 20

// report is everything one run measured.
type report struct {
	floor   *result
	results []*result
	idle    []idleFigures
	live    []liveFigures
}

func (r *report) find(scenario, impl string) *result {
	for _, res := range r.results {
		if res.scenario == scenario && res.impl == impl {
			return res
		}
	}
	return nil
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

// cpuColumn is res's machine busy time per call in µs, or "-".
func cpuColumn(res *result) string {
	cpu, ok := res.cpuPerCall()
	if !ok {
		return "-"
	}
	return strconv.FormatFloat(us(cpu), 'f', 1, 64)
}

// round keeps figures readable in JSON.
func round(x float64, digits int) float64 {
	p := math.Pow10(digits)
	return math.Round(x*p) / p
}

func (r *report) print(out io.Writer) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\timpl\tcalls/s\tp50 µs\tp99 µs\tcpu µs/call\tallocs/call\tbytes/call\t")
	if f := r.floor; f != nil {
		fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.1f\t%.1f\t%s\t-\t-\t\n", f.scenario, f.impl, f.callsPerSec(), us(f.lat.quantile(0.5)), us(f.lat.quantile(0.99)), cpuColumn(f))
	}
	for _, res := range r.results {
		if res.foreign {
			fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.1f\t%.1f\t%s\t-\t-\t\n", res.scenario, res.impl, res.callsPerSec(),
				us(res.lat.quantile(0.5)), us(res.lat.quantile(0.99)), cpuColumn(res))
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.1f\t%.1f\t%s\t%.1f\t%.0f\t\n", res.scenario, res.impl, res.callsPerSec(),
			us(res.lat.quantile(0.5)), us(res.lat.quantile(0.99)), cpuColumn(res), res.allocsPerCall(), res.bytesPerCall())
	}
	tw.Flush()
	if len(r.idle) > 0 {
		fmt.Fprintln(out)
		tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "scale\timpl\tidle conns\tbytes/conn\tlive bytes/conn\tgoroutines/conn\tshutdown ms\tpeers EOF\tpeers reset\tlive questions\tbytes/question\t")
		for i, idle := range r.idle {
			live := r.live[i]
			fmt.Fprintf(tw, "server\t%s\t%d\t%.0f\t%.0f\t%.2f\t%.0f\t%d\t%d\t%d\t%.0f\t\n", idle.Impl, idle.Conns, idle.BytesPerConn, idle.LiveBytesPerConn,
				idle.GoroutinesPerConn, idle.ShutdownMS, idle.PeersEOF, idle.PeersReset, live.Questions, live.BytesPerQuestion)
		}
		tw.Flush()
	}
	sum := r.summary()
	if len(sum.targets) > 0 {
		fmt.Fprintln(out)
		tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "target\tmeasured\tlimit\t")
		for _, t := range sum.targets {
			met := "met"
			if !t.met {
				met = "NOT MET"
			}
			fmt.Fprintf(tw, "%s\t%.3g\t%s %.3g\t%s\n", t.name, t.value, t.op, t.limit, met)
		}
		tw.Flush()
	}
	fmt.Fprintln(out)
	enc := json.NewEncoder(out)
	for _, res := range r.results {
		line := map[string]any{
			"scenario":        res.scenario,
			"impl":            res.impl,
			"calls_per_sec":   round(res.callsPerSec(), 0),
			"p50_us":          round(us(res.lat.quantile(0.5)), 1),
			"p99_us":          round(us(res.lat.quantile(0.99)), 1),
			"allocs_per_call": round(res.allocsPerCall(), 1),
			"bytes_per_call":  round(res.bytesPerCall(), 0),
		}
		if res.foreign { // a C++ client's: not counted
			line["allocs_per_call"], line["bytes_per_call"] = nil, nil
		}
		if cpu, ok := res.cpuPerCall(); ok {
			line["cpu_us_per_call"] = round(us(cpu), 2)
		}
		_ = enc.Encode(line)
	}
	for _, idle := range r.idle {
		_ = enc.Encode(map[string]any{"scale": "idle_conns", "impl": idle.Impl, "figures": idle})
	}
	for _, live := range r.live {
		_ = enc.Encode(map[string]any{"scale": "live_questions", "impl": live.Impl, "figures": live})
	}
	_ = enc.Encode(map[string]any{"summary": sum.byScenario})
}
