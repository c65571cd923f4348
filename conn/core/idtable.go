package core

// idTable maps small integer ids, which we choose, to entries. Freed ids
// are reused lowest-first-freed-last, as rpc.capnp expects ids to stay small.
type idTable[T comparable] struct {
	entries []T
	used    []bool
	free    []uint32
	n       int
}

func (t *idTable[T]) add(v T) uint32 {
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

// get returns the entry for id, or the zero T.
func (t *idTable[T]) get(id uint32) T {
	var zero T
	if int64(id) >= int64(len(t.entries)) || !t.used[id] {
		return zero
	}
	return t.entries[id]
}

func (t *idTable[T]) remove(id uint32) {
	if int64(id) >= int64(len(t.entries)) || !t.used[id] {
		return
	}
	var zero T
	t.entries[id], t.used[id] = zero, false
	t.free = append(t.free, id)
	t.n--
}

func (t *idTable[T]) len() int { return t.n }

func (t *idTable[T]) each(f func(id uint32, v T)) {
	for i, u := range t.used {
		if u {
			f(uint32(i), t.entries[i])
		}
	}
}
