// Package arena holds values of one kind that are handed out by pointer
// for a short while (a step's outputs, the inputs a turn queues): the
// storage is reused from one round to the next, so a warm round allocates
// nothing for them.
package arena

// Of is the storage of values of type T. The zero value is empty and
// ready.
type Of[T any] struct {
	buf []T
	n   int
	hi  int // the most values held since the last Clear: buf[hi:] is zero
}

// Put stores v and returns where. A pointer it returns is valid until
// Reset; when the storage grows, values handed out before stay where
// they were, unchanged.
func (a *Of[T]) Put(v T) *T {
	if a.n < len(a.buf) {
		a.buf[a.n] = v
	} else {
		a.buf = append(a.buf, v)
	}
	p := &a.buf[a.n]
	a.n++
	a.hi = max(a.hi, a.n)
	return p
}

// Reset makes the storage free again. It does not clear it: Put
// overwrites a value whole, and clearing would cost a write barrier per
// pointer during a collection; what it still points to (the last rounds'
// values, a bounded few) is freed when overwritten.
func (a *Of[T]) Reset() { a.n = 0 }

// Clear makes the storage free again and drops everything it points to,
// for storage that goes back to a pool between rounds: whoever takes it
// next keeps nothing of this round alive.
func (a *Of[T]) Clear() {
	clear(a.buf[:a.hi])
	a.n, a.hi = 0, 0
}
