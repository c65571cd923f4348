package core

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/vatactor/vatactor/internal/idtable"
	"github.com/vatactor/vatactor/internal/peakmap"
	"github.com/vatactor/vatactor/internal/tinymap"
	"github.com/vatactor/vatactor/supervisor"
)

// Config is what a Core is told at its start. The zero value is usable;
// every bound has a default (the Default… constants).
type Config struct {
	// Bootstrap is the capability served to the peer's Bootstrap
	// (CapNone: Bootstrap is answered with an exception).
	Bootstrap Cap
	// MaxAnswers bounds the peer's calls running (arrived, not yet
	// returned); one above it is answered "overloaded".
	MaxAnswers int
	// MaxExports bounds the capabilities exported to the peer; a message
	// that would export more fails (a Return becomes an exception, a
	// local call fails).
	MaxExports int
	// Limits bound what the peer can make the connection hold.
	Limits Limits

	// DrainTimeout bounds the drain phase of a Shutdown: calls still in
	// flight when it expires are cut short.
	DrainTimeout time.Duration
	// FinishWait bounds how long a drain with no call left in flight
	// still waits for the peer's Finish of answers that have returned
	// without a capability (within DrainTimeout; an answer with
	// capabilities is the peer's to keep while it uses them), and for
	// its Return of questions we finished before they returned (a
	// cancel: the peer returns them all the same). A peer finishes as
	// soon as it has our Return, so the wait is about one round trip;
	// after it the peer has nothing left to send when our FIN goes,
	// which matters where a proxy turns a half-close into a close and
	// would reset a late Finish or Return. Past it
	// the drain ends anyway, not cut short: nothing is lost.
	FinishWait time.Duration
	// StopTimeout bounds the wait for each question or export actor to
	// stop; one that takes longer is counted in Report.StuckActors.
	StopTimeout time.Duration
	// IdleTimeout, when positive, shuts the connection down gracefully
	// (epitaph OK, "idle timeout") once its tables have stayed empty for
	// that long.
	IdleTimeout time.Duration
	// KeepAlive, when its Interval is positive, probes a silent peer.
	KeepAlive KeepAlive
}

// KeepAlive is how a connection finds out that its peer is gone when no
// FIN or reset says so (a host that vanished, a proxy that keeps the
// socket open but forwards nothing), idle or busy: after Interval with
// nothing received it sends a probe, a Bootstrap finished at once, which
// every Cap'n Proto peer answers and none treats as an error; when nothing
// at all arrives within Timeout of the probe, the connection ends with a
// TransportError wrapping ErrPeerUnresponsive, and calls in flight fail
// with ErrOutcomeUnknown. The zero value probes nothing.
type KeepAlive struct {
	Interval time.Duration // silence before a probe
	Timeout  time.Duration // wait for anything after a probe (default: Interval)
}

// Limits bound what a peer can make one connection hold.
type Limits struct {
	// MaxHeldAnswers bounds the peer's calls and bootstraps held (running,
	// or returned and waiting for their Finish); past it the connection
	// ends with a ProtocolError wrapping a *BudgetError.
	MaxHeldAnswers int
	// MaxCallBytes bounds the bytes of the peer's calls running; a call
	// past it is answered "overloaded".
	MaxCallBytes int64
	// MaxAnswerBytes bounds the bytes of Returns held for the peer until
	// its Finish; past it the connection ends.
	MaxAnswerBytes int64
	// MaxCapsPerMessage bounds the capability descriptors of one message;
	// past it the connection ends before any is imported.
	MaxCapsPerMessage int
	// MaxImports bounds the capabilities imported from the peer; past it
	// the connection ends.
	MaxImports int
	// MaxUnimplementedEcho bounds the size of a message we echo back in
	// an Unimplemented; a larger one ends the connection.
	MaxUnimplementedEcho int
	// MaxReasonLength bounds the text kept of a peer's exception or Abort
	// reason; the rest is cut.
	MaxReasonLength int
}

// Defaults of Config and Limits.
const (
	DefaultMaxAnswers           = 8192
	DefaultMaxExports           = 65536
	DefaultMaxHeldAnswers       = 32768
	DefaultMaxCallBytes         = 64 << 20
	DefaultMaxAnswerBytes       = 64 << 20
	DefaultMaxCapsPerMessage    = 4096
	DefaultMaxImports           = 65536
	DefaultMaxUnimplementedEcho = 64 << 10
	DefaultMaxReasonLength      = 1024
	DefaultDrainTimeout         = 5 * time.Second
	DefaultFinishWait           = 250 * time.Millisecond
	DefaultStopTimeout          = 1 * time.Second
)

