package conn

import (
	"testing"
	"unsafe"

	"github.com/vatactor/vatactor/conn/core"
)

// TestRecordSizes keeps what an idle connection's three largest records
// cost: each is allocated in a Go size class, with the 8-byte header the
// runtime puts on objects larger than 512 bytes, and a field more can move
// it up a class (128 bytes per connection). When this fails, make room
// (what is needed only at the end, or only while calls are in flight, can
// be made then) or raise the budget with its measured cost.
func TestRecordSizes(t *testing.T) {
	const header = 8
	for _, r := range []struct {
		name         string
		size, budget uintptr
	}{
		{"Conn", unsafe.Sizeof(Conn{}), 1024},
		{"state", unsafe.Sizeof(state{}), 768},
		{"core.Core", unsafe.Sizeof(core.Core{}), 896},
	} {
		if r.size+header > r.budget {
			t.Errorf("%s is %d bytes (+%d): over its size class of %d", r.name, r.size, header, r.budget)
		}
	}
}
