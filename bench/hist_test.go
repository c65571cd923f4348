package main

import (
	"testing"
	"time"
)

func TestHistBuckets(t *testing.T) {
	prev := -1
	for ns := uint64(0); ns < 1<<20; ns += 7 {
		i := histBucket(ns)
		if i < prev {
			t.Fatalf("bucket of %d is %d, below the previous %d", ns, i, prev)
		}
		prev = i
		if lo, hi := histLow(i), histLow(i+1); ns < lo || ns >= hi {
			t.Fatalf("%d in bucket %d = [%d, %d)", ns, i, lo, hi)
		}
	}
}

func TestHistQuantile(t *testing.T) {
	var h hist
	for i := 1; i <= 1000; i++ {
		h.add(time.Duration(i) * time.Microsecond)
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Microsecond}, {0.99, 990 * time.Microsecond}} {
		got := h.quantile(c.q)
		if d := got - c.want; d < -c.want/30 || d > c.want/30 {
			t.Errorf("quantile(%v) = %v, want %v ± 3%%", c.q, got, c.want)
		}
	}
	var empty hist
	if empty.quantile(0.5) != 0 {
		t.Error("empty histogram has a median")
	}
}
