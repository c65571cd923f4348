// Package idtable is the table of a connection's small integer ids
// (questions, exports, embargoes): ids we choose, reused once freed, as
// rpc.capnp expects them to stay small.
package idtable

// Table maps ids to entries. Freed ids are reused, the last freed first.
// The zero value is an empty table.
type Table[T comparable] struct {
	entries []T
	used    []bool
	free    []uint32
	n       int
}

// Add stores v under a new id and returns it.
func (t *Table[T]) Add(v T) uint32 {
	var id uint32
	if k := len(t.free); k > 0 {
		id = t.free[k-1]
		t.free = t.free[:k-1]
		t.entries[id], t.used[id] = v, true
	} else {
		id = uint32(len(t.entries))
		t.entries = append(t.entries, v)
		t.used = append(t.used, true)
	}
	t.n++
	return id
}

// Get returns the entry for id, or the zero T.
func (t *Table[T]) Get(id uint32) T {
	var zero T
	if int64(id) >= int64(len(t.entries)) || !t.used[id] {
		return zero
	}
	return t.entries[id]
}

// Remove frees id; an id not in use is ignored.
func (t *Table[T]) Remove(id uint32) {
	if int64(id) >= int64(len(t.entries)) || !t.used[id] {
		return
	}
	var zero T
	t.entries[id], t.used[id] = zero, false
	t.free = append(t.free, id)
	t.n--
}

// Len returns the number of ids in use.
func (t *Table[T]) Len() int { return t.n }

// Each calls f for every id in use, in id order.
func (t *Table[T]) Each(f func(id uint32, v T)) {
	for i, u := range t.used {
		if u {
			f(uint32(i), t.entries[i])
		}
	}
}
