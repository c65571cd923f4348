package conn

import (
	"fmt"
	"time"

	"github.com/vatactor/vatactor/conn/core"
	"github.com/vatactor/vatactor/supervisor"
)

// An Event is a lifecycle message about one connection. Events are sent,
// in the order they happen, to the connection actor's parent and to
// Options.OnEvent. Each has a one-line String for logs and samples.
type Event interface {
	fmt.Stringer
	// Source is the connection the event is about.
	Source() *Conn
}

// Up: the connection actor has started and reads from its socket.
type Up struct {
	Conn       *Conn
	Peer, Role string
}

// Busy: a table of the connection went from all empty to not empty.
type Busy struct {
	Conn  *Conn
	Stats Stats
}

// Idle: all tables of the connection became empty (as C++ master defines
// idle). With Options.IdleTimeout set, an Idle that lasts that long starts
// a graceful shutdown.
type Idle struct {
	Conn *Conn
}

// PhaseDone: one step of the connection's end has finished.
type PhaseDone struct {
	Conn  *Conn
	Phase PhaseReport
}

// ActorStopped: a question or export actor stopped during the connection's
// end (in the order the connection stopped them).
type ActorStopped struct {
	Conn     *Conn
	Kind     ActorKind
	ID       uint32 // question or export id
	TimedOut bool   // it did not stop within StopTimeout
}

// ActorKind names the kinds of actor a connection owns.
type ActorKind string

// The kinds of child actor of a connection.
const (
	QuestionActor ActorKind = "question"
	ExportActor   ActorKind = "export"
)

// Down: the connection has ended; its socket is closed. It is the last
// event of a connection and carries the complete report.
type Down struct {
	Conn *Conn
	Report
}

func (e Up) Source() *Conn           { return e.Conn }
func (e Busy) Source() *Conn         { return e.Conn }
func (e Idle) Source() *Conn         { return e.Conn }
func (e PhaseDone) Source() *Conn    { return e.Conn }
func (e ActorStopped) Source() *Conn { return e.Conn }
func (e Down) Source() *Conn         { return e.Conn }

func (e Up) String() string   { return fmt.Sprintf("up: %s %s", e.Role, e.Peer) }
func (e Busy) String() string { return fmt.Sprintf("busy: %s (%v)", e.Conn.Peer(), e.Stats) }
func (e Idle) String() string { return fmt.Sprintf("idle: %s", e.Conn.Peer()) }
func (e PhaseDone) String() string {
	return fmt.Sprintf("phase %s: %s", e.Conn.Peer(), e.Phase)
}
func (e ActorStopped) String() string {
	s := fmt.Sprintf("stopped: %s %s #%d", e.Conn.Peer(), e.Kind, e.ID)
	if e.TimedOut {
		s += " (timed out)"
	}
	return s
}
func (e Down) String() string {
	return fmt.Sprintf("down: %s after %v: %v (expected=%v)", e.Conn.Peer(), e.Lifetime.Round(time.Millisecond), e.Reason, e.Reason.Expected())
}

// Phase names the steps of a connection's end, in the order they run.
// Each is one function of the connection's core with the same name.
type Phase = core.Phase

// The steps of a connection's end, in order.
const (
	PhaseDrain          = core.PhaseDrain
	PhaseStopQuestions  = core.PhaseStopQuestions
	PhaseStopExports    = core.PhaseStopExports
	PhaseReleaseImports = core.PhaseReleaseImports
	PhaseSendEpitaph    = core.PhaseSendEpitaph
	PhaseCloseWrite     = core.PhaseCloseWrite
	PhaseLinger         = core.PhaseLinger
	PhaseCloseSocket    = core.PhaseCloseSocket
)

// PhaseReport is what one step of a connection's end did.
type PhaseReport = core.PhaseReport

// Report is what a connection's end did: why it ended, each step, and what
// was cut short.
type Report struct {
	// Reason is why the connection ended: the first reason recorded.
	Reason supervisor.Reason
	// Peer is what the peer did to end its side while we were ending ours
	// (EOF, epitaph, Abort), or nil.
	Peer supervisor.Reason
	// Stats are the table counts when the end began.
	Stats Stats
	// Lifetime is the connection's whole life, from its start to its end
	// (a step's time is PhaseReport.Took).
	Lifetime time.Duration
	// Phases lists the steps in the order they ran.
	Phases []PhaseReport
	// Refused counts the peer's calls refused while draining (never
	// processed; the peer was told so).
	Refused int
	// Canceled counts our questions that were still waiting for their
	// answer when the end began or when the drain was cut short.
	Canceled int
	// Abandoned counts the peer's calls still running when the drain
	// ended: each got a Return with a disconnected exception that says it
	// may have been partly processed (none when the peer had gone), and
	// its callee's context was cancelled.
	Abandoned int
	// StuckActors counts question and export actors that did not stop
	// within StopTimeout.
	StuckActors int
	// EpitaphSent tells whether our epitaph was written to the peer.
	EpitaphSent bool
	// ReadEnd is how reading ended: io.EOF when the peer closed its write
	// side cleanly (a FIN), a reset or other socket error, or
	// net.ErrClosed when we closed the socket before the peer's EOF.
	ReadEnd error
}

// CutShort reports whether anything was lost or forced: a phase cut short,
// a call cancelled or abandoned, an actor that would not stop.
func (r Report) CutShort() bool {
	for _, p := range r.Phases {
		if p.CutShort {
			return true
		}
	}
	return r.Canceled > 0 || r.Abandoned > 0 || r.StuckActors > 0
}
