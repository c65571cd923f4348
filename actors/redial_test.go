package actors_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"

	"github.com/vatactor/vatactor/actors"
	"github.com/vatactor/vatactor/conn"
	"github.com/vatactor/vatactor/interop"
	"github.com/vatactor/vatactor/supervisor"
)

// redialLog records a supervised dial's events.
type redialLog struct {
	mu  sync.Mutex
	evs []actors.RedialEvent
	ch  chan actors.RedialEvent
}

func newRedialLog() *redialLog { return &redialLog{ch: make(chan actors.RedialEvent, 256)} }

func (l *redialLog) add(e actors.RedialEvent) {
	l.mu.Lock()
	l.evs = append(l.evs, e)
	l.mu.Unlock()
	l.ch <- e
}

// next waits for the next event of kind.
func (l *redialLog) next(t *testing.T, kind string) actors.RedialEvent {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case e := <-l.ch:
			if e.Attempt < 1 { // every step comes after the first dial
				t.Errorf("%v: attempt %d", e, e.Attempt)
			}
			if e.Kind == kind {
				return e
			}
		case <-timeout:
			t.Fatalf("no %q event", kind)
		}
	}
}

func echoServerVat(t *testing.T, addr string) (*actors.Vat, string) {
	t.Helper()
	v := actors.Spawn(actors.Options{Name: "server", Bootstrap: capnp.Client(interop.NewEchoServer().Client(actors.NewServer))})
	a, err := v.Listen("tcp", addr)
	if err != nil {
		v.Stop()
		t.Fatal(err)
	}
	return v, a.String()
}

var fastBackoff = supervisor.Backoff{Initial: 20 * time.Millisecond, Multiplier: 2, Max: 400 * time.Millisecond, Jitter: 0.2}

// A server that shuts down and comes back is redialed with growing delays,
// and the capability from the supervised dial works again afterwards.
func TestRedialAfterServerComesBack(t *testing.T) {
	server, addr := echoServerVat(t, "127.0.0.1:0")
	client := actors.Spawn(actors.Options{Name: "client"})
	defer client.Stop()
	log := newRedialLog()
	rd, err := client.DialSupervised(context.Background(), "tcp", addr, actors.RedialOptions{
		Policy:  supervisor.Policy{Restart: supervisor.Permanent, Intensity: supervisor.Intensity{MaxRestarts: 50, Period: time.Minute}, Backoff: fastBackoff},
		OnEvent: log.add,
	})
	if err != nil {
		t.Fatal(err)
	}
	log.next(t, "connected")
	echo := interop.Echo(rd.Client())
	defer echo.Release()
	ctx := context.Background()
	if got, err := echoText(ctx, echo, "one"); err != nil || got != "one" {
		t.Fatalf("first call: %q %v", got, err)
	}

	if _, err := server.Shutdown(ctx, supervisor.Epitaph{Code: supervisor.Unavailable, Message: "restarting"}); err != nil {
		t.Fatal(err)
	}
	down := log.next(t, "down")
	var pe supervisor.PeerEpitaph
	if !errors.As(down.Reason, &pe) || pe.Epitaph.Code != supervisor.Unavailable {
		t.Fatalf("down reason %v, want the server's epitaph", down.Reason)
	}
	// During the outage, calls fail at once and say they were not sent.
	if _, err := echoText(ctx, echo, "outage"); !errors.Is(err, conn.ErrNotProcessed) {
		t.Fatalf("call during the outage: %v, want ErrNotProcessed", err)
	}
	var delays []time.Duration
	for len(delays) < 3 {
		delays = append(delays, log.next(t, "waiting").Delay)
	}
	for i := 1; i < len(delays); i++ {
		if delays[i] <= delays[i-1] {
			t.Errorf("backoff delays %v do not grow", delays)
		}
	}

	server2, _ := echoServerVat(t, addr) // the same address again
	defer server2.Stop()
	log.next(t, "connected")
	if got, err := echoText(ctx, echo, "two"); err != nil || got != "two" {
		t.Fatalf("call after the redial: %q %v", got, err)
	}
	rd.Close()
	if !errors.Is(rd.Err(), actors.ErrStopped) {
		t.Errorf("Err after Close = %v", rd.Err())
	}
}

