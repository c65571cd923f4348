package supervisor

import (
	"errors"
	"testing"
	"time"
)

func TestBackoffGrowsToItsCapWithJitter(t *testing.T) {
	b := DefaultBackoff
	mid := func() float64 { return 0.5 } // no jitter
	want := []time.Duration{time.Second, 1600 * time.Millisecond, 2560 * time.Millisecond}
	for n, w := range want {
		if got := b.Delay(n, mid); got != w {
			t.Errorf("Delay(%d) = %v, want %v", n, got, w)
		}
	}
	if got := b.Delay(100, mid); got != 120*time.Second {
		t.Errorf("Delay(100) = %v, want the 120s cap", got)
	}
	lo, hi := b.Delay(0, func() float64 { return 0 }), b.Delay(0, func() float64 { return 0.999999 })
	if lo != 800*time.Millisecond || hi < 1199*time.Millisecond || hi > 1200*time.Millisecond {
		t.Errorf("jitter bounds %v..%v, want 800ms..1.2s", lo, hi)
	}
}

func TestRestartTypesReadReasons(t *testing.T) {
	normal, failure := PeerEpitaph{Epitaph{Code: OK}}, PeerEOF{Idle: false}
	cases := []struct {
		typ       RestartType
		r         Reason
		restarted bool
	}{
		{Permanent, normal, true}, {Permanent, failure, true},
		{Transient, normal, false}, {Transient, failure, true}, {Transient, nil, true},
		{Temporary, failure, false}, {Temporary, nil, false},
	}
	for _, c := range cases {
		s := Supervisor{Policy: Policy{Restart: c.typ, Intensity: DefaultIntensity, Backoff: DefaultBackoff}}
		if d := s.Ended(time.Now(), c.r, nil); d.Restart != c.restarted {
			t.Errorf("%v after %v: restart %v, want %v", c.typ, c.r, d.Restart, c.restarted)
		}
	}
}

func TestIntensityEscalates(t *testing.T) {
	s := Supervisor{Policy: Policy{Restart: Permanent, Intensity: Intensity{MaxRestarts: 3, Period: time.Minute}, Backoff: DefaultBackoff},
		Rand: func() float64 { return 0.5 }}
	now := time.Unix(0, 0)
	var delays []time.Duration
	for i := 0; i < 3; i++ {
		d := s.Ended(now, PeerEOF{}, nil)
		if !d.Restart || d.Escalate {
			t.Fatalf("restart %d: %+v", i, d)
		}
		delays = append(delays, d.After)
		now = now.Add(time.Second)
	}
	if !(delays[0] < delays[1] && delays[1] < delays[2]) {
		t.Errorf("delays %v do not grow", delays)
	}
	d := s.Ended(now, PeerEOF{}, nil)
	if !d.Escalate || !errors.Is(d.Err, ErrEscalated) {
		t.Fatalf("fourth restart within a minute: %+v, want escalation", d)
	}
	// Restarts spread wider than the period never escalate.
	s = Supervisor{Policy: s.Policy}
	for i := 0; i < 10; i++ {
		if d := s.Ended(now.Add(time.Duration(i)*time.Hour), PeerEOF{}, nil); d.Escalate {
			t.Fatalf("escalated at restart %d an hour apart", i)
		}
	}
}
