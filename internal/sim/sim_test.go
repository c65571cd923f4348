package sim

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

var (
	seeds  = flag.Int("seeds", 10000, "how many seeds TestSimulation runs (from -first)")
	first  = flag.Uint64("first", 1, "the first seed")
	seed   = flag.Uint64("seed", 0, "run only this seed, with its whole transcript")
	nsteps = flag.Int("steps", 300, "scheduler steps before the wind-down")
)

// vatsFor spreads the seeds over 2, 3 and 4 vats.
func vatsFor(seed uint64) int { return 2 + int(seed%3) }

func runSeed(t *testing.T, s uint64, trace bool) Result {
	t.Helper()
	r := Run(Config{Seed: s, Vats: vatsFor(s), Steps: *nsteps, Trace: trace})
	if len(r.Failures) > 0 {
		t.Errorf("seed %d (%d vats, %d steps): %s\n\nfaults: %v\n\nthe run's last events:\n%s\n\nreplay it with:\n\tgo test ./internal/sim -run TestSimulation -seed %d -v",
			s, vatsFor(s), r.Steps, strings.Join(r.Failures, "\n"), r.Faults, strings.Join(r.Transcript, "\n"), s)
	}
	return r
}

func TestSimulation(t *testing.T) {
	if *seed != 0 {
		r := runSeed(t, *seed, true)
		if !t.Failed() {
			t.Logf("seed %d passed: %d steps, %d calls, %d messages, faults %v\n%s", *seed, r.Steps, r.Calls, r.Messages, r.Faults, strings.Join(r.Transcript, "\n"))
		}
		return
	}
	n := *seeds
	if testing.Short() {
		n = min(n, 1000)
	}
	if raceSeeds > 0 && !flagSet("seeds") {
		n = raceSeeds
	}
	start := time.Now()
	var steps, calls, msgs, faults, failed int
	kinds := map[string]int{}
	for s := *first; s < *first+uint64(n); s++ {
		r := runSeed(t, s, false)
		steps += r.Steps
		calls += r.Calls
		msgs += r.Messages
		faults += len(r.Faults)
		for k, n := range r.Kinds {
			kinds[k] += n
		}
		if len(r.Failures) > 0 {
			failed++
			if failed >= 3 {
				t.Fatalf("stopping after %d failing seeds", failed)
			}
		}
	}
	t.Logf("%d seeds in %v: %d steps, %d calls, %d messages, %d faults; messages by kind: %v", n, time.Since(start).Round(time.Millisecond), steps, calls, msgs, faults, kinds)
}

// TestSimulationRegressions replays the seeds that once broke an oracle
// (testdata/regressions.txt: one seed per line, # comments).
func TestSimulationRegressions(t *testing.T) {
	f, err := os.Open("testdata/regressions.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = strings.TrimSpace(line[:i])
		}
		if line == "" {
			continue
		}
		s, err := strconv.ParseUint(line, 10, 64)
		if err != nil {
			t.Fatalf("regressions.txt: %v", err)
		}
		t.Run(fmt.Sprint(s), func(t *testing.T) { runSeed(t, s, false) })
	}
}

// flagSet reports whether the named flag was given on the command line.
func flagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}
