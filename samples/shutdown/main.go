// Command shutdown shows a graceful, ordered shutdown between two vats over
// loopback TCP, and a supervised client that redials when the server comes
// back.
//
//	go run ./samples/shutdown
//
// The server has calls in flight when it shuts down with an epitaph: they
// finish (drain), a call made during the drain is refused as "not
// processed, safe to retry", and the connection ends with the steps of its
// end in order (README: "Closing a connection"). The client reads the epitaph as the reason, its
// supervisor redials with backoff, and the same capability works again
// once a new server listens on the same address.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"capnproto.org/go/capnp/v3"

	"github.com/vatactor/vatactor/actors"
	"github.com/vatactor/vatactor/conn"
	"github.com/vatactor/vatactor/interop"
	"github.com/vatactor/vatactor/supervisor"
)

var start = time.Now()

// say prints one line of the lifecycle, stamped with the time since start.
func say(who, format string, args ...any) {
	fmt.Printf("%7.1fms  %-7s %s\n", float64(time.Since(start).Microseconds())/1000, who, fmt.Sprintf(format, args...))
}

// printEvents prints a vat's connection events as they happen.
func printEvents(who string) func(conn.Event) {
	return func(e conn.Event) {
		switch e := e.(type) {
		case conn.PhaseDone:
			say(who, "phase %v", e.Phase)
		case conn.Down:
			say(who, "down: %v (expected=%v, read end: %v)", e.Reason, e.Reason.Expected(), e.ReadEnd)
		case conn.Up:
			say(who, "up: %s, peer %s", e.Role, e.Peer)
		}
	}
}

func startServer(addr string) (*actors.Vat, string, error) {
	v := actors.Spawn(actors.Options{
		Name:      "server",
		Bootstrap: capnp.Client(interop.NewEchoServer().Client(actors.NewServer)),
		OnEvent:   printEvents("server"),
	})
	a, err := v.Listen("tcp", addr)
	if err != nil {
		v.Stop()
		return nil, "", err
	}
	return v, a.String(), nil
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "shutdown sample:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx := context.Background()
	server, addr, err := startServer("127.0.0.1:0")
	if err != nil {
		return err
	}
	say("server", "listening on %s", addr)

	client := actors.Spawn(actors.Options{Name: "client", OnEvent: printEvents("client")})
	defer client.Stop()
	connected := make(chan struct{}, 4)
	rd, err := client.DialSupervised(context.Background(), "tcp", addr, actors.RedialOptions{
		Policy: supervisor.Policy{Restart: supervisor.Permanent,
			Backoff: supervisor.Backoff{Initial: 100 * time.Millisecond, Multiplier: 1.6, Max: 2 * time.Second, Jitter: 0.2}},
		OnEvent: func(e actors.RedialEvent) {
			say("client", "%v", e)
			if e.Kind == "connected" {
				connected <- struct{}{}
			}
		},
	})
	if err != nil {
		return err
	}
	defer rd.Close()
	<-connected
	echo := interop.Echo(rd.Client())
	defer echo.Release()

	// Five calls that take 300ms each, in flight when the server shuts down.
	var wg sync.WaitGroup
	var lost error
	var mu sync.Mutex
	for i := 0; i < 5; i++ {
		f, release := echo.Wait(ctx, func(p interop.Echo_wait_Params) error { p.SetMs(300); return nil })
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer release()
			res, err := f.Struct()
			if err != nil {
				mu.Lock()
				lost = err
				mu.Unlock()
				say("client", "call %d failed: %v", i, err)
				return
			}
			say("client", "call %d returned after %dms", i, res.Ms())
		}()
	}
	for busy := false; !busy; { // the five calls are running on the server
		for _, c := range server.Conns() {
			busy = c.Stats().Answers >= 5
		}
		time.Sleep(time.Millisecond)
	}

	say("server", "shutting down with epitaph UNAVAILABLE \"upgrading\"")
	shut := make(chan actors.Report, 1)
	go func() {
		rep, _ := server.Shutdown(ctx, supervisor.Epitaph{Code: supervisor.Unavailable, Message: "upgrading"})
		shut <- rep
	}()
	time.Sleep(50 * time.Millisecond)
	f, release := echo.Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText("during drain") })
	_, err = f.Struct()
	release()
	say("client", "call during the drain: %v (not processed: %v)", err, errors.Is(err, conn.ErrNotProcessed))
	if !errors.Is(err, conn.ErrNotProcessed) {
		return fmt.Errorf("call during the drain was not refused as not processed: %v", err)
	}
	wg.Wait()
	if lost != nil {
		return fmt.Errorf("a call in flight was lost: %w", lost)
	}
	rep := <-shut
	say("server", "shut down in %v; cut short: %v", rep.Took.Round(time.Millisecond), rep.CutShort())

	time.Sleep(300 * time.Millisecond)
	say("server", "coming back on %s", addr)
	server2, _, err := startServer(addr)
	if err != nil {
		return err
	}
	<-connected
	f2, release2 := echo.Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText("hello again") })
	res, err := f2.Struct()
	if err != nil {
		release2()
		return fmt.Errorf("call after the redial: %w", err)
	}
	text, _ := res.Text()
	release2()
	say("client", "call after the redial: %q", text)

	rd.Close()
	say("server", "final shutdown with epitaph OK")
	if _, err := server2.Shutdown(ctx, supervisor.Epitaph{Code: supervisor.OK, Message: "bye"}); err != nil {
		return err
	}
	return nil
}
