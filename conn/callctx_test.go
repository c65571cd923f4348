package conn

import (
	"context"
	"errors"
	"testing"
	"time"
)

type ctxKey struct{}

// TestCallCtx: a call's context behaves as a cancelable context for the
// callee and for contexts derived from it, with or without Done asked
// for before the cancel.
func TestCallCtx(t *testing.T) {
	c := &callCtx{parent: context.WithValue(context.Background(), ctxKey{}, "v")}
	if c.Value(ctxKey{}) != "v" || c.Err() != nil {
		t.Fatal("fresh call context")
	}
	child, cancelChild := context.WithCancel(c)
	defer cancelChild()
	timeout, cancelTimeout := context.WithTimeout(c, time.Hour)
	defer cancelTimeout()
	ran := make(chan struct{})
	context.AfterFunc(c, func() { close(ran) })
	stopped := context.AfterFunc(c, func() { t.Error("a stopped AfterFunc ran") })
	if !stopped() {
		t.Fatal("stop of a pending AfterFunc")
	}
	c.cancel()
	c.cancel() // again: nothing
	for name, ctx := range map[string]context.Context{"call": c, "child": child, "timeout": timeout} {
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Second):
			t.Fatalf("%s context not cancelled", name)
		}
		if !errors.Is(ctx.Err(), context.Canceled) {
			t.Fatalf("%s: Err = %v", name, ctx.Err())
		}
	}
	<-ran
	late := make(chan struct{})
	context.AfterFunc(c, func() { close(late) }) // after the cancel: runs at once
	<-late
	if _, ok := c.Deadline(); ok {
		t.Fatal("a call context has no deadline")
	}
}
