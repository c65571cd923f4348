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
