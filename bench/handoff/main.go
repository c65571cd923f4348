// Command handoff reads an execution trace of a benchmark run (go run
// ./bench -trace FILE) and reports how long each connection's reader
// goroutine takes from a frame's arrival to handing it on: from the
// return of a read that brought bytes to the first goroutine the reader
// makes runnable (a question's actor, a capability's server, a caller).
// On a sequential call that time is on the call's path twice, once in
// each vat; unlike a benchmark's calls per second it leaves out the rest
// of the path (the other goroutines, the socket): it is the reader's own
// work before the next goroutine can run.
//
//	go run ./bench -impl vatactor -scenarios echo -scale=false -trace echo.trace
//	go run ./bench/handoff echo.trace
//
// A reader is a goroutine whose reads are made under conn's readLoop. A
// read that is followed by anything else the reader does first (it
// blocks, it reads again) is not counted: it brought nothing to hand on.
// The execution tracer slows every goroutine switch and system call, so
// the figures are for comparing two builds traced alike, not for adding
// to a call's latency.
package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/exp/trace"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: handoff TRACE")
		os.Exit(2)
	}
	f, err := os.Open(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "handoff:", err)
		os.Exit(1)
	}
	defer f.Close()
	found, err := measure(bufio.NewReader(f))
	if err != nil {
		fmt.Fprintln(os.Stderr, "handoff:", err)
		os.Exit(1)
	}
	if len(found) == 0 {
		fmt.Fprintln(os.Stderr, "handoff: no reader hand-off in this trace (was it made with bench -trace, with vatactor running?)")
		os.Exit(1)
	}
	report(os.Stdout, found)
}

// handoffs are the hand-off times of one kind: the reader goroutine and
// the function of conn that handed the frame on (state.deliver: a call to
// a capability; state.settle: a Return to its question).
type handoffs struct {
	g     trace.GoID
	by    string
	times []time.Duration
}

// measure walks the trace's events in order and collects, per reader
// goroutine, the time from each read's return to its next hand-off.
func measure(r io.Reader) ([]*handoffs, error) {
	rd, err := trace.NewReader(r)
	if err != nil {
		return nil, err
	}
	var (
		byKind   = map[kind]*handoffs{}
		inRead   = map[trace.GoID]bool{}       // in a system call made under readLoop
		returned = map[trace.GoID]trace.Time{} // its read returned at; nothing done since
	)
	for {
		ev, err := rd.ReadEvent()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		if ev.Kind() != trace.EventStateTransition {
			continue
		}
		st := ev.StateTransition()
		if st.Resource.Kind != trace.ResourceGoroutine {
			continue
		}
		g := st.Resource.Goroutine()
		from, to := st.Goroutine()
		if cur := ev.Goroutine(); cur != trace.NoGoroutine {
			if at, ok := returned[cur]; ok {
				delete(returned, cur)
				if cur != g && from == trace.GoWaiting && to == trace.GoRunnable {
					k := kind{cur, handedBy(ev.Stack())}
					rec := byKind[k]
					if rec == nil {
						rec = &handoffs{g: k.g, by: k.by}
						byKind[k] = rec
					}
					rec.times = append(rec.times, ev.Time().Sub(at))
				}
			}
		}
		switch {
		case from == trace.GoRunning && to == trace.GoSyscall:
			inRead[g] = underReadLoop(ev.Stack())
		case from == trace.GoSyscall && to == trace.GoRunning:
			if inRead[g] {
				returned[g] = ev.Time()
			}
			delete(inRead, g)
		}
	}
	out := make([]*handoffs, 0, len(byKind))
	for _, h := range byKind {
		out = append(out, h)
	}
	slices.SortFunc(out, func(a, b *handoffs) int { return len(b.times) - len(a.times) })
	return out, nil
}

type kind struct {
	g  trace.GoID
	by string
}

// connPkg prefixes the functions of package conn.
const connPkg = "github.com/vatactor/vatactor/conn."

// handedBy names the innermost function of package conn on the stack of
// a hand-off ("?" if none is).
func handedBy(s trace.Stack) string {
	for fr := range s.Frames() {
		if strings.HasPrefix(fr.Func, connPkg) {
			return strings.TrimPrefix(fr.Func, connPkg)
		}
	}
	return "?"
}

// underReadLoop reports whether a system call's stack is a read made by a
// connection's reader goroutine.
func underReadLoop(s trace.Stack) bool {
	read, loop := false, false
	for fr := range s.Frames() {
		read = read || strings.HasSuffix(fr.Func, ".Read")
		loop = loop || fr.Func == connPkg+"(*Conn).readLoop"
	}
	return read && loop
}

// report prints one line per reader and kind of hand-off with enough of
// them to say something, most first.
func report(w io.Writer, all []*handoffs) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "reader\thanded on by\thand-offs\tp25\tmedian\tp75\t")
	for _, h := range all {
		if len(h.times) < 100 {
			continue
		}
		slices.Sort(h.times)
		q := func(p float64) time.Duration { return h.times[int(p*float64(len(h.times)-1))] }
		fmt.Fprintf(tw, "G%d\t%s\t%d\t%v\t%v\t%v\t\n", h.g, h.by, len(h.times), q(0.25), q(0.5), q(0.75))
	}
	tw.Flush()
}
