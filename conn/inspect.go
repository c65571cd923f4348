package conn

import (
	"context"
	"time"

	"github.com/vatactor/vatactor/conn/core"
	"github.com/vatactor/vatactor/tracing"
)

// Snapshot is a live view of one connection (Conn.Inspect): who it is
// with, where it is in its life, its tables, its flow windows and how
// much of each budget the peer uses. It is a copy: nothing in it changes
// afterwards.
type Snapshot struct {
	ID    string        `json:"id"` // the connection actor's PID id: stable for the connection's life
	Peer  string        `json:"peer"`
	Role  string        `json:"role"`
	Start time.Time     `json:"start"`
	Age   time.Duration `json:"age_ns"`
	// State is the phase of its life: open, draining, stopQuestions,
	// stopExports, lingering, closed.
	State string `json:"state"`
	// Reason is why it ended, once it has.
	Reason string `json:"reason,omitempty"`

	Questions []QuestionSnapshot `json:"questions"`
	Answers   []AnswerSnapshot   `json:"answers"`
	Exports   []ExportSnapshot   `json:"exports"`
	Imports   []ImportSnapshot   `json:"imports"`
	Embargoes int                `json:"embargoes"`
	Flow      FlowSnapshot       `json:"flow"`
	Budget    Budget             `json:"budget"`
}

// Budget is what the peer holds of each limit, next to the limit.
type Budget = core.Budget

// QuestionSnapshot is one of our calls (or bootstraps) on the wire.
type QuestionSnapshot struct {
	ID     uint32        `json:"id"`
	Method string        `json:"method"` // "Interface.method", or "@0x…/n" when its names are unknown
	Age    time.Duration `json:"age_ns"`
	// State: waiting (for its Return), returned (our Finish to come),
	// finishing (our Finish sent first; its Return to come).
	State string `json:"state"`
	// Pipelined: the call was made on an answer that had not arrived.
	Pipelined bool `json:"pipelined"`
	// PipelinedOnIt counts the calls made on its answer before it came.
	PipelinedOnIt int  `json:"pipelined_on_it"`
	Bootstrap     bool `json:"bootstrap,omitempty"`
	Probe         bool `json:"probe,omitempty"` // a keep-alive probe
}

// AnswerSnapshot is one of the peer's calls (or bootstraps).
type AnswerSnapshot struct {
	ID     uint32        `json:"id"`
	Method string        `json:"method"`
	Age    time.Duration `json:"age_ns"`
	// State: running, returned (its Finish to come), finished (gone from
	// the wire, its results still named by calls pipelined on them).
	State     string `json:"state"`
	Held      int    `json:"held"` // calls on its results waiting for its Return
	Bootstrap bool   `json:"bootstrap,omitempty"`
}

// ExportSnapshot is one of our capabilities the peer holds.
type ExportSnapshot struct {
	ID       uint32 `json:"id"`
	Refs     uint32 `json:"refs"` // references the peer holds
	Promise  bool   `json:"promise,omitempty"`
	Resolved bool   `json:"resolved,omitempty"`
	Held     int    `json:"held,omitempty"` // the peer's calls waiting for the promise
}

// ImportSnapshot is one of the peer's capabilities that we hold.
type ImportSnapshot struct {
	ID        uint32 `json:"id"`
	Refs      uint32 `json:"refs"`       // references the peer gave us
	LocalRefs int    `json:"local_refs"` // references held on our side
	Promise   bool   `json:"promise,omitempty"`
	Resolved  bool   `json:"resolved,omitempty"`
	Broken    bool   `json:"broken,omitempty"`
	// Window is its flow window (Options.FlowWindow): bytes of calls in
	// flight on it, its size, and the calls waiting for room.
	Window *WindowSnapshot `json:"window,omitempty"`
}

// WindowSnapshot is one flow window.
type WindowSnapshot struct {
	Used    int64 `json:"used"`
	Size    int64 `json:"size"`
	Waiting int   `json:"waiting"`
}

// FlowSnapshot is what waits on either side of the connection: the send
// queue against its budget (Limits.MaxSendQueue) and the peer's frames
// read and not yet handled against theirs (Limits.MaxRecvQueue). Past
// either, the connection reads nothing from the peer until it is down to
// half.
type FlowSnapshot struct {
	SendQueueBytes int64 `json:"send_queue_bytes"`
	MaxSendQueue   int64 `json:"max_send_queue"`
	RecvQueueBytes int64 `json:"recv_queue_bytes"`
	MaxRecvQueue   int64 `json:"max_recv_queue"`
}

