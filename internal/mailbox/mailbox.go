// Package mailbox is a protoactor mailbox for actors that come and go by
// the thousand: one allocation when the actor is spawned and none per
// message, where protoactor's default mailbox allocates two queues at
// spawn, a node per message and a closure per activation.
//
// It keeps the default's semantics for what vatactor uses: system
// messages first, suspension by the supervisor (SuspendMailbox and
// ResumeMailbox), a panic escalated to the supervisor, a yield to other
// goroutines after each dispatcher Throughput messages. It has no mailbox
// middlewares and does not unpack message batches.
package mailbox

import (
	"runtime"
	"sync"

	"github.com/asynkron/protoactor-go/actor"
)

// Producer makes a new Mailbox; pass it to actor.WithMailbox.
func Producer() actor.Mailbox { return Init(&Mailbox{}) }

// Init readies m, a Mailbox that is part of something else (an actor
// that carries its own mailbox costs one allocation less), and returns
// it. m must not have been used.
func Init(m *Mailbox) *Mailbox {
	m.sys.items = m.sys.inline[:0]
	m.user.items = m.user.inline[:0]
	return m
}

// Mailbox is a mutex-guarded pair of queues that reuse their storage.
type Mailbox struct {
	mu        sync.Mutex
	sys, user queue[any]
	running   bool // scheduled on the dispatcher, or processing
	suspended bool

	// mayWait, if set, names system messages that need no activation of
	// their own: posted to an idle mailbox they wait for its next one.
	mayWait func(msg any) bool

	invoker    actor.MessageInvoker
	dispatcher actor.Dispatcher
	pool       *Dispatcher // dispatcher, when it is one of ours: no closure needed
	process    func()      // m.run, made once, for any other dispatcher
}

// queue is a FIFO over a slice whose storage is reused once it drains;
// in a mailbox, the first few messages fit in the queue itself (Init
// points items at inline).
type queue[T any] struct {
	items  []T
	head   int
	inline [2]T
}

func (q *queue[T]) push(m T) { q.items = append(q.items, m) }

func (q *queue[T]) pop() (T, bool) {
	var zero T
	if q.head == len(q.items) {
		return zero, false
	}
	m := q.items[q.head]
	q.items[q.head] = zero
	q.head++
	if q.head == len(q.items) {
		q.items, q.head = q.items[:0], 0
	}
	return m, true
}

func (q *queue[T]) len() int { return len(q.items) - q.head }

// trim gives back storage a burst grew, when the queue is empty.
func (q *queue[T]) trim() {
	if q.head == len(q.items) && cap(q.items) > len(q.inline) {
		q.items, q.head = q.inline[:0], 0
	}
}

// Trim gives back the storage that a burst of messages grew the queues
// to, where they are empty now (the owner's rest, after a burst).
func (m *Mailbox) Trim() {
	m.mu.Lock()
	m.sys.trim()
	m.user.trim()
	m.mu.Unlock()
}

// MayWait sets which system messages need no activation of their own
// (nil: all do): one that f accepts, posted while the mailbox is idle,
// waits for the next message that schedules the mailbox, and is handled
// first then. f runs under the mailbox's lock, on the poster's goroutine;
// it must not block. Call it before the mailbox is used.
func (m *Mailbox) MayWait(f func(msg any) bool) { m.mayWait = f }

// RegisterHandlers implements actor.Mailbox.
func (m *Mailbox) RegisterHandlers(invoker actor.MessageInvoker, dispatcher actor.Dispatcher) {
	m.invoker, m.dispatcher = invoker, dispatcher
	if d, ok := dispatcher.(*Dispatcher); ok {
		m.pool = d
	} else {
		m.process = m.run
	}
}

// schedule hands the mailbox to its dispatcher.
func (m *Mailbox) schedule() {
	if m.pool != nil {
		m.pool.scheduleMailbox(m)
		return
	}
	m.dispatcher.Schedule(m.process)
}