func (c Config) withDefaults() Config {
	orDefault(&c.MaxAnswers, DefaultMaxAnswers)
	orDefault(&c.MaxExports, DefaultMaxExports)
	orDefault(&c.DrainTimeout, DefaultDrainTimeout)
	orDefault(&c.FinishWait, DefaultFinishWait)
	orDefault(&c.StopTimeout, DefaultStopTimeout)
	l := &c.Limits
	orDefault(&l.MaxHeldAnswers, DefaultMaxHeldAnswers)
	orDefault(&l.MaxCallBytes, DefaultMaxCallBytes)
	orDefault(&l.MaxAnswerBytes, DefaultMaxAnswerBytes)
	orDefault(&l.MaxCapsPerMessage, DefaultMaxCapsPerMessage)
	orDefault(&l.MaxImports, DefaultMaxImports)
	orDefault(&l.MaxUnimplementedEcho, DefaultMaxUnimplementedEcho)
	orDefault(&l.MaxReasonLength, DefaultMaxReasonLength)
	return c
}

// orDefault sets *v to def when it is zero or negative (unset).
func orDefault[T ~int | ~int64](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}

// Ref names a local capability, as the runner chooses: the same
// capability must have the same Ref (it is exported under one id), and 0
// is no capability.
type Ref uint64

// CallID names one local call (or bootstrap) the runner made, for its
// settlement.
type CallID uint64

// CapKind says what a Cap is.
type CapKind uint8

const (
	// CapNone: a null capability.
	CapNone CapKind = iota
	// CapLocal: a capability of ours (Ref), maybe a promise.
	CapLocal
	// CapImport: a capability of the peer, imported on this connection
	// (ID: the import id).
	CapImport
	// CapQuestion: the capability at Transform in the answer to one of
	// our questions on this connection, named by the local call it
	// answers (Call), whether or not the answer is in (promise
	// pipelining). It is valid until that call's LocalFinish.
	CapQuestion
	// CapAnswer: the capability at Transform in the results of one of
	// the peer's calls on this connection (ID: its question id; Gen: which
	// call of that id), which may still be running. The core keeps the
	// results while such a Cap is held (LocalRelease gives it back).
	CapAnswer
	// CapBroken: a capability that fails every call with Err.
	CapBroken
)

var capKindNames = [...]string{"none", "local", "import", "question", "answer", "broken"}

func (k CapKind) String() string { return capKindNames[k] }

// Cap is a capability on our side of the wire: what local code holds, as
// the runner tells it to the core and the core tells it back.
type Cap struct {
	Kind      CapKind
	Ref       Ref  // CapLocal
	Promise   bool // CapLocal: it may resolve later (LocalResolved says to what); CapImport: the peer sent it as a promise
	ID        uint32
	Call      CallID   // CapQuestion
	Gen       uint64   // CapAnswer
	Transform []uint16 // CapQuestion, CapAnswer
	Err       error    // CapBroken
}

func (c Cap) String() string {
	switch c.Kind {
	case CapLocal:
		if c.Promise {
			return fmt.Sprintf("local promise #%d", c.Ref)
		}
		return fmt.Sprintf("local #%d", c.Ref)
	case CapImport:
		return fmt.Sprintf("import %d", c.ID)
	case CapQuestion:
		return fmt.Sprintf("question of c%d%s", c.Call, transformString(c.Transform))
	case CapAnswer:
		return fmt.Sprintf("answer %d%s", c.ID, transformString(c.Transform))
	case CapBroken:
		return fmt.Sprintf("broken (%v)", c.Err)
	}
	return "none"
}

// Local returns the Cap of a local capability.
func Local(r Ref) Cap { return Cap{Kind: CapLocal, Ref: r} }

// LocalPromise returns the Cap of a local promise.
func LocalPromise(r Ref) Cap { return Cap{Kind: CapLocal, Ref: r, Promise: true} }

// An Input is one thing that happened to the connection.
type Input interface{ input() }

