package mailbox_test

import (
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"go.uber.org/goleak"

	"github.com/vatactor/vatactor/internal/mailbox"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// recorder keeps what it was given, in order.
type recorder struct {
	mu        sync.Mutex
	user, sys []any
	escalated []any
}

func (r *recorder) InvokeSystemMessage(m any) { r.mu.Lock(); r.sys = append(r.sys, m); r.mu.Unlock() }
func (r *recorder) InvokeUserMessage(m any) {
	if m == "panic" {
		panic("boom")
	}
	r.mu.Lock()
	r.user = append(r.user, m)
	r.mu.Unlock()
}
func (r *recorder) EscalateFailure(reason, m any) {
	r.mu.Lock()
	r.escalated = append(r.escalated, m)
	r.mu.Unlock()
}

// manual runs scheduled work only when asked to.
type manual struct{ work []func() }

func (d *manual) Schedule(fn func()) { d.work = append(d.work, fn) }
func (d *manual) Throughput() int    { return 300 }
func (d *manual) runAll() {
	for len(d.work) > 0 {
		fn := d.work[0]
		d.work = d.work[1:]
		fn()
	}
}

func TestSystemFirstAndOneActivation(t *testing.T) {
	r, d := &recorder{}, &manual{}
	m := mailbox.Producer()
	m.RegisterHandlers(r, d)
	m.PostUserMessage(1)
	m.PostUserMessage(2)
	m.PostSystemMessage("started")
	if len(d.work) != 1 {
		t.Fatalf("%d activations scheduled for three messages, want 1", len(d.work))
	}
	if n := m.UserMessageCount(); n != 2 {
		t.Fatalf("UserMessageCount = %d, want 2", n)
	}
	d.runAll()
	if len(r.sys) != 1 || len(r.user) != 2 || r.user[0] != 1 || r.user[1] != 2 {
		t.Fatalf("sys %v user %v", r.sys, r.user)
	}
	m.PostUserMessage(3) // idle again: a new activation
	if len(d.work) != 1 {
		t.Fatalf("an idle mailbox did not schedule its next message")
	}
	d.runAll()
}

func TestSuspendResume(t *testing.T) {
	r, d := &recorder{}, &manual{}
	m := mailbox.Producer()
	m.RegisterHandlers(r, d)
	m.PostSystemMessage(&actor.SuspendMailbox{})
	d.runAll()
	m.PostUserMessage("held")
	if len(d.work) != 0 {
		t.Fatal("a suspended mailbox scheduled a user message")
	}
	m.PostSystemMessage(&actor.ResumeMailbox{})
	d.runAll()
	if len(r.user) != 1 || r.user[0] != "held" {
		t.Fatalf("after resume: user %v", r.user)
	}
	if len(r.sys) != 0 {
		t.Fatalf("suspend/resume reached the actor: %v", r.sys)
	}
}

func TestPanicEscalates(t *testing.T) {
	r, d := &recorder{}, &manual{}
	m := mailbox.Producer()
	m.RegisterHandlers(r, d)
	m.PostUserMessage("panic")
	m.PostUserMessage("after")
	d.runAll()
	if len(r.escalated) != 1 || r.escalated[0] != "panic" {
		t.Fatalf("escalated %v", r.escalated)
	}
	if len(r.user) != 1 || r.user[0] != "after" {
		t.Fatalf("the message after the panic: %v", r.user)
	}
}

// counter checks that each sender's messages arrive in order.
type counter struct {
	last  map[int]int
	total atomic.Int64
	done  chan struct{}
	want  int64
}

type seq struct{ sender, n int }

func (c *counter) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case seq:
		if m.n != c.last[m.sender]+1 {
			panic("out of order")
		}
		c.last[m.sender] = m.n
		if c.total.Add(1) == c.want {
			close(c.done)
		}
	case string:
		panic(m)
	}
}

func TestActorSystem(t *testing.T) {
	sys := actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger {
		return slog.New(slog.DiscardHandler)
	}))
	defer sys.Shutdown()
	const senders, each = 4, 5000
	c := &counter{last: map[int]int{}, done: make(chan struct{}), want: senders * each}
	pid := sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return c }, actor.WithMailbox(mailbox.Producer)))
	sys.Root.Send(pid, "a panic: restarted, nothing lost after it")
	var wg sync.WaitGroup
	for s := range senders {
		wg.Go(func() {
			for n := 1; n <= each; n++ {
				sys.Root.Send(pid, seq{s, n})
			}
		})
	}
	wg.Wait()
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("received %d of %d", c.total.Load(), c.want)
	}
	if err := sys.Root.StopFuture(pid).Wait(); err != nil {
		t.Fatal(err)
	}
}