// Start implements actor.Mailbox.
func (m *Mailbox) Start() {}

// UserMessageCount implements actor.Mailbox.
func (m *Mailbox) UserMessageCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.user.len()
}

// PostUserMessage implements actor.Mailbox.
func (m *Mailbox) PostUserMessage(msg any) {
	if m.PostHere(msg) {
		m.schedule()
	}
}

// PostHere queues msg like PostUserMessage, except that when the mailbox
// is idle it schedules nothing and returns true: the caller must then
// call RunHere, on its own goroutine, to process it (and whatever else
// arrives meanwhile). A goroutine that would only wait for the actor
// anyway (a connection's reader) saves a hand-off this way. The caller
// must hold no lock the actor may take.
func (m *Mailbox) PostHere(msg any) (runHere bool) {
	m.mu.Lock()
	m.user.push(msg)
	runHere = !m.running && !m.suspended
	m.running = m.running || runHere
	m.mu.Unlock()
	return runHere
}

// RunHere processes the mailbox on the caller's goroutine after PostHere
// returned true: at most the dispatcher's Throughput messages, then the
// rest, if any, goes to the dispatcher.
func (m *Mailbox) RunHere() {
	for range m.dispatcher.Throughput() {
		msg, system, ok := m.next()
		if !ok {
			return
		}
		m.invoke(msg, system)
	}
	m.schedule() // still marked running: the dispatcher goes on
}

// PostSystemMessage implements actor.Mailbox. The Started message of a
// new actor is handled on the spawner's goroutine, where Spawn posts it:
// the actor is idle then, and vatactor's actors do nothing on Started
// that could block; it saves an activation per actor.
func (m *Mailbox) PostSystemMessage(msg any) {
	m.mu.Lock()
	m.sys.push(msg)
	schedule := !m.running && (m.mayWait == nil || !m.mayWait(msg))
	m.running = m.running || schedule
	m.mu.Unlock()
	if !schedule {
		return
	}
	if _, started := msg.(*actor.Started); started {
		m.RunHere()
		return
	}
	m.schedule()
}

// TakeUser takes the next user message without handing it to the
// actor: an actor that stops (its Stopping) can handle what is still
// queued for it, which protoactor would otherwise drop once it has
// stopped. Only the actor itself may call it, from its Receive.
func (m *Mailbox) TakeUser() (any, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.user.pop()
}

// next takes the next message to handle, system messages first; when
// there is none (or only user messages while suspended) it marks the
// mailbox idle, under the same lock the posters take.
func (m *Mailbox) next() (msg any, system, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if msg, ok := m.sys.pop(); ok {
		return msg, true, true
	}
	if !m.suspended {
		if msg, ok := m.user.pop(); ok {
			return msg, false, true
		}
	}
	m.running = false
	return nil, false, false
}

func (m *Mailbox) run() {
	throughput := m.dispatcher.Throughput()
	for i := 1; ; i++ {
		msg, system, ok := m.next()
		if !ok {
			return
		}
		if i > throughput {
			i = 0
			runtime.Gosched()
		}
		m.invoke(msg, system)
	}
}

// invoke hands one message to the actor; a panic goes to its supervisor,
// which suspends the mailbox until it decides.
func (m *Mailbox) invoke(msg any, system bool) {
	defer func() {
		if r := recover(); r != nil {
			m.invoker.EscalateFailure(r, msg)
		}
	}()
	if !system {
		m.invoker.InvokeUserMessage(msg)
		return
	}
	switch msg.(type) {
	case *actor.SuspendMailbox:
		m.mu.Lock()
		m.suspended = true
		m.mu.Unlock()
	case *actor.ResumeMailbox:
		m.mu.Lock()
		m.suspended = false
		m.mu.Unlock()
	default:
		m.invoker.InvokeSystemMessage(msg)
	}
}
