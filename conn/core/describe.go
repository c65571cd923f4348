package core

import (
	"fmt"
	"strings"
)

// Describe returns a one-line description of an input or an output, as
// logs, scripts and the simulation print it.
func Describe(v any) string {
	switch m := v.(type) {
	case *Received:
		return "recv " + describe(m.Msg)
	case *LocalCall:
		return fmt.Sprintf("local call c%d on %v %v%s", m.Call, m.Target, m.Method, capTableString(m.Params.CapTable))
	case *LocalBootstrap:
		return fmt.Sprintf("local bootstrap c%d", m.Call)
	case *LocalFinish:
		return fmt.Sprintf("local finish c%d", m.Call)
	case *LocalCancel:
		return fmt.Sprintf("local cancel c%d", m.Call)
	case *LocalRelease:
		return fmt.Sprintf("local release %v", m.Cap)
	case *LocalRetain:
		return fmt.Sprintf("local retain %v", m.Cap)
	case *LocalResolved:
		return fmt.Sprintf("local promise #%d resolved to %v", m.Ref, m.To)
	case *Returned:
		if m.Err != nil {
			return fmt.Sprintf("returned a%d error %v", m.Answer, m.Err)
		}
		s := fmt.Sprintf("returned a%d", m.Answer)
		if m.Results != nil {
			s += capTableString(m.Results.CapTable)
		}
		return s
	case *Shutdown:
		return fmt.Sprintf("shutdown epitaph %v drain=%v", m.Epitaph, m.Drain)
	case *Stopped:
		return "stopped from outside"
	case *Hurry:
		return "hurry"
	case *DeadlineFired:
		return fmt.Sprintf("deadline %v fired (gen %d)", m.Deadline, m.Gen)
	case *ChildStopped:
		return fmt.Sprintf("child %v stopped", m.Child)
	case *ReadEnded:
		switch {
		case m.EOF:
			return "read ended: EOF"
		case m.Malformed:
			return fmt.Sprintf("read ended: malformed frame: %v", m.Err)
		}
		return fmt.Sprintf("read ended: %v", m.Err)
	case *WriteFailed:
		return fmt.Sprintf("write failed: %v", m.Err)
	case *SocketClosed:
		return fmt.Sprintf("socket closed (%d steps)", len(m.Steps))

	case *Send:
		return "send " + describe(m.Msg)
	case *Deliver:
		return fmt.Sprintf("deliver a%d to %v %v%s", m.Answer, m.To, m.Method, capTableString(m.Params.CapTable))
	case *CancelAnswer:
		return fmt.Sprintf("cancel a%d", m.Answer)
	case *AnswerDone:
		return fmt.Sprintf("a%d done", m.Answer)
	case *Redirect:
		return fmt.Sprintf("redirect c%d to %v %v%s", m.Call, m.To, m.Method, capTableString(m.Params.CapTable))
	case *Settle:
		if m.Err != nil {
			return fmt.Sprintf("settle c%d error %v", m.Call, m.Err)
		}
		s := fmt.Sprintf("settle c%d results", m.Call)
		if m.Results != nil {
			s += capTableString(m.Results.CapTable)
		}
		return s
	case *ImportResolved:
		return fmt.Sprintf("import %d resolved to %v", m.ID, m.To)
	case *SpawnChild:
		return fmt.Sprintf("spawn %v", m.Child)
	case *StopChild:
		return fmt.Sprintf("stop %v", m.Child)
	case *Arm:
		return fmt.Sprintf("arm %v deadline (gen %d)", m.Deadline, m.Gen)
	case *Closing:
		return "closing: admit nothing more"
	case *CloseSocket:
		if m.Hard {
			return "close socket (hard)"
		}
		return "close socket: flush, FIN, linger"
	case *Emit:
		return "event " + describeEvent(m.Event)
	case *Log:
		return fmt.Sprintf("log %v %s", m.Level, m.Msg)
	}
	return fmt.Sprintf("%T", v)
}

func describeEvent(e Event) string {
	switch e := e.(type) {
	case *Ending:
		return fmt.Sprintf("ending: %v", e.Reason)
	case *Busy:
		return fmt.Sprintf("busy (%v)", e.Stats)
	case *Idle:
		return "idle"
	case *PhaseStarted:
		return fmt.Sprintf("%v started", e.Phase)
	case *PhaseDone:
		p := e.Report
		s := fmt.Sprintf("%v done", p.Phase)
		if p.CutShort {
			s += " CUT SHORT"
		}
		if p.Skipped {
			s += " skipped"
		}
		if p.Note != "" {
			s += ": " + p.Note
		}
		return s
	case *ActorStopped:
		if e.TimedOut {
			return fmt.Sprintf("%v did not stop in time", e.Child)
		}
		return fmt.Sprintf("%v stopped", e.Child)
	case *EpitaphSent:
		return fmt.Sprintf("epitaph sent: %v", e.Epitaph)
	case *EpitaphReceived:
		return fmt.Sprintf("epitaph received: %v", e.Epitaph)
	case *Down:
		return fmt.Sprintf("down: %v", e.Report.Reason)
	case *Refused:
		return fmt.Sprintf("call refused: %s", e.Why)
	}
	return fmt.Sprintf("%T", e)
}

func capTableString(caps []Cap) string {
	if len(caps) == 0 {
		return ""
	}
	parts := make([]string, len(caps))
	for i, c := range caps {
		parts[i] = c.String()
	}
	return " caps[" + strings.Join(parts, ", ") + "]"
}
