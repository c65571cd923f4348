package conn

import (
	"context"
	"strings"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
	rpccp "capnproto.org/go/capnp/v3/std/capnp/rpc"

	"github.com/vatactor/vatactor/interop"
)

// TestFlowWindow: calls on an import keep at most FlowWindow bytes in
// flight; each answer lets the next waiting call go, in order.
func TestFlowWindow(t *testing.T) {
	const text = "0123456789abcdef0123456789abcdef" // a Call of about 140 bytes
	h := newHarnessWith(t, Options{FlowWindow: 300})
	ctx := context.Background()
	boot := h.bootstrapImport(ctx)
	defer boot.Release()

	const calls = 6
	sent := make(chan int, calls)
	releases := make(chan capnp.ReleaseFunc, calls)
	go func() {
		for i := range calls {
			_, release := boot.Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText(text) })
			releases <- release
			sent <- i
		}
	}()
	// Two calls fit in 300 bytes; the third waits in Send.
	callID := func(m rpccp.Message) uint32 {
		c, _ := m.Call()
		return c.QuestionId()
	}
	inFlight := []uint32{callID(h.expect("call q1")), callID(h.expect("call q2"))}
	select {
	case m := <-h.in:
		rm, _ := rpccp.ReadRootMessage(m)
		t.Fatalf("a third call went past the window: %s", DescribeMessage(rm))
	case <-time.After(50 * time.Millisecond):
	}
	if n := len(sent); n != 2 {
		t.Fatalf("%d Sends returned, want 2 (the third waits for room)", n)
	}
	for n := 0; n < calls; n++ {
		q := inFlight[0]
		inFlight = inFlight[1:]
		h.send(func(m rpccp.Message) error {
			r, err := m.NewReturn()
			if err != nil {
				return err
			}
			r.SetAnswerId(q)
			_, err = r.NewResults()
			return err
		})
		if n+2 < calls {
			// The answer makes room for the next call (the Finish of the
			// one answered may come first: its question id is free again).
			m := h.recvNot("finish")
			if d := DescribeMessage(m); !strings.HasPrefix(d, "call q") {
				t.Fatalf("got %q, want the next call let through the window", d)
			}
			inFlight = append(inFlight, callID(m))
		}
	}
	for range calls {
		(<-releases)()
	}
}