// Inputs.
type (
	// Received: a message arrived from the peer.
	Received struct{ Msg Message }
	// LocalCall: local code calls Target (an import, a question's answer,
	// an answer's results) with Params, whose CapTable holds the
	// capabilities (borrowed: the core takes references of its own, and
	// the runner keeps the params until the call settles or is
	// redirected). Its outcome comes back as one Settle, or as a Redirect
	// when the target turns out to be local.
	LocalCall struct {
		Call   CallID
		Target Cap
		Method Method
		Params Payload
	}
	// LocalBootstrap: local code asks for the peer's bootstrap capability;
	// the answer is CapQuestion{Call: Call} with no transform, and its
	// Settle brings the results.
	LocalBootstrap struct{ Call CallID }
	// LocalFinish: local code is done with the answer of a call (Finish
	// is sent; a call not yet answered is cancelled).
	LocalFinish struct{ Call CallID }
	// LocalCancel: the caller's context ended before the answer came:
	// Finish is sent and the call settles with Err.
	LocalCancel struct {
		Call CallID
		Err  error
	}
	// LocalRelease: local code drops one reference to a Cap it was given
	// (imports are counted; other kinds are ignored).
	LocalRelease struct{ Cap Cap }
	// LocalRetain: local code takes one more reference to a Cap.
	LocalRetain struct{ Cap Cap }
	// LocalResolved: a local promise (a Ref exported as a promise) has
	// become To (borrowed). The runner reports it after it has made, on
	// To, the calls the promise was holding.
	LocalResolved struct {
		Ref Ref
		To  Cap
	}
	// Returned: a call delivered with Deliver has returned: Results (its
	// CapTable holds the capabilities, borrowed) or Err.
	Returned struct {
		Answer  uint32
		Results *Payload
		Err     error
	}
	// Shutdown: close the connection with Epitaph, draining first (Drain)
	// or not.
	Shutdown struct {
		Epitaph supervisor.Epitaph
		Drain   bool
	}
	// Stopped: the connection's actor is being stopped from outside; the
	// same end as a Shutdown without drain, epitaph CANCELED.
	Stopped struct{}
	// Hurry: the Shutdown's context ended: skip every remaining wait.
	Hurry struct{}
	// DeadlineFired: a deadline armed by an Arm output has passed.
	DeadlineFired struct {
		Deadline Deadline
		Gen      uint64
	}
	// ChildStopped: a child actor asked for by SpawnChild has stopped.
	ChildStopped struct{ Child Child }
	// ReadEnded: reading from the peer ended: at its EOF (EOF), because
	// its bytes were not a valid frame (Malformed), or because the socket
	// failed (Err).
	ReadEnded struct {
		EOF       bool
		Malformed bool
		Err       error
	}
	// WriteFailed: writing to the peer failed (or made no progress).
	WriteFailed struct{ Err error }
	// SocketClosed: the runner has carried out CloseSocket; Steps report
	// closeWrite, linger and closeSocket.
	SocketClosed struct{ Steps []PhaseReport }
)

func (*Received) input()       {}
func (*LocalCall) input()      {}
func (*LocalBootstrap) input() {}
func (*LocalFinish) input()    {}
func (*LocalCancel) input()    {}
func (*LocalRelease) input()   {}
func (*LocalRetain) input()    {}
func (*LocalResolved) input()  {}
func (*Returned) input()       {}
func (*Shutdown) input()       {}
func (*Stopped) input()        {}
func (*Hurry) input()          {}
func (*DeadlineFired) input()  {}
func (*ChildStopped) input()   {}
func (*ReadEnded) input()      {}
func (*WriteFailed) input()    {}
func (*SocketClosed) input()   {}

// An Output is one thing the connection does; the runner carries the
// outputs of a Step out in order.
type Output interface{ output() }

// Outputs.
type (
	// Send: write Msg to the peer.
	Send struct{ Msg Message }
	// Deliver: deliver the peer's call Answer to the local capability To;
	// its outcome comes back as Returned. Params.CapTable's references are
	// the runner's.
	Deliver struct {
		Answer uint32
		To     Cap
		Method Method
		Params Payload
	}
	// CancelAnswer: the peer no longer wants the answer of a call
	// delivered with Deliver (its Finish came first, or the connection is
	// ending); the call's context should be cancelled. Its Returned is
	// still expected, and dropped.
	CancelAnswer struct{ Answer uint32 }
	// AnswerDone: the peer's call Answer is gone from the table (its
	// Return sent and its Finish in, or the connection ending): what the
	// runner keeps for it (the Return's message) may go.
	AnswerDone struct{ Answer uint32 }
	// Redirect: the local call Call turned out to target the local
	// capability To (an embargo lifted, a promise resolved to one of
	// ours): the runner delivers it there and settles it itself; the core
	// is done with it.
	Redirect struct {
		Call   CallID
		To     Cap
		Method Method
		Params Payload
	}
	// Settle: the local call Call has its outcome: Results (its CapTable's
	// references are the runner's) or Err. Exactly one per call that is
	// not redirected.
	Settle struct {
		Call    CallID
		Results *Payload
		Err     error
	}
	// ImportResolved: the peer's promise import ID has become To; calls on
	// it may now go straight to To.
	ImportResolved struct {
		ID uint32
		To Cap
	}
	// SpawnChild: start the child actor of a question or export.
	SpawnChild struct{ Child Child }
	// StopChild: stop it; ChildStopped reports it gone.
	StopChild struct{ Child Child }
	// Arm: feed DeadlineFired{Deadline, Gen} at At (a newer Arm of the
	// same Deadline replaces it; an old Gen fired late is ignored).
	Arm struct {
		Deadline Deadline
		At       time.Time
		Gen      uint64
	}
	// Closing: the connection's end has begun: admit nothing more from
	// local code (its calls fail with Err).
	Closing struct{ Err error }
	// CloseSocket: everything is queued (the epitaph last): flush, shut
	// the write side down, linger for the peer's EOF, close the socket,
	// then report SocketClosed. Hard skips the flush and the linger.
	CloseSocket struct{ Hard bool }
	// Emit: a lifecycle event for the parent and Options.OnEvent.
	Emit struct{ Event Event }
	// Log: a log record.
	Log struct {
		Level slog.Level
		Msg   string
		Args  []any
	}
)

