package main

import (
	"bytes"
	"os"
	"strconv"
	"time"
)

// The CPU a call costs is measured as the machine's busy time over a
// measurement's window, from the kernel's counters (/proc/stat): the
// client's, the server's and the kernel's work for them (system calls,
// the loopback's packet processing), whichever process does it. That is
// the one figure that is alike for a Go client and server in one process,
// in two, and for the C++ client and server in two processes of their own;
// it counts everything else the machine does meanwhile too, so it is read
// on a machine that runs nothing else (the bench runs one thing at a
// time). Where there is no /proc/stat it is not measured.

// clockTick is the unit of /proc/stat's counters (USER_HZ, 100 on every
// Linux this runs on).
const clockTick = 10 * time.Millisecond

// machineBusy returns the time the machine's CPUs have spent busy since
// boot (user, nice, system, irq and softirq; not idle, iowait or steal),
// and whether it could be read.
func machineBusy() (time.Duration, bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, false
	}
	return parseBusy(b)
}

// parseBusy reads the busy time from the first ("cpu", all CPUs) line of
// /proc/stat: "cpu user nice system idle iowait irq softirq steal …".
func parseBusy(stat []byte) (time.Duration, bool) {
	line, _, _ := bytes.Cut(stat, []byte("\n"))
	f := bytes.Fields(line)
	if len(f) < 8 || string(f[0]) != "cpu" {
		return 0, false
	}
	var ticks uint64
	for _, i := range []int{1, 2, 3, 6, 7} {
		v, err := strconv.ParseUint(string(f[i]), 10, 64)
		if err != nil {
			return 0, false
		}
		ticks += v
	}
	return time.Duration(ticks) * clockTick, true
}

// busyWindow measures the machine's busy time over a window: start it as
// the window opens, call took as it closes.
type busyWindow struct {
	start time.Duration
	ok    bool
}

func openBusyWindow() busyWindow {
	start, ok := machineBusy()
	return busyWindow{start: start, ok: ok}
}

// took returns the busy time since the window opened, and whether it
// was measured.
func (w busyWindow) took() (time.Duration, bool) {
	end, ok := machineBusy()
	if !w.ok || !ok || end < w.start {
		return 0, false
	}
	return end - w.start, true
}
