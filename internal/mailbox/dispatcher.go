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
// The zero value is not usable; use Pool.
type Dispatcher struct {
	throughput int

	mu   sync.Mutex
	idle []*worker // most recently idle last: it is the one reused
}

// Pool is the dispatcher of vatactor's connection, question and export
// actors.
var Pool = &Dispatcher{throughput: 300}

// workerIdleTimeout is how long a worker waits for work before it exits.
const workerIdleTimeout = 100 * time.Millisecond

type worker struct {
	work chan task // capacity 1: a hand-off never blocks
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

// Schedule implements actor.Dispatcher: fn runs on an idle worker, or on
// a new one.
func (d *Dispatcher) Schedule(fn func()) { d.schedule(task{fn: fn}) }

// scheduleMailbox is Schedule for this package's mailboxes.
func (d *Dispatcher) scheduleMailbox(m *Mailbox) { d.schedule(task{m: m}) }

func (d *Dispatcher) schedule(t task) {
	d.mu.Lock()
	if n := len(d.idle); n > 0 {
		w := d.idle[n-1]
		d.idle = d.idle[:n-1]
		d.mu.Unlock()
		w.work <- t
		return
	}
	d.mu.Unlock()
	go d.run(t)
}

// Throughput implements actor.Dispatcher: messages an activation handles
// before it yields.
func (d *Dispatcher) Throughput() int { return d.throughput }

func (d *Dispatcher) run(t task) {
	w := &worker{work: make(chan task, 1)}
	timer := time.NewTimer(workerIdleTimeout)
	defer timer.Stop()
	for {
		t.run()
		t = task{}
		d.mu.Lock()
		d.idle = append(d.idle, w)
		d.mu.Unlock()
		timer.Reset(workerIdleTimeout)
		select {
		case t = <-w.work:
			continue
		case <-timer.C:
		}
		d.mu.Lock()
		if i := slices.Index(d.idle, w); i >= 0 {
			d.idle = slices.Delete(d.idle, i, i+1)
			d.mu.Unlock()
			return
		}
		d.mu.Unlock()
		t = <-w.work // taken from the idle list just now: its work is on the way
	}
}

// idleWorkers reports how many workers wait for work.
func (d *Dispatcher) idleWorkers() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.idle)
}
