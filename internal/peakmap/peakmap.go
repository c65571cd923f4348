// Package peakmap rebuilds a Go map that has emptied after it grew. A map
// keeps the storage of its largest size for good, so a connection's
// tables, after a burst of calls, would keep a burst's worth of storage
// for the rest of the connection's life.
package peakmap

import "maps"

// Small is the size below which a map is not worth rebuilding (Go's
// smallest maps hold eight entries in one group).
const Small = 8

// Peak is the largest size a map has had since it was last rebuilt. The
// zero value is ready.
type Peak struct{ n int }

// Note records the map's size n, after an insertion.
func (p *Peak) Note(n int) {
	if n > p.n {
		p.n = n
	}
}

// Shrink returns m, or a copy of it sized for what it holds now when it
// once held more than Small entries and now holds at most a quarter of
// that peak (and no more than Small).
func Shrink[M ~map[K]V, K comparable, V any](m M, p *Peak) M {
	if len(m) == 0 {
		p.n = 0
		return nil // made again by the next Set
	}
	if p.n <= Small || len(m) > Small || len(m) > p.n/4 {
		return m
	}
	p.n = len(m)
	n := make(M, len(m))
	maps.Copy(n, m) // not maps.Clone: a clone keeps the original's size
	return n
}

// Set sets (*m)[k] = v, making *m first when it is nil: a table that is
// empty for most of a connection's life holds no map until it is written
// (and, after Shrink, none once it is empty again).
func Set[M ~map[K]V, K comparable, V any](m *M, k K, v V) {
	if *m == nil {
		*m = make(M)
	}
	(*m)[k] = v
}
