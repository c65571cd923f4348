package peakmap

import (
	"runtime"
	"testing"
)

func TestShrinkAfterBurst(t *testing.T) {
	const tables, burst = 200, 1024
	ms := make([]map[uint32]*int, tables)
	peaks := make([]Peak, tables)
	var m0, m1, m2 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	for i := range ms {
		ms[i] = map[uint32]*int{}
		for k := range uint32(burst) {
			ms[i][k] = nil
			peaks[i].Note(len(ms[i]))
		}
		for k := range uint32(burst - 1) {
			delete(ms[i], k)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&m1)
	for i := range ms {
		ms[i] = Shrink(ms[i], &peaks[i])
	}
	runtime.GC()
	runtime.ReadMemStats(&m2)
	for _, m := range ms {
		if _, ok := m[burst-1]; len(m) != 1 || !ok {
			t.Fatalf("a shrunk map holds %d entries, not the one left", len(m))
		}
	}
	grown, shrunk := int64(m1.HeapAlloc)-int64(m0.HeapAlloc), int64(m2.HeapAlloc)-int64(m0.HeapAlloc)
	t.Logf("%d maps after a burst of %d: %d bytes each; shrunk: %d", tables, burst, grown/tables, shrunk/tables)
	if shrunk*8 > grown {
		t.Errorf("shrunk maps hold %d bytes, grown ones %d: not given back", shrunk, grown)
	}
	// A map that stays busy, or small, is left alone.
	m, p := map[int]int{1: 1, 2: 2}, Peak{}
	p.Note(2)
	if got := Shrink(m, &p); len(got) != 2 {
		t.Fatal("a small map changed")
	}
}

// TestEmptyHoldsNoMap: a table written once and emptied again holds no
// map after Shrink, whatever its peak, and Set makes it again.
func TestEmptyHoldsNoMap(t *testing.T) {
	var m map[int]string
	var p Peak
	Set(&m, 1, "a")
	p.Note(len(m))
	if m[1] != "a" {
		t.Fatal("Set on a nil map did not make it")
	}
	delete(m, 1)
	if m = Shrink(m, &p); m != nil {
		t.Fatalf("an empty map shrank to %v, not nil", m)
	}
	Set(&m, 2, "b")
	if len(m) != 1 || m[2] != "b" {
		t.Fatalf("Set after Shrink: %v", m)
	}
}
