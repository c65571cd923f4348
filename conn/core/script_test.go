package core

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vatactor/vatactor/supervisor"
)

var update = flag.Bool("update", false, "rewrite the golden transcripts in testdata/scripts")

// fields is a test payload's content: the root struct's pointer fields,
// each the index of a capability in the table, or -1 for null.
type fields []int

func (f fields) Locate(tr []uint16) (int, bool, error) {
	switch {
	case len(tr) == 0:
		return 0, false, errors.New("the root is a struct, not a capability")
	case len(tr) > 1:
		return 0, false, errors.New("the field is not a struct")
	case int(tr[0]) >= len(f):
		return 0, false, nil
	case f[tr[0]] < 0:
		return 0, false, nil
	}
	return f[tr[0]], true, nil
}

// script drives one Core and writes a transcript: each input (">") and
// what it did ("<"). Time moves only when the script says.
type script struct {
	t    *testing.T
	core *Core
	now  time.Time
	log  strings.Builder
	last []Output
	arms map[Deadline]Arm
}

var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func newScript(t *testing.T, cfg Config) *script {
	s := &script{t: t, now: epoch, arms: map[Deadline]Arm{}}
	s.core = New(cfg, s.now)
	s.record(s.core.Start())
	return s
}

func (s *script) note(format string, args ...any) {
	fmt.Fprintf(&s.log, "# "+format+"\n", args...)
}

// in feeds one input and returns its outputs.
func (s *script) in(in Input) []Output {
	fmt.Fprintf(&s.log, "> %s\n", Describe(in))
	out := s.core.Step(s.now, in)
	s.record(out)
	s.last = append([]Output(nil), out...)
	return s.last
}

func (s *script) record(out []Output) {
	for _, o := range out {
		if l, ok := o.(*Log); ok && l.Level < 0 {
			continue // debug logs: not part of the transcript
		}
		if a, ok := o.(*Arm); ok {
			s.arms[a.Deadline] = *a
		}
		fmt.Fprintf(&s.log, "< %s\n", Describe(o))
	}
}

func (s *script) recv(m Message) []Output { return s.in(&Received{Msg: m}) }

// advance moves the clock by d and fires the deadlines passed.
func (s *script) advance(d time.Duration) {
	s.now = s.now.Add(d)
	fmt.Fprintf(&s.log, "# +%v\n", d)
	for dl := Deadline(1); dl <= MaxDeadline; dl++ {
		if a, ok := s.arms[dl]; ok && !a.At.After(s.now) {
			delete(s.arms, dl)
			s.in(&DeadlineFired{Deadline: dl, Gen: a.Gen})
		}
	}
}

// stopChildren answers every StopChild of the last step with ChildStopped,
// one at a time, as the actors would.
func (s *script) stopChildren() {
	for {
		var next *Child
		for _, o := range s.last {
			if sc, ok := o.(*StopChild); ok {
				next = &sc.Child
			}
		}
		if next == nil {
			return
		}
		s.in(&ChildStopped{Child: *next})
	}
}

// closeSocket answers CloseSocket the way the runner does.
func (s *script) closeSocket() {
	s.in(&SocketClosed{Steps: []PhaseReport{
		{Phase: PhaseCloseWrite, Start: s.now, Note: "flushed, FIN sent"},
		{Phase: PhaseLinger, Start: s.now},
		{Phase: PhaseCloseSocket, Start: s.now},
	}})
}

// sent returns the messages of the last step.
func (s *script) sent() []Message {
	var ms []Message
	for _, o := range s.last {
		if m, ok := o.(*Send); ok {
			ms = append(ms, m.Msg)
		}
	}
	return ms
}

func (s *script) has(want string) {
	s.t.Helper()
	for _, o := range s.last {
		if strings.Contains(Describe(o), want) {
			return
		}
	}
	s.t.Errorf("no output of the last step contains %q:\n%s", want, s.log.String())
}

func (s *script) lacks(want string) {
	s.t.Helper()
	for _, o := range s.last {
		if strings.Contains(Describe(o), want) {
			s.t.Errorf("an output of the last step contains %q: %s", want, Describe(o))
		}
	}
}

func (s *script) down() Report {
	s.t.Helper()
	for _, o := range s.last {
		if e, ok := o.(*Emit); ok {
			if d, ok := e.Event.(*Down); ok {
				return d.Report
			}
		}
	}
	s.t.Fatalf("no Down in the last step:\n%s", s.log.String())
	return Report{}
}

// golden compares the transcript with testdata/scripts/<test>.txt.
func (s *script) golden() {
	s.t.Helper()
	name := strings.ReplaceAll(s.t.Name(), "/", "_")
	path := filepath.Join("testdata", "scripts", name+".txt")
	got := s.log.String()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			s.t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		s.t.Fatalf("%v (run go test ./conn/core -run %s -update to write it)", err, s.t.Name())
	}
	if got != string(want) {
		s.t.Errorf("transcript differs from %s (rerun with -update if the change is meant):\n%s", path, diffLines(string(want), got))
	}
}

func diffLines(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for i := 0; i < len(w) || i < len(g); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			fmt.Fprintf(&b, "line %d:\n  want %s\n  got  %s\n", i+1, wl, gl)
		}
	}
	return b.String()
}

var (
	echo   = Method{InterfaceID: 0xe0, MethodID: 0}
	getCap = Method{InterfaceID: 0xe0, MethodID: 1}
	ok     = supervisor.Epitaph{Code: supervisor.OK, Message: "bye"}
)

// bootstrapped returns a script whose peer has fetched our bootstrap
// (export 0 = local #1) and which has fetched the peer's (import 0).
func bootstrapped(t *testing.T, cfg Config) *script {
	cfg.Bootstrap = Local(1)
	s := newScript(t, cfg)
	s.note("the peer fetches our bootstrap; we fetch its")
	s.recv(&Bootstrap{QuestionID: 0})
	s.recv(&Finish{QuestionID: 0})
	s.in(&LocalBootstrap{Call: 1})
	s.recv(&Return{AnswerID: 0, Results: &Payload{Content: RootCap{}, Caps: []CapDescriptor{{Kind: SenderHosted, ID: 0}}}})
	s.in(&LocalFinish{Call: 1})
	s.in(&ChildStopped{Child: Child{Kind: QuestionChild, ID: 0, Call: 1}})
	return s
}

// closeGracefully runs a whole end with every actor stopping at once.
func (s *script) closeGracefully() Report {
	s.stopChildren()
	s.closeSocket()
	return s.down()
}
