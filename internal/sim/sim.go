// Package sim is a deterministic simulation of several vats whose
// connections are conn/core state machines wired in memory. A seeded
// scheduler chooses, step by step, which message in flight is delivered
// next, what local code does (calls, pipelined calls, capabilities passed
// through a third vat, releases, finishes, cancellations, promise
// resolutions), which faults happen (shutdowns with epitaphs, EOF and
// reset at any point) and when time jumps past a deadline. After every
// step and at the end, oracles check what must always hold (see
// checkStep and checkEnd); a broken one fails the run with its seed, and
// the same seed replays the same run.
//
// The vats' runner (what package conn's actor does around a core: deliver
// calls to local capabilities, forward calls on capabilities imported
// from another connection, hold calls on local promises) is modelled here
// in the simplest way that keeps the core's contract.
package sim

import (
	"errors"
	"fmt"
	"math/rand/v2"

	"time"

	"github.com/vatactor/vatactor/conn/core"
	"github.com/vatactor/vatactor/supervisor"
)

// Config shapes one run.
type Config struct {
	Seed  uint64
	Vats  int // 2–4
	Steps int // scheduler steps before the wind-down
	// Trace keeps every event in the run's transcript (otherwise the
	// last TraceTail).
	Trace bool
}

// TraceTail is how many events a failure report shows.
const TraceTail = 150

// Result is what a run did.
type Result struct {
	Steps      int
	Calls      int
	Messages   int
	Faults     []string
	Kinds      map[string]int // messages sent, by kind
	Failures   []string       // broken oracles; empty when the run passed
	Transcript []string
}

// Run runs one simulation.
func Run(cfg Config) Result {
	w := newWorld(cfg)
	w.run()
	return w.result()
}

// world is every vat, connection and call of a run.
type world struct {
	cfg   Config
	rng   *rand.Rand
	now   time.Time
	vats  []*vat
	conns []*connection
	steps int

	nextCall   core.CallID
	calls      map[core.CallID]*callRec
	received   map[int]bool // call uids an object executed
	nextUID    int
	nextClient int
	messages   int
	kinds      map[string]int
	faults     []string

	failures []string
	trace    []string
	winding  bool          // the wind-down: no new work, no faults
	resets   int           // RSTs: a message or FIN that found the other end's socket closed
	quiesced bool          // the wind-down's check of empty tables has run
	scratch  *core.Scratch // the storage the cores' turns share (end.lend)
}

type connection struct {
	id    int
	ends  [2]*end
	fault string // the first fault applied to it
}

// end is one side of a connection: its core and the bytes it sends.
type end struct {
	w     *world
	conn  *connection
	side  int
	vat   *vat
	core  *core.Core
	name  string
	other *end

	out          []core.Message // in flight to other, in order
	finQueued    bool           // our FIN follows out
	finDelivered bool           // other has read our FIN
	reset        bool           // the connection was reset: nothing more moves
	lingering    bool           // CloseSocket carried out; waiting for other's FIN
	lingerUntil  time.Time
	closed       bool                 // SocketClosed fed
	peerEnded    bool                 // we received the peer's Abort or EOF
	shutdownBy   []supervisor.Epitaph // every epitaph a Shutdown was given
	stoppedBy    bool
	sentEpitaphs []supervisor.Epitaph
	sentAborts   int
	timers       map[core.Deadline]core.Arm
	stopping     []core.Child
	inbox        []core.Input // the actor's mailbox
	down         *core.Report
	downs        int
	bootstrap    core.CallID
}

// vat is one vat: its objects, promises and proxies, and what its code
// holds.
type vat struct {
	w       *world
	id      int
	objs    map[core.Ref]*obj
	nextRef core.Ref
	ends    []*end
	clients []*client
	running []*execution // calls objects are executing
	appCall []*appCall   // calls local code made and has not finished
	boot    core.Ref
	// pipelineLater: calls on whose answer local code may pipeline
	pipelineLater []*appCall
}

type objKind uint8

const (
	object objKind = iota
	promise
	proxy
)

// obj is a local capability: an object that executes calls, a promise
// that holds them until it resolves, or a proxy for a capability of
// another connection.
type obj struct {
	ref     core.Ref
	kind    objKind
	lastSeq map[int]int // object: per client key, the last seq executed (E-order)
	// promise:
	resolved bool
	to       vcap
	held     []*invocation
	// proxy:
	end *end
	cap core.Cap
}

// vcap is a capability as a vat's code holds it: a local one, or one of
// a connection's.
type vcap struct {
	ref core.Ref // local (end == nil)
	end *end
	cap core.Cap
}

func (c vcap) String() string {
	if c.end == nil {
		return fmt.Sprintf("#%d", c.ref)
	}
	return fmt.Sprintf("%s:%v", c.end.name, c.cap)
}

// client is a reference local code holds and calls, in order (seq).
type client struct {
	key  int
	seq  int
	cap  vcap
	call *appCall // a pipelined client: valid until that call is finished
}

// content is a payload's content: the results' or params' pointer fields
// (capability index, or -1) and the call's tag.
type content struct {
	fields []int
	tag    tag
}

// tag identifies a call for the oracles: who made it on which client, in
// which order, and the call itself.
type tag struct {
	vat, client, seq, uid int
}

func (c *content) Locate(tr []uint16) (int, bool, error) {
	switch {
	case len(tr) == 0:
		return 0, false, errors.New("the root is a struct")
	case len(tr) > 1:
		return 0, false, errors.New("the field is not a struct")
	case int(tr[0]) >= len(c.fields) || c.fields[tr[0]] < 0:
		return 0, false, nil
	}
	return c.fields[tr[0]], true, nil
}

