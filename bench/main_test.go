package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vatactor/vatactor/internal/cxxpeer"
)

// TestMain lets the test binary be a child process of the bench (the
// idle connections' peers, a client process), as the bench binary is.
func TestMain(m *testing.M) {
	childMain()
	os.Exit(m.Run())
}

// TestCommand runs the whole command briefly (every scenario, both
// implementations, small scale figures) and checks what it prints: the
// table, one JSON object per scenario and implementation with every
// field, the scale lines, and the summary last. It checks the shape, not
// the speed.
func TestCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("runs every scenario")
	}
	var out, errs bytes.Buffer
	args := []string{"-impl", "vatactor,go-capnp,grpc-go", "-duration", "40ms", "-cost-duration", "40ms", "-rounds", "1", "-idle-conns", "20", "-live-questions", "200"}
	if err := run(args, &out, &errs); err != nil {
		t.Fatalf("bench %v: %v\n%s", args, err, errs.String())
	}
	var results, scale int
	var summary map[string]map[string]float64
	lines := bufio.NewScanner(&out)
	sawTable := false
	for lines.Scan() {
		line := lines.Text()
		if strings.Contains(line, "scenario") && strings.Contains(line, "calls/s") {
			sawTable = true
		}
		if !strings.HasPrefix(line, "{") {
			continue
		}
		if summary != nil {
			t.Fatalf("a line after the summary: %s", line)
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal([]byte(line), &obj); err != nil {
			t.Fatalf("not JSON: %s: %v", line, err)
		}
		switch {
		case obj["summary"] != nil:
			if err := json.Unmarshal(obj["summary"], &summary); err != nil {
				t.Fatal(err)
			}
		case obj["scale"] != nil:
			scale++
		default:
			results++
			for _, k := range []string{"scenario", "impl", "calls_per_sec", "p50_us", "p99_us", "allocs_per_call", "bytes_per_call"} {
				if _, ok := obj[k]; !ok {
					t.Errorf("result without %q: %s", k, line)
				}
			}
			if _, measured := machineBusy(); measured && obj["cpu_us_per_call"] == nil {
				t.Errorf("result without the machine's busy time per call: %s", line)
			}
		}
	}
	if !sawTable {
		t.Error("no table")
	}
	// Nine scenarios on two implementations, eight of them on gRPC-Go
	// too (pipeline3 has no gRPC equivalent), two traced and two metered
	// ones on vatactor (with and without).
	if want := 9*2 + 8 + 2*2 + 2*2; results != want {
		t.Errorf("%d result lines, want %d", results, want)
	}
	if scale != 4 {
		t.Errorf("%d scale lines, want 4 (idle and live, per implementation)", scale)
	}
	for _, sc := range []string{"echo", "inflight64", "conns100x8", "payload1MiB", "put1MiB", "get1MiB", "pipeline3", "stream10k", "tree16"} {
		if m := summary[sc]; m["speedup"] <= 0 || m["alloc_ratio"] <= 0 {
			t.Errorf("summary of %s: %v", sc, m)
		}
	}
	for _, sc := range []string{"echo", "inflight64", "conns100x8", "payload1MiB", "stream10k", "tree16"} {
		if m := summary[sc]; m["speedup_vs_grpc"] <= 0 || m["alloc_ratio_vs_grpc"] <= 0 {
			t.Errorf("summary of %s against gRPC-Go: %v", sc, m)
		}
	}
	if summary["tcp-floor"]["p50_us"] <= 0 || summary["echo/traced"]["alloc_ratio"] <= 0 || summary["inflight64/metered"]["alloc_ratio"] <= 0 {
		t.Errorf("summary: %v", summary)
	}
}

