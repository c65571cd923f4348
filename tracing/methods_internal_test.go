package tracing

import (
	"math/rand/v2"
	"sync"
	"testing"
)

func entries(m *sync.Map) int {
	n := 0
	m.Range(func(_, _ any) bool { n++; return true })
	return n
}

// A peer names any interface ids it likes: looking them up, or naming
// their calls, keeps nothing for ids that no schema has (it grew a map by
// one entry per id).
func TestLookupMethodOfUnknownIDsKeepsNothing(t *testing.T) {
	searchedBefore, methodsBefore := entries(&searched), entries(&methods)
	rng := rand.New(rand.NewPCG(1, 2))
	for range 10_000 {
		iface, method := rng.Uint64(), uint16(rng.Uint32())
		if m, ok := LookupMethod(iface, method); ok {
			t.Fatalf("a random id found %v", m)
		}
		if n := NamesByID(iface, method); n.Span != UnknownMethodSpan {
			t.Fatalf("a random id is named %q", n.Span)
		}
	}
	if s, m := entries(&searched), entries(&methods); s != searchedBefore || m != methodsBefore {
		t.Errorf("after 10,000 unknown ids: %d interfaces searched (was %d), %d methods (was %d)", s, searchedBefore, m, methodsBefore)
	}
}
