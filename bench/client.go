package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// A client process: a measurement whose client side runs in a process of
// its own, against a server in this one (or the C++ server's). The C++
// client always does; a Go client does when setup.clientProcess is set
// (the connections sweep, where both ends of 10,000 connections would not
// fit in one process's open files). Both are run with the same arguments,
//
//	run ADDRESS OP CONNS WORKERS WARMUP MILLIS
//
// (OP is a scenario's cxx name) and print the same report: a line
// "ops N elapsed_ns NS cpu_ns NS" (cpu_ns, the machine's busy time over
// the window, where it could be read: cpu.go), then a line of latencies
// in nanoseconds, each "NS" (one op) or "NS*COUNT" (COUNT ops in NS's
// histogram bucket).

// clientEnv, set to an implementation's name, makes this program (or its
// test binary) a client process of that implementation.
const clientEnv = "VATACTOR_BENCH_CLIENT"

// childMain runs this program as the child process its environment asks
// for, if any, and exits; it returns when there is none.
func childMain() {
	var err error
	switch peer, impl := os.Getenv(peerEnv), os.Getenv(clientEnv); {
	case peer != "":
		err = peerMain(peer)
	case impl != "":
		err = clientMain(impl, os.Args[1:], os.Stdout)
	default:
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench child:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// clientMain is a client process of impl: args are run's.
func clientMain(impl string, args []string, out io.Writer) error {
	var n [4]int
	if len(args) != 7 || args[0] != "run" {
		return fmt.Errorf("%s=%s: want run ADDRESS OP CONNS WORKERS WARMUP MILLIS, have %q", clientEnv, impl, args)
	}
	for i, a := range args[3:] {
		v, err := strconv.Atoi(a)
		if err != nil || v < 0 {
			return fmt.Errorf("%s=%s: %q is not a count", clientEnv, impl, a)
		}
		n[i] = v
	}
	addr, opName, conns, workers, warmup, d := args[1], args[2], n[0], n[1], n[2], time.Duration(n[3])*time.Millisecond
	sc, ok := scenarioOfOp(opName)
	if !ok {
		return fmt.Errorf("no scenario does op %q", opName)
	}
	cli, err := dial(impl, addr, setup{conns: conns, window: sc.window})
	if err != nil {
		return err
	}
	defer cli.close()
	if cli.grpc != nil && sc.grpcOp == nil {
		return fmt.Errorf("op %q has no gRPC form", opName)
	}
	run, err := runOps(clientOps(sc, impl, cli.benches, cli.grpc), workers, warmup, d)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "ops %d elapsed_ns %d", run.ops, run.elapsed.Nanoseconds())
	if run.cpuKnown {
		fmt.Fprintf(out, " cpu_ns %d", run.cpu.Nanoseconds())
	}
	fmt.Fprintln(out)
	var line strings.Builder
	for i, c := range run.lat.counts {
		if c > 0 {
			fmt.Fprintf(&line, "%d*%d ", histLow(i), c)
		}
	}
	line.WriteByte('\n')
	_, err = io.WriteString(out, line.String())
	return err
}

// scenarioOfOp is the first scenario whose op a client process names op.
func scenarioOfOp(op string) (scenario, bool) {
	for _, sc := range scenarios() {
		if sc.cxx == op && sc.costOf == "" {
			return sc, true
		}
	}
	return scenario{}, false
}

// clientCommand is the command of impl's client process.
func clientCommand(impl string, args ...string) (*exec.Cmd, error) {
	if cxxClient(impl) {
		bin, err := cxxBench()
		if err != nil {
			return nil, err
		}
		return exec.Command(bin, args...), nil
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), clientEnv+"="+impl)
	return cmd, nil
}

// measureProcess runs sc for d with impl's client in a process of its own
// against impl's server in this one (the C++ server's own, for c++ and
// vatactor>c++) and adds what the client measured to r.
func measureProcess(sc scenario, impl string, s setup, d time.Duration, r *result) error {
	if sc.cxx == "" {
		return fmt.Errorf("%s on %s: no client process does this scenario", sc.name, impl)
	}
	serverImpl := impl
	switch impl {
	case implCxxToVat:
		serverImpl = implVatactor
	case implVatToCxx:
		serverImpl = implCxx
	}
	srv, err := startServer(serverImpl, s)
	if err != nil {
		return err
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.shutdown(ctx)
	}()
	cmd, err := clientCommand(impl, "run", srv.addr, sc.cxx, strconv.Itoa(sc.conns), strconv.Itoa(sc.workers),
		strconv.Itoa(sc.warmupOps()), strconv.FormatInt(d.Milliseconds(), 10))
	if err != nil {
		return err
	}
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return fmt.Errorf("%s on %s: %w: %s", sc.name, impl, err, ee.Stderr)
		}
		return fmt.Errorf("%s on %s: %w", sc.name, impl, err)
	}
	run, err := parseClientReport(out)
	if err != nil {
		return fmt.Errorf("%s on %s: the client process printed %.200q: %w", sc.name, impl, out, err)
	}
	r.add(run, sc.calls)
	// The client's allocations are another process's, and a server's are
	// only half of a call's: not counted.
	r.foreign = true
	return nil
}

// parseClientReport reads a client process's report.
func parseClientReport(out []byte) (*opsRun, error) {
	lines := strings.SplitN(string(out), "\n", 3)
	if len(lines) < 2 {
		return nil, errors.New("no latency line")
	}
	run := &opsRun{}
	var elapsed, cpu int64
	if _, err := fmt.Sscanf(lines[0], "ops %d elapsed_ns %d", &run.ops, &elapsed); err != nil {
		return nil, err
	}
	run.elapsed = time.Duration(elapsed)
	if _, cpuPart, ok := strings.Cut(lines[0], " cpu_ns "); ok {
		if _, err := fmt.Sscanf(cpuPart, "%d", &cpu); err != nil || cpu < 0 {
			return nil, fmt.Errorf("cpu_ns %q: not a duration", cpuPart)
		}
		run.cpu, run.cpuKnown = time.Duration(cpu), true
	}
	for _, f := range strings.Fields(lines[1]) {
		ns, count, many := strings.Cut(f, "*")
		v, err := strconv.ParseInt(ns, 10, 64)
		k := uint64(1)
		if many && err == nil {
			k, err = strconv.ParseUint(count, 10, 64)
		}
		if err != nil {
			return nil, fmt.Errorf("latency %q: %w", f, err)
		}
		run.lat.addN(time.Duration(v), k)
	}
	if run.lat.n != run.ops {
		return nil, fmt.Errorf("%d latencies for %d ops", run.lat.n, run.ops)
	}
	return run, nil
}
