package actors_test

import (
	"runtime"
	"testing"

	"github.com/vatactor/vatactor/actors"
)

// TestSpawnCost: a vat in the shared actor system costs well under 1 MB
// to spawn (a protoactor system of its own costs about 3 MB).
func TestSpawnCost(t *testing.T) {
	actors.Spawn(actors.Options{Name: "first"}).Stop() // the shared system is made once
	var a, b runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&a)
	v := actors.Spawn(actors.Options{Name: "probe"})
	runtime.ReadMemStats(&b)
	v.Stop()
	bytes, allocs := b.TotalAlloc-a.TotalAlloc, b.Mallocs-a.Mallocs
	t.Logf("a vat: %d allocations, %d bytes", allocs, bytes)
	if bytes > 256<<10 {
		t.Errorf("spawning a vat allocated %d bytes, want well under 1 MB", bytes)
	}
}