// invocation is a call on its way through a vat: content, params (as the
// vat holds them; owned: their import references are the invocation's)
// and what to do with its outcome.
type invocation struct {
	content *content
	method  core.Method
	params  []vcap
	owned   bool
	done    func(results []vcap, resultContent core.Content, err error)
}

// execution is a call an object is executing.
type execution struct {
	obj *obj
	inv *invocation
}

// appCall is a call local code made.
type appCall struct {
	id       core.CallID
	end      *end // the connection it went to (nil: local)
	question uint32
	hasQ     bool
	settled  bool
	finished bool
}

// callRec is what a CallID given to a core stands for.
type callRec struct {
	end      *end
	inv      *invocation
	app      *appCall
	settles  int
	redirect bool
	uid      int
}

var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

const lingerTimeout = 2 * time.Second

var (
	methodCall = core.Method{InterfaceID: 0x5e, MethodID: 0}
	okEpitaph  = supervisor.Epitaph{Code: supervisor.OK, Message: "done"}
)

func newWorld(cfg Config) *world {
	if cfg.Vats < 2 {
		cfg.Vats = 2
	}
	if cfg.Steps <= 0 {
		cfg.Steps = 300
	}
	w := &world{cfg: cfg, rng: rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)), now: epoch,
		calls: map[core.CallID]*callRec{}, received: map[int]bool{}, kinds: map[string]int{}}
	for i := range cfg.Vats {
		v := &vat{w: w, id: i, objs: map[core.Ref]*obj{}}
		v.boot = v.newObj(object).ref
		w.vats = append(w.vats, v)
	}
	// A line of vats, and a chord when there are more than two: capabilities
	// pass through a third vat.
	for i := 0; i+1 < len(w.vats); i++ {
		w.connect(w.vats[i], w.vats[i+1])
	}
	if len(w.vats) > 2 {
		w.connect(w.vats[0], w.vats[len(w.vats)-1])
	}
	return w
}

func (v *vat) newObj(k objKind) *obj {
	v.nextRef++
	o := &obj{ref: v.nextRef, kind: k, lastSeq: map[int]int{}}
	v.objs[o.ref] = o
	return o
}

func (w *world) connect(a, b *vat) {
	c := &connection{id: len(w.conns)}
	for side, v := range []*vat{a, b} {
		e := &end{w: w, conn: c, side: side, vat: v, timers: map[core.Deadline]core.Arm{}}
		e.name = fmt.Sprintf("v%d/c%d", v.id, c.id)
		cfg := core.Config{Bootstrap: core.Local(v.boot), DrainTimeout: time.Second, StopTimeout: 100 * time.Millisecond}
		if w.rng.IntN(4) == 0 {
			cfg.IdleTimeout = 3 * time.Second
		}
		e.core = core.New(cfg, w.now)
		e.core.SetPeerOurs()
		c.ends[side] = e
		v.ends = append(v.ends, e)
	}
	c.ends[0].other, c.ends[1].other = c.ends[1], c.ends[0]
	w.conns = append(w.conns, c)
	for _, e := range c.ends {
		e.lend()
		e.apply(e.core.Start())
		e.rest()
	}
	for _, e := range c.ends {
		id := w.newCallID(&callRec{end: e})
		e.bootstrap = id
		e.post(&core.LocalBootstrap{Call: id})
	}
}

func (w *world) newCallID(r *callRec) core.CallID {
	w.nextCall++
	w.calls[w.nextCall] = r
	return w.nextCall
}

func (w *world) logf(format string, args ...any) {
	line := fmt.Sprintf("%5d %s", w.steps, fmt.Sprintf(format, args...))
	w.trace = append(w.trace, line)
	if !w.cfg.Trace && len(w.trace) > 4*TraceTail {
		w.trace = append(w.trace[:0], w.trace[len(w.trace)-TraceTail:]...)
	}
}

func (w *world) failf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	w.logf("ORACLE BROKEN: %s", msg)
	w.failures = append(w.failures, msg)
}

// post puts an input in the end's mailbox; the scheduler feeds it to the
// core in its turn, as the connection actor would.
func (e *end) post(in core.Input) { e.inbox = append(e.inbox, in) }

// runOne feeds the mailbox's first input to the core and carries its
// outputs out.
func (e *end) runOne() {
	in := e.inbox[0]
	e.inbox = e.inbox[1:]
	e.w.logf("%s > %s", e.name, core.Describe(in))
	switch m := in.(type) {
	case *core.Received:
		if _, ok := m.Msg.(*core.Abort); ok {
			e.peerEnded = true // from this input on, no Abort may answer it
		}
	case *core.ReadEnded:
		e.peerEnded = e.peerEnded || m.EOF
	}
	e.lend()
	e.apply(e.core.Step(e.w.now, in))
	e.rest()
}

// lend gives the core the world's one core.Scratch for its turn, and rest
// takes it back: every core works in the same storage, turn by turn, as a
// process's connections share conn's pool, so nothing of one turn may
// show in another core's.
func (e *end) lend() {
	if e.core.AtRest() && e.w.scratch != nil {
		e.core.Lend(e.w.scratch)
		e.w.scratch = nil
	}
}

func (e *end) rest() {
	if sc := e.core.Rest(); sc != nil {
		e.w.scratch = sc
	}
}

func (e *end) apply(out []core.Output) {
	for _, o := range out {
		e.w.logf("%s < %s", e.name, core.Describe(o))
		e.carryOut(o)
	}
}