// TestRunHere: a message posted to an idle mailbox with PostHere is
// processed by the caller; one posted while it runs is queued; past the
// throughput the dispatcher takes over.
func TestRunHere(t *testing.T) {
	r, d := &recorder{}, &manual{}
	m := mailbox.Producer().(*mailbox.Mailbox)
	m.RegisterHandlers(r, d)
	if !m.PostHere(1) {
		t.Fatal("idle mailbox: the caller should run it")
	}
	if m.PostHere(2) {
		t.Fatal("running mailbox: the caller must not run it too")
	}
	m.RunHere()
	if len(r.user) != 2 || len(d.work) != 0 {
		t.Fatalf("ran %v here, %d activations scheduled", r.user, len(d.work))
	}
	for i := range 400 { // more than the throughput (300)
		m.PostUserMessage(i) // no dispatcher run yet: queued behind the first
		if i == 0 {
			d.work = nil // drop the activation; RunHere below stands in for it
		}
	}
	m.RunHere()
	if len(r.user) != 2+300 || len(d.work) != 1 {
		t.Fatalf("ran %d here, %d activations scheduled; want 300 then the dispatcher", len(r.user)-2, len(d.work))
	}
	d.runAll()
	if len(r.user) != 402 {
		t.Fatalf("after the dispatcher: %d", len(r.user))
	}
}

// TestStartedHere: an idle actor's Started is handled on the spawner's
// goroutine; other system messages are scheduled.
func TestStartedHere(t *testing.T) {
	r, d := &recorder{}, &manual{}
	m := mailbox.Producer()
	m.RegisterHandlers(r, d)
	m.PostSystemMessage(&actor.Started{})
	if len(r.sys) != 1 || len(d.work) != 0 {
		t.Fatalf("Started: handled %v, %d activations scheduled", r.sys, len(d.work))
	}
	m.PostSystemMessage(&actor.Stop{})
	if len(r.sys) != 1 || len(d.work) != 1 {
		t.Fatalf("Stop: handled %v, %d activations scheduled", r.sys, len(d.work))
	}
	d.runAll()
}

// A system message that MayWait accepts, posted to an idle mailbox,
// schedules nothing; it is handled first at the next activation. Others
// still schedule at once.
func TestMayWait(t *testing.T) {
	r, d := &recorder{}, &manual{}
	m := mailbox.Producer().(*mailbox.Mailbox)
	m.MayWait(func(msg any) bool { return msg == "lazy" })
	m.RegisterHandlers(r, d)
	m.PostSystemMessage("lazy")
	m.PostSystemMessage("lazy")
	if len(d.work) != 0 {
		t.Fatalf("a message that may wait scheduled %d activations", len(d.work))
	}
	m.PostUserMessage(1)
	if len(d.work) != 1 {
		t.Fatalf("a user message scheduled %d activations, want 1", len(d.work))
	}
	d.runAll()
	if len(r.sys) != 2 || len(r.user) != 1 {
		t.Fatalf("handled system %v, user %v", r.sys, r.user)
	}
	m.PostSystemMessage("urgent")
	if len(d.work) != 1 {
		t.Fatalf("a message that may not wait scheduled %d activations, want 1", len(d.work))
	}
	d.runAll()
	if len(r.sys) != 3 || r.sys[2] != "urgent" {
		t.Fatalf("handled system %v", r.sys)
	}
}

// taker is an actor that, on the system message "stop", takes what is
// still queued for it.
type taker struct {
	recorder
	m     *mailbox.Mailbox
	taken []any
}

func (t *taker) InvokeSystemMessage(msg any) {
	t.recorder.InvokeSystemMessage(msg)
	if msg != "stop" {
		return
	}
	for {
		u, ok := t.m.TakeUser()
		if !ok {
			return
		}
		t.taken = append(t.taken, u)
	}
}

func TestTakeUser(t *testing.T) {
	d := &manual{}
	m := mailbox.Producer().(*mailbox.Mailbox)
	tk := &taker{m: m}
	m.RegisterHandlers(tk, d)
	m.PostUserMessage(1)
	m.PostUserMessage(2)
	m.PostSystemMessage("stop") // runs ahead of the user messages
	m.PostUserMessage(3)
	d.runAll()
	if len(tk.user) != 0 || len(tk.taken) != 3 || tk.taken[0] != 1 || tk.taken[2] != 3 {
		t.Fatalf("handed %v, taken %v; want none handed, 1 2 3 taken", tk.user, tk.taken)
	}
	if _, ok := m.TakeUser(); ok {
		t.Fatal("a message left after taking them all")
	}
}