// With WaitDuringOutage, a call made while the server is away waits for
// the redial and then succeeds.
func TestRedialWaitDuringOutage(t *testing.T) {
	server, addr := echoServerVat(t, "127.0.0.1:0")
	client := actors.Spawn(actors.Options{Name: "client"})
	defer client.Stop()
	log := newRedialLog()
	rd, err := client.DialSupervised(context.Background(), "tcp", addr, actors.RedialOptions{
		Policy:           supervisor.Policy{Backoff: fastBackoff},
		WaitDuringOutage: true,
		OnEvent:          log.add,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	log.next(t, "connected")
	server.Stop()
	log.next(t, "down")
	echo := interop.Echo(rd.Client())
	defer echo.Release()
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := echoText(ctx, echo, "patient")
		done <- err
	}()
	time.Sleep(100 * time.Millisecond)
	server2, _ := echoServerVat(t, addr)
	defer server2.Stop()
	if err := <-done; err != nil {
		t.Fatalf("waiting call: %v", err)
	}
}

// A peer that stays away exhausts the restart intensity: the redialer
// escalates and its client fails with the escalation.
func TestRedialIntensityEscalates(t *testing.T) {
	server, addr := echoServerVat(t, "127.0.0.1:0")
	client := actors.Spawn(actors.Options{Name: "client"})
	defer client.Stop()
	log := newRedialLog()
	rd, err := client.DialSupervised(context.Background(), "tcp", addr, actors.RedialOptions{
		Policy: supervisor.Policy{Intensity: supervisor.Intensity{MaxRestarts: 3, Period: time.Minute},
			Backoff: supervisor.Backoff{Initial: 5 * time.Millisecond, Multiplier: 1.5, Max: 50 * time.Millisecond}},
		OnEvent: log.add,
	})
	if err != nil {
		t.Fatal(err)
	}
	log.next(t, "connected")
	server.Stop()
	log.next(t, "escalated")
	<-rd.Done()
	if !errors.Is(rd.Err(), supervisor.ErrEscalated) {
		t.Fatalf("Err = %v, want ErrEscalated", rd.Err())
	}
	echo := interop.Echo(rd.Client())
	defer echo.Release()
	if _, err := echoText(context.Background(), echo, "x"); !errors.Is(err, supervisor.ErrEscalated) {
		t.Fatalf("call after escalation: %v, want ErrEscalated", err)
	}
	rd.Close()
}

// A transient redialer does not redial after the peer's OK epitaph.
func TestRedialTransientStopsOnNormalEnd(t *testing.T) {
	server, addr := echoServerVat(t, "127.0.0.1:0")
	client := actors.Spawn(actors.Options{Name: "client"})
	defer client.Stop()
	log := newRedialLog()
	rd, err := client.DialSupervised(context.Background(), "tcp", addr, actors.RedialOptions{
		Policy: supervisor.Policy{Restart: supervisor.Transient, Backoff: fastBackoff}, OnEvent: log.add})
	if err != nil {
		t.Fatal(err)
	}
	log.next(t, "connected")
	if _, err := server.Shutdown(context.Background(), supervisor.Epitaph{Code: supervisor.OK}); err != nil {
		t.Fatal(err)
	}
	stopped := log.next(t, "stopped")
	var pe supervisor.PeerEpitaph
	if !errors.As(stopped.Err, &pe) || !pe.Expected() {
		t.Fatalf("stopped with %v, want the OK epitaph", stopped.Err)
	}
	rd.Close()
}

// agingServer is a server vat ending its connections at age and a client
// supervising its dial to it, waiting during outages, connected.
func agingServer(t *testing.T, age time.Duration) (interop.Echo, *redialLog) {
	t.Helper()
	_, addr := serveEcho(t, actors.Options{MaxConnectionAge: age, MaxConnectionAgeGrace: 5 * time.Second})
	client := actors.Spawn(actors.Options{Name: "client"})
	t.Cleanup(client.Stop)
	log := newRedialLog()
	rd, err := client.DialSupervised(context.Background(), "tcp", addr.String(), actors.RedialOptions{
		WaitDuringOutage: true, OnEvent: log.add,
		Policy: supervisor.Policy{Restart: supervisor.Permanent, Backoff: fastBackoff}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rd.Close)
	log.next(t, "connected")
	echo := interop.Echo(rd.Client())
	t.Cleanup(echo.Release)
	return echo, log
}

// TestMaxConnectionAge: a server ends each connection at its maximum age
// with a graceful shutdown; the call in flight finishes, the supervised
// client redials, and its capability works on the next connection.
func TestMaxConnectionAge(t *testing.T) {
	echo, log := agingServer(t, 300*time.Millisecond)
	ctx := context.Background()
	f, release := startWait(ctx, echo, 500) // in flight when the age is reached
	defer release()
	down := log.next(t, "down")
	var pe supervisor.PeerEpitaph
	if !errors.As(down.Reason, &pe) || pe.Epitaph.Code != supervisor.Unavailable || pe.Epitaph.Message != actors.MaxConnectionAgeMessage {
		t.Fatalf("first connection ended with %v, want the max-age epitaph", down.Reason)
	}
	if res, err := f.Struct(); err != nil || res.Ms() != 500 {
		t.Errorf("the call in flight at the max age: %v, want it drained and answered", err)
	}
	log.next(t, "connected")
	if got, err := echoText(ctx, echo, "next connection"); err != nil || got != "next connection" {
		t.Errorf("after the redial: %q %v", got, err)
	}
}

// TestRedialRetriesRefusedCalls: with WaitDuringOutage, calls a draining
// server refuses as not processed are sent again on the next connection;
// the caller sees none of those refusals.
func TestRedialRetriesRefusedCalls(t *testing.T) {
	echo, log := agingServer(t, 200*time.Millisecond)
	ctx := context.Background()
	hold, release := startWait(ctx, echo, 400) // keeps the aged connection draining
	defer release()
	deadline := time.Now().Add(800 * time.Millisecond)
	calls, unknown := 0, 0
	for time.Now().Before(deadline) {
		got, err := echoText(ctx, echo, "through the drain")
		switch {
		case errors.Is(err, conn.ErrOutcomeUnknown):
			// In flight when a connection ended: never sent again, by
			// design.
			unknown++
			t.Logf("call %d: %v", calls, err)
		case err != nil || got != "through the drain":
			t.Fatalf("call %d: %q %v (a refusal reached the caller)", calls, got, err)
		}
		calls++
	}
	if unknown > 1 {
		t.Errorf("%d calls of unknown outcome, want at most the one in flight at an end", unknown)
	}
	if _, err := hold.Struct(); err != nil {
		t.Errorf("the call that held the drain: %v", err)
	}
	log.next(t, "retrying") // at least one call was refused and sent again
	t.Logf("%d calls, none refused", calls)
}
