// Package tinymap is a map that holds one entry in itself before it makes
// a Go map. A connection's tables mostly hold a single entry for most of
// its life (its bootstrap capability, the peer's bootstrap question), and
// a Go map of one entry costs two allocations and 200 bytes or more.
package tinymap

import (
	"iter"

	"github.com/vatactor/vatactor/internal/peakmap"
)

// Map maps keys to values like a Go map. The zero value is an empty map,
// ready to use. A Map is not safe for concurrent use.
type Map[K comparable, V any] struct {
	k    K
	one  bool // k, v hold an entry (next to k: it often fits in k's padding)
	v    V
	more map[K]V // the other entries (nil: none yet)
	peak peakmap.Peak
}

// Get returns the value of k and whether k is in m.
func (m *Map[K, V]) Get(k K) (V, bool) {
	if m.one && m.k == k {
		return m.v, true
	}
	v, ok := m.more[k]
	return v, ok
}

// At returns the value of k, or the zero value when k is not in m.
func (m *Map[K, V]) At(k K) V {
	v, _ := m.Get(k)
	return v
}

// Set sets the value of k.
func (m *Map[K, V]) Set(k K, v V) {
	switch {
	case m.one && m.k == k:
		m.v = v
		return
	case !m.one:
		if _, ok := m.more[k]; !ok {
			m.k, m.v, m.one = k, v, true
			return
		}
	}
	peakmap.Set(&m.more, k, v)
	m.peak.Note(len(m.more))
}

// Delete removes k from m.
func (m *Map[K, V]) Delete(k K) {
	if m.one && m.k == k {
		var zk K
		var zv V
		m.k, m.v, m.one = zk, zv, false
		return
	}
	delete(m.more, k)
}

// Len is the number of entries in m.
func (m *Map[K, V]) Len() int {
	n := len(m.more)
	if m.one {
		n++
	}
	return n
}

// All yields every entry of m, in no particular order. The loop may
// delete entries of m (as with a Go map).
func (m *Map[K, V]) All() iter.Seq2[K, V] {
	return func(yield func(K, V) bool) {
		if m.one && !yield(m.k, m.v) {
			return
		}
		for k, v := range m.more {
			if !yield(k, v) {
				return
			}
		}
	}
}

// Shrink gives back the storage of the Go map when a burst grew it and it
// is (nearly) empty again (peakmap.Shrink).
func (m *Map[K, V]) Shrink() { m.more = peakmap.Shrink(m.more, &m.peak) }

// Clear removes every entry of m.
func (m *Map[K, V]) Clear() {
	var k K
	var v V
	m.k, m.v, m.one = k, v, false
	clear(m.more)
}