// inspectReq asks the connection actor for a snapshot.
type inspectReq struct{ reply chan Snapshot }

// Inspect returns a snapshot of the connection, taken by its actor
// between two messages, so that its tables agree with each other. A
// connection that has ended reports its state and reason with empty
// tables.
func (c *Conn) Inspect(ctx context.Context) (Snapshot, error) {
	req := inspectReq{reply: make(chan Snapshot, 1)}
	if c.post(req) == nil {
		select {
		case snap := <-req.reply:
			return snap, nil
		case <-ctx.Done():
			return Snapshot{}, ctx.Err()
		case <-c.done:
		}
	}
	snap := c.header(time.Now())
	snap.State = "closed"
	if r := c.Err(); r != nil {
		snap.Reason = r.Error()
	}
	return snap, nil
}

// header is the part of a snapshot that is not the actor's.
func (c *Conn) header(now time.Time) Snapshot {
	snap := Snapshot{Peer: c.opts.Peer, Role: c.opts.Role, Start: c.start}
	if pid := c.PID(); pid != nil {
		snap.ID = pid.Id
	}
	if !c.start.IsZero() {
		snap.Age = now.Sub(c.start)
	}
	return snap
}

// inspect is Inspect's snapshot, on the actor.
func (s *state) inspect() Snapshot {
	now := s.clock.now()
	in := s.core.Inspect()
	snap := s.c.header(time.Now())
	snap.State, snap.Embargoes, snap.Budget = in.Phase, in.Embargoes, in.Budget
	if r := s.c.Err(); r != nil {
		snap.Reason = r.Error()
	}
	snap.Questions = make([]QuestionSnapshot, 0, len(in.Questions))
	for _, q := range in.Questions {
		qs := QuestionSnapshot{ID: q.ID, Age: now.Sub(q.Since), State: q.State, PipelinedOnIt: q.Pipelined,
			Bootstrap: q.Bootstrap, Probe: q.Probe}
		switch lq := s.calls[q.Call]; {
		case q.Bootstrap:
			qs.Method = tracing.MethodName(bootstrapMethod)
		case lq != nil:
			qs.Method = tracing.MethodName(lq.method)
			qs.Pipelined = lq.target.cap.Kind == core.CapQuestion
		default:
			qs.Method = methodName(q.Method)
		}
		snap.Questions = append(snap.Questions, qs)
	}
	snap.Answers = make([]AnswerSnapshot, 0, len(in.Answers))
	for _, a := range in.Answers {
		as := AnswerSnapshot{ID: a.ID, Age: now.Sub(a.Since), State: a.State, Held: a.Held, Bootstrap: a.Bootstrap}
		switch sa := s.answers.At(a.ID); {
		case a.Bootstrap:
			as.Method = tracing.MethodName(bootstrapMethod)
		case sa != nil && sa.method.InterfaceName != "":
			as.Method = tracing.MethodName(sa.method)
		default:
			as.Method = methodName(a.Method)
		}
		snap.Answers = append(snap.Answers, as)
	}
	snap.Exports = make([]ExportSnapshot, 0, len(in.Exports))
	for _, e := range in.Exports {
		snap.Exports = append(snap.Exports, ExportSnapshot(e))
	}
	snap.Imports = make([]ImportSnapshot, 0, len(in.Imports))
	for _, im := range in.Imports {
		is := ImportSnapshot{ID: im.ID, Refs: im.Refs, LocalRefs: im.LocalRefs, Promise: im.Promise, Resolved: im.Resolved, Broken: im.Broken}
		if ie := s.imports[im.ID]; ie != nil && ie.hook.flow != nil {
			is.Window = ie.hook.flow.snapshot()
		}
		snap.Imports = append(snap.Imports, is)
	}
	snap.Flow = FlowSnapshot{SendQueueBytes: s.c.out.budget.held(), MaxSendQueue: s.c.out.budget.limit,
		RecvQueueBytes: s.c.in.held(), MaxRecvQueue: s.c.in.limit}
	return snap
}

// methodName names a method known by its ids only, from what this
// process knows of the schema.
func methodName(m core.Method) string {
	named, _ := tracing.LookupMethod(m.InterfaceID, m.MethodID)
	return tracing.MethodName(named)
}

// snapshot copies the window's state.
func (w *window) snapshot() *WindowSnapshot {
	w.mu.Lock()
	defer w.mu.Unlock()
	return &WindowSnapshot{Used: w.used, Size: w.size, Waiting: len(w.waiting)}
}