func (*Send) output()           {}
func (*Deliver) output()        {}
func (*CancelAnswer) output()   {}
func (*AnswerDone) output()     {}
func (*Redirect) output()       {}
func (*Settle) output()         {}
func (*ImportResolved) output() {}
func (*SpawnChild) output()     {}
func (*StopChild) output()      {}
func (*Arm) output()            {}
func (*Closing) output()        {}
func (*CloseSocket) output()    {}
func (*Emit) output()           {}
func (*Log) output()            {}

// Deadline names one of the connection's timers.
type Deadline uint8

const (
	// DrainDeadline: DrainTimeout after the drain began.
	DrainDeadline Deadline = iota + 1
	// IdleDeadline: IdleTimeout after the tables became empty.
	IdleDeadline
	// StopDeadline: StopTimeout after a child was told to stop.
	StopDeadline
	// KeepAliveDeadline: KeepAlive.Interval after the last message
	// received.
	KeepAliveDeadline
	// ProbeDeadline: KeepAlive.Timeout after a probe.
	ProbeDeadline
	// FinishDeadline: FinishWait after a drain's last call, or when the
	// drain deadline comes first.
	FinishDeadline

	// MaxDeadline is the last Deadline: runners size their timer tables
	// by it.
	MaxDeadline = FinishDeadline
)

var deadlineNames = [...]string{"", "drain", "idle", "stop", "keepalive", "probe", "finish"}

func (d Deadline) String() string { return deadlineNames[d] }

// ChildKind is what a child actor is.
type ChildKind uint8

const (
	// QuestionChild: one of our questions, from its Call until its Return
	// and Finish.
	QuestionChild ChildKind = iota + 1
	// ExportChild: a capability exported to the peer, while the peer
	// holds it.
	ExportChild
)

func (k ChildKind) String() string {
	if k == QuestionChild {
		return "question"
	}
	return "export"
}

// Child is one child actor of the connection.
type Child struct {
	Kind ChildKind
	ID   uint32
	Call CallID // QuestionChild: the local call
	Ref  Ref    // ExportChild: the capability (CapLocal), 0 for others
}

func (c Child) String() string { return fmt.Sprintf("%v %d", c.Kind, c.ID) }

// Core is one connection's protocol state. It is not safe for concurrent
// use: one goroutine (the connection actor's) calls Step.
type Core struct {
	cfg Config
	now time.Time
	// sc is the storage the core works in (see Scratch), nil at rest; o
	// is sc's outputs' storage.
	sc *Scratch
	o  *stepStorage

	questions idtable.Table[*question]
	byCall    map[CallID]*question
	answers   tinymap.Map[uint32, *answer]
	exports   idtable.Table[*export]
	exportKey tinymap.Map[Ref, uint32]
	imports   map[uint32]*importEntry
	embargoes idtable.Table[*embargo]

	running     int   // the peer's calls not yet returned (MaxAnswers)
	callBytes   int64 // their sizes (MaxCallBytes)
	answerBytes int64 // Returns held until their Finish (MaxAnswerBytes)
	seq         uint64
	// retired: answers dropped from the table (their Finish came) whose
	// results are still named by CapAnswer caps, by Gen.
	retired map[uint64]*answer
	// retiredQ: questions retired during the last Step, free for reuse
	// (Scratch.freeQ) once its outputs are carried out.
	retiredQ []*question
	retiredA []*answer // the same for answers
	// answerExports counts the exports standing for capabilities in
	// running answers (resolveAnswerExports has work only while it is
	// above zero).
	answerExports int
	// peaks: the largest sizes of the maps a burst grows, for Rest to
	// rebuild them once they are empty again (peakmap).
	peaks struct{ byCall peakmap.Peak }

	life lifecycle
}