// TestCommandCxx: the C++ reference's three ways in the command (C++ to
// C++, vatactor to C++, C++ to vatactor), with ratios against C++. It
// needs the C++ tools: skipped without them unless VATACTOR_REQUIRE_CXX
// is set (CI).
func TestCommandCxx(t *testing.T) {
	if _, err := cxxBench(); err != nil {
		if errors.Is(err, cxxpeer.ErrToolsMissing) && os.Getenv("VATACTOR_REQUIRE_CXX") == "" {
			t.Skipf("skipping: %v", err)
		}
		t.Fatalf("building the C++ bench program: %v", err)
	}
	var out, errs bytes.Buffer
	args := []string{"-impl", "vatactor,c++,vatactor>c++,c++>vatactor", "-scenarios", "echo,pipeline3,stream10k,tree16", "-scale=false", "-duration", "100ms", "-rounds", "1"}
	if err := run(args, &out, &errs); err != nil {
		t.Fatalf("bench %v: %v\n%s", args, err, errs.String())
	}
	impls := map[string]int{}
	var summary map[string]map[string]float64
	for _, line := range strings.Split(out.String(), "\n") {
		if !strings.HasPrefix(line, "{") {
			continue
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal([]byte(line), &obj); err != nil {
			t.Fatalf("%v: %s", err, line)
		}
		if obj["summary"] != nil {
			if err := json.Unmarshal(obj["summary"], &summary); err != nil {
				t.Fatal(err)
			}
			continue
		}
		var impl string
		_ = json.Unmarshal(obj["impl"], &impl)
		impls[impl]++
		if obj["cpu_us_per_call"] == nil { // the C++ client reports it as the Go one does
			t.Errorf("%s: no cpu_us_per_call: %s", impl, line)
		}
	}
	for _, impl := range []string{"vatactor", "c++", "vatactor>c++", "c++>vatactor"} {
		if impls[impl] != 4 {
			t.Errorf("%s: %d results, want 4 (one per scenario): %v", impl, impls[impl], impls)
		}
	}
	for _, sc := range []string{"echo", "pipeline3", "stream10k", "tree16"} {
		if summary[sc]["speedup_vs_cxx"] <= 0 {
			t.Errorf("summary of %s: %v", sc, summary[sc])
		}
	}
}

// TestSweep: the scaling figures on a small scale, printed and drawn.
func TestSweep(t *testing.T) {
	defer func(a, b, c []int) { sweepInFlight, sweepConns, sweepIdle = a, b, c }(sweepInFlight, sweepConns, sweepIdle)
	sweepInFlight, sweepConns, sweepIdle = []int{1, 4}, []int{1, 3}, []int{10}
	var out, errs bytes.Buffer
	dir := t.TempDir()
	if err := run([]string{"-sweep", "-impl", "both", "-duration", "30ms", "-plots", dir}, &out, &errs); err != nil {
		t.Fatalf("%v\n%s", err, errs.String())
	}
	for _, want := range []string{"echo against calls in flight", "echo against connections", "idle connections"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("no %q in:\n%s", want, out.String())
		}
	}
	for _, f := range []string{"inflight-calls.png", "inflight-p99.png", "conns-calls.png", "conns-p99.png", "idle-bytes.png", "shutdown.png"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil || !bytes.HasPrefix(b, []byte("\x89PNG")) {
			t.Errorf("%s: %v, not a PNG", f, err)
		}
	}
}

// TestSweepPlotsEmpty: a sweep that measured nothing of a kind draws no
// figure of it (an empty log axis would not draw), and the others still.
func TestSweepPlotsEmpty(t *testing.T) {
	dir := t.TempDir()
	s := &sweepResult{conns: []sweepPoint{{impl: implVatactor, x: 1, callsPerSec: 100, p99us: 50}, {impl: implVatactor, x: 10, callsPerSec: 300, p99us: 80}}}
	if err := s.plot(dir); err != nil {
		t.Fatal(err)
	}
	for f, want := range map[string]bool{"conns-calls.png": true, "conns-p99.png": true, "inflight-calls.png": false, "idle-bytes.png": false} {
		_, err := os.Stat(filepath.Join(dir, f))
		if got := err == nil; got != want {
			t.Errorf("%s drawn: %v, want %v", f, got, want)
		}
	}
}

// TestSweepRanges: the sweep measures the ranges bench/README.md states —
// calls in flight from 1 to 1,024, connections from 1 to 10,000, idle
// connections from 100 to 10,000 (TestSweep runs it on smaller ones).
func TestSweepRanges(t *testing.T) {
	for _, r := range []struct {
		name     string
		points   []int
		from, to int
	}{
		{"in flight", sweepInFlight, 1, 1024},
		{"connections", sweepConns, 1, 10_000},
		{"idle connections", sweepIdle, 100, 10_000},
	} {
		if len(r.points) < 3 || r.points[0] != r.from || r.points[len(r.points)-1] != r.to {
			t.Errorf("the sweep's %s are %v, want %d to %d", r.name, r.points, r.from, r.to)
		}
	}
}

// TestClientProcess: with -client-process every Go implementation's client
// runs as a process of its own (this test binary again, see TestMain) and
// reports calls, latencies and no allocations; a feature's cost scenario
// stays in one process and counts them.
func TestClientProcess(t *testing.T) {
	var out, errs bytes.Buffer
	args := []string{"-client-process", "-impl", "vatactor,go-capnp,grpc-go", "-scenarios", "echo,stream10k,echo/traced",
		"-duration", "60ms", "-cost-duration", "40ms", "-rounds", "1", "-scale=false"}
	if err := run(args, &out, &errs); err != nil {
		t.Fatalf("%v\n%s", err, errs.String())
	}
	seen := map[string]bool{}
	for line := range strings.Lines(out.String()) {
		if !strings.HasPrefix(line, `{"allocs_per_call"`) {
			continue
		}
		var r struct {
			Scenario, Impl string
			Calls          float64  `json:"calls_per_sec"`
			Allocs         *float64 `json:"allocs_per_call"`
		}
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		seen[r.Scenario+" "+r.Impl] = true
		if r.Calls <= 0 {
			t.Errorf("%s on %s: %v calls/s", r.Scenario, r.Impl, r.Calls)
		}
		if inProcess := strings.Contains(r.Scenario, "/"); inProcess != (r.Allocs != nil) {
			t.Errorf("%s on %s: allocations %v, want them counted only in one process", r.Scenario, r.Impl, r.Allocs)
		}
	}
	for _, want := range []string{"echo vatactor", "echo go-capnp", "echo grpc-go", "stream10k vatactor", "stream10k grpc-go", "echo/traced vatactor"} {
		if !seen[want] {
			t.Errorf("no result for %s in:\n%s", want, out.String())
		}
	}
}
