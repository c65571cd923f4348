package main

import (
	"testing"
	"time"
)

func TestParseBusy(t *testing.T) {
	stat := "cpu  100 5 20 9000 7 3 2 50 0 0\ncpu0 50 2 10 4500 3 1 1 25 0 0\n"
	busy, ok := parseBusy([]byte(stat))
	if !ok || busy != 130*clockTick { // user+nice+system+irq+softirq, not idle, iowait or steal
		t.Fatalf("parseBusy = %v, %v; want %v", busy, ok, 130*clockTick)
	}
	for _, bad := range []string{"", "intr 1 2 3\n", "cpu 1 2 3\n", "cpu 1 2 x 4 5 6 7 8\n"} {
		if _, ok := parseBusy([]byte(bad)); ok {
			t.Errorf("parseBusy(%q) read a busy time", bad)
		}
	}
	if _, ok := machineBusy(); !ok {
		t.Log("no /proc/stat here: the cpu column stays empty")
	}
}

// TestParseClientReport: a client process's report, with the machine's
// busy time (cpu_ns) and without it (where /proc/stat is not there).
func TestParseClientReport(t *testing.T) {
	run, err := parseClientReport([]byte("ops 3 elapsed_ns 3000 cpu_ns 2500\n900 1000*2 \n"))
	if err != nil {
		t.Fatal(err)
	}
	if run.ops != 3 || run.elapsed != 3000 || !run.cpuKnown || run.cpu != 2500 || run.lat.n != 3 {
		t.Errorf("parsed %+v", run)
	}
	run, err = parseClientReport([]byte("ops 1 elapsed_ns 10\n10\n"))
	if err != nil {
		t.Fatal(err)
	}
	if run.cpuKnown {
		t.Errorf("a report without cpu_ns parsed as measuring %v", run.cpu)
	}
	if _, err := parseClientReport([]byte("ops 1 elapsed_ns 10 cpu_ns x\n10\n")); err == nil {
		t.Error("a cpu_ns that is not a number parsed")
	}
	var r result
	r.add(&opsRun{ops: 4, elapsed: time.Second, cpu: 8 * time.Millisecond, cpuKnown: true}, 2)
	r.add(&opsRun{ops: 4, elapsed: time.Second}, 2) // a round that did not measure it
	if cpu, ok := r.cpuPerCall(); !ok || cpu != time.Millisecond {
		t.Errorf("cpu per call %v, %v; want 1ms over the measured round's 8 calls", cpu, ok)
	}
}
