package conn

import (
	"context"
	"errors"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
	"github.com/asynkron/protoactor-go/actor"

	"github.com/vatactor/vatactor/internal/mailbox"
	"github.com/vatactor/vatactor/interop"
)

// TestQuestionActorsReused: a connection gives its calls the question
// actors it has parked instead of spawning one per call, and stops the
// parked ones once it rests. 200 calls one after the other and 20 batches
// of 16 at once spawn, beyond the actors the rests between them stopped,
// at most 16 (one batch's), where one per call would be 520; how many
// rests fall between the calls depends on the machine's speed, so the
// bound counts them instead of assuming none.
func TestQuestionActorsReused(t *testing.T) {
	sys := actor.NewActorSystem(actor.WithLoggerFactory(quietLogger))
	defer sys.Shutdown()
	boot := capnp.Client(interop.NewEchoServer().Client(interop.PlainServer))
	defer boot.Release()
	ctx := context.Background()
	ours, theirs := tcpPair(t)
	srv := Spawn(sys.Root, sys.Root, NewStreamTransport(theirs, Limits{}), Options{Bootstrap: boot, Peer: "client", Role: "server"})
	cli := Spawn(sys.Root, sys.Root, NewStreamTransport(ours, Limits{}), Options{Peer: "server", Role: "client"})
	defer srv.Close()
	defer cli.Close()
	echo := interop.Echo(cli.Bootstrap(ctx))
	defer echo.Release()

	call := func() (interop.Echo_echo_Results_Future, capnp.ReleaseFunc) {
		return echo.Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText("again") })
	}
	wait := func(f interop.Echo_echo_Results_Future, rel capnp.ReleaseFunc) {
		t.Helper()
		if _, err := f.Struct(); err != nil {
			t.Fatal(err)
		}
		rel()
	}
	wait(call())
	rested := func() int {
		waitFor(t, func() bool { return restingReaders() == 2 })
		time.Sleep(50 * time.Millisecond) // the parked actors' ends
		return liveActors(sys)
	}
	actors0 := rested()
	qa := &cli.questionActors
	spawned0, stopped0 := qa.spawned.Load(), qa.stoppedParked.Load()
	fromSys0 := sys.ProcessRegistry.SequenceID

	const sequential, batches, batch = 200, 20, 16
	for range sequential {
		wait(call())
	}
	for range batches {
		var fs [batch]interop.Echo_echo_Results_Future
		var rels [batch]capnp.ReleaseFunc
		for i := range batch {
			fs[i], rels[i] = call()
		}
		for i := range batch {
			wait(fs[i], rels[i])
		}
	}
	spawned, stopped := qa.spawned.Load()-spawned0, qa.stoppedParked.Load()-stopped0
	t.Logf("%d calls spawned %d question actors (protoactor: %d actors); %d parked ones stopped as the connection rested",
		sequential+batches*batch, spawned, sys.ProcessRegistry.SequenceID-fromSys0, stopped)
	if fromSys := int64(sys.ProcessRegistry.SequenceID - fromSys0); fromSys != spawned {
		t.Errorf("protoactor spawned %d actors; the connection counts %d", fromSys, spawned)
	}
	if spawned-stopped > batch {
		t.Errorf("%d question actors spawned, %d stopped parked: %d more than one batch (%d) live", spawned, stopped, spawned-stopped-batch, batch)
	}
	if n := rested(); n != actors0 {
		t.Errorf("%d actors live once the connection rests again; %d before the calls", n, actors0)
	}
}

// liveActors counts the actors in sys's registry.
func liveActors(sys *actor.ActorSystem) int {
	n := 0
	for _, m := range sys.ProcessRegistry.LocalPIDs.LocalPIDs {
		n += m.Count()
	}
	return n
}

// heldDispatcher runs a mailbox's activations only when asked to.
type heldDispatcher struct{ work chan func() }

func (d heldDispatcher) Schedule(fn func()) { d.work <- fn }
func (d heldDispatcher) Throughput() int    { return 300 }
func (d heldDispatcher) runAll() {
	for {
		select {
		case fn := <-d.work:
			fn()
		default:
			return
		}
	}
}

// TestQuestionActorStopSettlesQueued: a question actor told to stop
// while outcomes wait in its mailbox (Stop overtakes them, and
// protoactor drops what is left once an actor has stopped) settles each
// with the outcome sent, and the question it serves with no outcome sent
// with a disconnected error; the connection binds no question to it
// afterwards.
func TestQuestionActorStopSettlesQueued(t *testing.T) {
	sys := actor.NewActorSystem(actor.WithLoggerFactory(quietLogger))
	defer sys.Shutdown()
	c := &Conn{}
	m := capnp.Method{InterfaceID: 1, MethodID: 2}
	q1, q2, q3 := c.newQuestion(m, callTarget{}), c.newQuestion(m, callTarget{}), c.newQuestion(m, callTarget{})

	d := heldDispatcher{work: make(chan func(), 4)}
	a := &questionActor{}
	a.serving.Store(q1)
	a.pid = sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return a },
		actor.WithMailbox(func() actor.Mailbox { return mailbox.Init(&a.mbox) }), actor.WithDispatcher(d)))
	d.runAll()

	failed := errors.New("the callee failed")
	q1.outcome = settleQuestion{q: q1, err: failed}
	a.mbox.PostUserMessage(&q1.outcome) // q1 is retired; q2 is the next one
	if !a.bind(q2) {
		t.Fatal("a live actor refused a question")
	}
	q2.outcome = settleQuestion{q: q2, err: failed}
	a.mbox.PostUserMessage(&q2.outcome)
	if !a.bind(q3) { // q2 retired too; q3 waits for its Return
		t.Fatal("a live actor refused a question")
	}
	a.mbox.PostSystemMessage(stopQuestion)
	d.runAll()

	for i, q := range []*question{q1, q2} {
		if _, err := q.p.Answer().Struct(); !errors.Is(err, failed) {
			t.Errorf("question %d settled with %v; want the outcome sent (%v)", i+1, err, failed)
		}
	}
	if _, err := q3.p.Answer().Struct(); !errors.Is(err, ErrNotProcessed) {
		t.Errorf("the question served with no outcome sent settled with %v; want a disconnected error", err)
	}
	if a.bind(c.newQuestion(m, callTarget{})) {
		t.Error("a stopped actor took a question")
	}
}
