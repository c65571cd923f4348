package tinymap

import (
	"maps"
	"math/rand/v2"
	"testing"
)

// TestLikeAGoMap runs random operations on a Map and on a Go map and
// compares what they hold after each one.
func TestLikeAGoMap(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for round := range 200 {
		var m Map[int, int]
		want := map[int]int{}
		for op := range 200 {
			k := r.IntN(6)
			switch r.IntN(4) {
			case 0, 1:
				m.Set(k, op)
				want[k] = op
			case 2:
				m.Delete(k)
				delete(want, k)
			case 3:
				m.Shrink()
			}
			got := maps.Collect(m.All())
			if !maps.Equal(got, want) || m.Len() != len(want) {
				t.Fatalf("round %d op %d: holds %v (len %d), want %v", round, op, got, m.Len(), want)
			}
			for k := range 6 {
				v, ok := m.Get(k)
				w, wok := want[k]
				if v != w || ok != wok || m.At(k) != w {
					t.Fatalf("round %d op %d: Get(%d) = %d, %v; want %d, %v", round, op, k, v, ok, w, wok)
				}
			}
		}
	}
}

// TestOneEntryNoMap: one entry at a time, set and deleted over and over,
// never makes a Go map.
func TestOneEntryNoMap(t *testing.T) {
	var m Map[string, *int]
	for i := range 100 {
		m.Set("boot", &i)
		if i%2 == 0 {
			m.Delete("boot")
		}
		if m.more != nil {
			t.Fatalf("after %d sets a Go map was made", i+1)
		}
	}
	if allocs := testing.AllocsPerRun(100, func() { m.Set("boot", nil); m.Delete("boot") }); allocs != 0 {
		t.Fatalf("a one-entry Set and Delete allocate %.0f times", allocs)
	}
}

// TestDeleteWhileRanging: entries deleted in the loop over All are gone
// after it, and the loop sees every entry once.
func TestDeleteWhileRanging(t *testing.T) {
	var m Map[int, int]
	for k := range 20 {
		m.Set(k, k)
	}
	seen := 0
	for k := range m.All() {
		m.Delete(k)
		seen++
	}
	if seen != 20 || m.Len() != 0 {
		t.Fatalf("saw %d, %d left", seen, m.Len())
	}
}