// New returns the core of a connection that starts at now.
func New(cfg Config, now time.Time) *Core {
	c := &Core{
		cfg: cfg.withDefaults(),
		now: now,
		// its maps are made as they are first written (peakmap.Set)
	}
	c.life.start = now
	c.life.heard = now
	c.life.idle = true
	c.scratch()
	c.armIdle()
	if c.cfg.KeepAlive.Interval > 0 {
		c.arm(KeepAliveDeadline, c.cfg.KeepAlive.Interval)
	}
	return c
}

// Start returns the outputs of the connection's start (the idle deadline,
// if any). Call it once, before the first Step.
func (c *Core) Start() []Output {
	c.scratch()
	return c.sc.out
}

// Step feeds one input, at now, and returns what the connection does
// about it. The slice, and what its outputs point to, are the core's
// until the next Step or Rest.
func (c *Core) Step(now time.Time, in Input) []Output {
	if now.After(c.now) {
		c.now = now
	}
	// What the last Step returned: the runner is done with it.
	c.scratch()
	c.sc.out = c.sc.out[:0]
	c.o.reset(false)
	c.recycle()
	c.step(in)
	c.afterStep()
	return c.sc.out
}

func (c *Core) step(in Input) {
	if c.life.phase.closing() {
		c.stepClosing(in)
		return
	}
	switch m := in.(type) {
	case *Received:
		c.life.heard, c.life.probing = c.now, false
		c.receive(m.Msg)
	case *LocalCall:
		c.localCall(*m)
	case *LocalBootstrap:
		c.localBootstrap(m.Call)
	case *LocalFinish:
		c.localFinish(m.Call)
	case *LocalCancel:
		c.localCancel(m.Call, m.Err)
	case *LocalRelease:
		c.localRelease(m.Cap)
	case *LocalRetain:
		c.retainCap(m.Cap)
	case *LocalResolved:
		c.localResolved(m.Ref, m.To)
	case *Returned:
		c.returned(*m)
	case *Shutdown:
		c.shutdown(m.Epitaph, m.Drain)
	case *Stopped:
		c.stopped()
	case *Hurry:
		c.life.hurried = true
		if c.life.phase == phaseDraining {
			c.endDrain(true, "hurried")
		}
	case *DeadlineFired:
		c.deadline(*m)
	case *ChildStopped:
		// A question or export actor that stopped on its own (it
		// panicked): the runner settled or released what it held.
	case *ReadEnded:
		c.readEnded(*m)
	case *WriteFailed:
		c.transportFailed(m.Err)
	case *SocketClosed:
		// Not before CloseSocket.
	}
}

// afterStep ends a drain with nothing left in flight (once the peer's
// Finishes are in, or FinishWait has passed) and notes the tables'
// emptiness.
func (c *Core) afterStep() {
	if c.life.phase == phaseDraining {
		if q, a := c.inFlight(); q+a == 0 {
			c.drained()
		}
	}
	if !c.life.phase.closing() {
		c.noteIdle()
	}
}

// Stats returns the table counts.
func (c *Core) Stats() Stats {
	return Stats{
		Questions: c.questions.Len() - c.life.probes, // probes are the core's own
		Answers:   c.answers.Len(),
		Exports:   c.exports.Len(),
		Imports:   len(c.imports),
		Embargoes: c.embargoes.Len(),
	}
}

// Stats counts the entries of a connection's tables.
type Stats struct {
	Questions, Answers, Exports, Imports, Embargoes int
}

// Idle reports whether all tables are empty.
func (s Stats) Idle() bool { return s == Stats{} }

func (s Stats) String() string {
	return fmt.Sprintf("questions=%d answers=%d exports=%d imports=%d embargoes=%d",
		s.Questions, s.Answers, s.Exports, s.Imports, s.Embargoes)
}

func (c *Core) emit(o Output) { c.sc.out = append(c.sc.out, o) }

func (c *Core) send(m Message) { c.emit(put(&c.o.send, Send{Msg: m})) }

func (c *Core) logf(level slog.Level, msg string, args ...any) {
	c.emit(put(&c.o.log, Log{Level: level, Msg: msg, Args: args}))
}
