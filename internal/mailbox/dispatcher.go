package mailbox

import (
	"slices"
	"sync"
	"time"
)

// Dispatcher runs mailbox activations on a pool of goroutines shared by
// every actor that uses it. protoactor's default dispatcher starts a new
// goroutine per activation, whose stack grows again (and is copied)
// each time through the actor's call chain; a pooled goroutine keeps
// its grown stack from one activation to the next. A worker that stays
// idle for workerIdleTimeout exits, so an idle process keeps none.
//
// Activations wait in one queue. A worker that finishes one takes the
// next without a hand-off, so a burst of short activations (the question
// actors settled by one read of Returns) runs on the goroutines already
// awake instead of waking one each. No activation waits behind another
// that runs, though: while activations are queued, one worker is awake
// to take them (it is "searching"), and a worker that takes one and
// leaves more queued wakes the next (wakeLocked). An activation that
// blocks holds up only its own worker.
//
// The zero value is not usable; use Pool.
type Dispatcher struct {
	throughput int

	mu    sync.Mutex
	queue queue[task] // waits for a worker
	idle  []*worker   // most recently idle last: it is the one reused
	// searching counts the workers that are awake and not running an
	// activation: each looks at the queue before it idles, so work
	// queued meanwhile needs no wake-up of its own.
	searching int
}

// Pool is the dispatcher of vatactor's connection, question and export
// actors.
var Pool = &Dispatcher{throughput: 300}

// workerIdleTimeout is how long a worker waits for work before it exits.
const workerIdleTimeout = 100 * time.Millisecond

type worker struct {
	wake chan struct{} // capacity 1: a wake-up never blocks
}

// A task is a function to run, or a mailbox to process (which needs no
// closure).
type task struct {
	fn func()
	m  *Mailbox
}

func (t task) run() {
	if t.m != nil {
		t.m.run()
		return
	}
	t.fn()
}

// Schedule implements actor.Dispatcher: fn runs on a pooled worker.
func (d *Dispatcher) Schedule(fn func()) { d.schedule(task{fn: fn}) }

// scheduleMailbox is Schedule for this package's mailboxes.
func (d *Dispatcher) scheduleMailbox(m *Mailbox) { d.schedule(task{m: m}) }

func (d *Dispatcher) schedule(t task) {
	d.mu.Lock()
	d.queue.push(t)
	d.wakeLocked()
}

// wakeLocked sees that a worker will look at the queue: one that is
// searching already, else the most recently idle one, else a new one.
// Called with mu held; it releases mu.
func (d *Dispatcher) wakeLocked() {
	if d.searching > 0 {
		d.mu.Unlock()
		return
	}
	d.searching++ // the woken worker, from now on
	if n := len(d.idle); n > 0 {
		w := d.idle[n-1]
		d.idle = d.idle[:n-1]
		d.mu.Unlock()
		w.wake <- struct{}{}
		return
	}
	d.mu.Unlock()
	go d.run()
}

// Throughput implements actor.Dispatcher: messages an activation handles
// before it yields.
func (d *Dispatcher) Throughput() int { return d.throughput }

// run is a worker: it starts searching (counted by wakeLocked).
func (d *Dispatcher) run() {
	w := &worker{wake: make(chan struct{}, 1)}
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	d.mu.Lock()
	for { // mu is held at the top of each round
		if t, ok := d.queue.pop(); ok {
			d.searching--
			if d.queue.len() > 0 {
				d.wakeLocked() // the rest does not wait behind t
			} else {
				d.mu.Unlock()
			}
			t.run()
			d.mu.Lock()
			d.searching++ // searching again, under the lock this round keeps
			continue
		}
		d.searching--
		d.idle = append(d.idle, w)
		d.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(workerIdleTimeout)
		} else {
			timer.Reset(workerIdleTimeout)
		}
		select {
		case <-w.wake: // counted searching by the waker
			timer.Stop()
		case <-timer.C:
			d.mu.Lock()
			if i := slices.Index(d.idle, w); i >= 0 {
				d.idle = slices.Delete(d.idle, i, i+1)
				d.mu.Unlock()
				return
			}
			d.mu.Unlock()
			<-w.wake // taken from the idle list just now: its wake-up is on the way
		}
		d.mu.Lock()
	}
}

// idleWorkers reports how many workers wait for work.
func (d *Dispatcher) idleWorkers() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.idle)
}
