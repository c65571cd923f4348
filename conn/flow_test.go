package conn

import (
	"context"
	"errors"
	"testing"
	"time"
)

// granted reports whether acquire returned within a short wait.
func granted(t *testing.T, ch <-chan error) bool {
	t.Helper()
	select {
	case err := <-ch:
		if err != nil {
			t.Fatalf("acquire: %v", err)
		}
		return true
	case <-time.After(20 * time.Millisecond):
		return false
	}
}

func acquireAsync(w *window, ctx context.Context, n int64) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- w.acquire(ctx, n) }()
	return ch
}

func TestWindowOrderAndRoom(t *testing.T) {
	ctx := context.Background()
	w := newWindow(100)
	if err := w.acquire(ctx, 60); err != nil {
		t.Fatal(err)
	}
	big := acquireAsync(w, ctx, 50) // 110 > 100: waits
	if granted(t, big) {
		t.Fatal("a call past the window went at once")
	}
	small := acquireAsync(w, ctx, 10) // would fit, but comes after big
	if granted(t, small) {
		t.Fatal("a later caller overtook a waiting one")
	}
	w.release(60)
	if !granted(t, big) || !granted(t, small) {
		t.Fatal("room freed, callers still waiting")
	}
	w.release(50)
	w.release(10)
	if w.used != 0 {
		t.Fatalf("used %d after every release", w.used)
	}
	// Larger than the whole window: goes alone.
	if err := w.acquire(ctx, 500); err != nil {
		t.Fatal(err)
	}
	w.release(500)
}

func TestWindowCancel(t *testing.T) {
	w := newWindow(10)
	if err := w.acquire(context.Background(), 10); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	first := acquireAsync(w, ctx, 5)
	second := acquireAsync(w, context.Background(), 5)
	time.Sleep(10 * time.Millisecond)
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled acquire: %v", err)
	}
	w.release(10)
	if !granted(t, second) {
		t.Fatal("the caller behind a cancelled one never got room")
	}
	w.release(5)
	if w.used != 0 || len(w.waiting) != 0 {
		t.Fatalf("used %d, %d waiting", w.used, len(w.waiting))
	}
	if newWindow(0) != nil {
		t.Fatal("a zero window is flow control")
	}
}
