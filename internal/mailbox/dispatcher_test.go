package mailbox

import (
	"sync"
	"testing"
	"time"
)

// TestDispatcherReusesAndRetires: work runs on pooled workers, a worker
// is reused rather than started again, and idle workers exit.
func TestDispatcherReusesAndRetires(t *testing.T) {
	d := &Dispatcher{throughput: 10}
	var wg sync.WaitGroup
	for range 1000 { // one at a time: one worker does it all
		wg.Add(1)
		d.Schedule(wg.Done)
		wg.Wait()
		if n := d.idleWorkers(); n > 4 {
			t.Fatalf("%d idle workers for one-at-a-time work", n)
		}
	}
	for range 1000 { // all at once: more workers, all retire later
		wg.Add(1)
		d.Schedule(func() { time.Sleep(time.Microsecond); wg.Done() })
	}
	wg.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for d.idleWorkers() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d workers still idle after %v", d.idleWorkers(), 5*time.Second)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Work scheduled while workers retire still runs.
	for range 100 {
		wg.Add(1)
		d.Schedule(wg.Done)
		time.Sleep(time.Millisecond)
	}
	wg.Wait()
}

// TestDispatcherBlockedActivation: an activation that blocks holds up
// only its own worker. Work queued behind it, even in the same burst
// and before any worker has woken, runs meanwhile on another.
func TestDispatcherBlockedActivation(t *testing.T) {
	d := &Dispatcher{throughput: 10}
	const blocked = 8
	release := make(chan struct{})
	var started, done sync.WaitGroup
	started.Add(blocked)
	done.Add(blocked)
	for range blocked { // one burst: all queued before a worker runs
		d.Schedule(func() {
			started.Done()
			<-release
			done.Done()
		})
	}
	ran := make(chan struct{})
	d.Schedule(func() { close(ran) })
	select {
	case <-ran:
	case <-time.After(5 * time.Second):
		t.Fatal("work queued behind blocked activations did not run")
	}
	started.Wait() // every blocked one has a worker of its own
	later := make(chan struct{})
	d.Schedule(func() { close(later) }) // and work scheduled now still runs
	select {
	case <-later:
	case <-time.After(5 * time.Second):
		t.Fatal("work scheduled while every worker is blocked did not run")
	}
	close(release)
	done.Wait()
}
