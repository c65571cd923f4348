package conn

import (
	"context"
	"errors"
	"testing"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/exc"

	"github.com/vatactor/vatactor/internal/interop"
)

// TestHeldCapDeliversInOrder: calls made on a held capability, and calls
// pipelined on them, wait until it resolves, then go in the order they
// were made; those whose target turns out missing or lacking the method
// fail with an exception (go-capnp's AnswerQueue panicked there).
func TestHeldCapDeliversInOrder(t *testing.T) {
	ctx := context.Background()
	rec := &recordingEcho{}
	c, h, r := newHeldCap("test")
	echo := interop.Echo(c)
	defer echo.Release()

	first, rel1 := echo.Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText("1") })
	defer rel1()
	// Self is not implemented by recordingEcho: a call pipelined on it
	// fails, as does one on a field of a result with no capability.
	self, rel2 := echo.Self(ctx, func(p interop.Echo_self_Params) error { return p.SetTag("t") })
	defer rel2()
	onSelf, rel3 := self.Echo().Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText("never") })
	defer rel3()
	unknown, rel6 := capnp.Client(echo).SendCall(ctx, capnp.Send{
		Method: capnp.Method{InterfaceID: interop.Echo_TypeID, MethodID: 99}})
	defer rel6()
	onUnknown, rel7 := capnp.Client(unknown.Field(0, nil).Client()).SendCall(ctx, capnp.Send{
		Method: capnp.Method{InterfaceID: interop.Echo_TypeID, MethodID: 0}})
	defer rel7()
	second, rel4 := echo.Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText("2") })
	defer rel4()

	select {
	case <-first.Done():
		t.Fatal("a call on a held capability was delivered before it resolved")
	default:
	}
	h.resolve(r, capnp.Client(interop.Echo_ServerToClient(rec)), nil)

	for i, f := range []interop.Echo_echo_Results_Future{first, second} {
		if _, err := f.Struct(); err != nil {
			t.Fatalf("call %d: %v", i+1, err)
		}
	}
	if _, err := onSelf.Struct(); err == nil {
		t.Fatal("a call pipelined on a null field succeeded")
	}
	if _, err := unknown.Struct(); exc.TypeOf(err) != exc.Unimplemented {
		t.Fatalf("unknown method: %v", err)
	}
	if _, err := onUnknown.Struct(); err == nil {
		t.Fatal("a call pipelined on a failed call succeeded")
	}
	if got := rec.record(); len(got) != 2 || got[0] != "1" || got[1] != "2" {
		t.Fatalf("delivered %v, want [1 2]", got)
	}
	// After resolution, calls go straight through.
	third, rel5 := echo.Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText("3") })
	defer rel5()
	if _, err := third.Struct(); err != nil {
		t.Fatal(err)
	}
	if got := rec.record(); len(got) != 3 || got[2] != "3" {
		t.Fatalf("delivered %v, want [1 2 3]", got)
	}
}

// TestHeldCapFails: a held capability that resolves to an error fails
// the calls it held and those pipelined on them; one released before it
// resolves fails them too.
func TestHeldCapFails(t *testing.T) {
	ctx := context.Background()
	boom := exc.New(exc.Disconnected, "test", "boom")
	c, h, r := newHeldCap("test")
	echo := interop.Echo(c)
	call, rel := echo.Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText("x") })
	pipelined, rel2 := echo.Self(ctx, nil)
	onIt, rel3 := pipelined.Echo().Echo(ctx, nil)
	h.resolve(r, capnp.Client{}, boom)
	for _, f := range []*capnp.Future{call.Future, onIt.Future} {
		if _, err := f.Struct(); !errors.Is(err, boom) && exc.TypeOf(err) != exc.Disconnected {
			t.Fatalf("got %v, want %v", err, boom)
		}
	}
	rel()
	rel2()
	rel3()
	echo.Release()

	c2, _, _ := newHeldCap("released")
	echo2 := interop.Echo(c2)
	held, rel4 := echo2.Echo(ctx, nil)
	defer rel4()
	echo2.Release() // the last reference: its hook shuts down
	if _, err := held.Struct(); err == nil {
		t.Fatal("a call on a held capability released before it resolved succeeded")
	}
}
