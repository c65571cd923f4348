// Command metrics runs a server vat and a client vat in one process, over
// loopback TCP, with their metrics exported for Prometheus on a loopback
// /metrics page (through OpenTelemetry's Prometheus exporter). The client
// makes calls (one of them fails), then hangs up cleanly: the page shows
// the calls' durations by method and status, and the two connection ends
// counted as expected, not as errors. The same server has the server
// vat's live view (package inspect) on /debug/vat/.
//
//	go run ./samples/metrics                       # prints the vatactor series and exits
//	go run ./samples/metrics -listen 127.0.0.1:9464 -hold   # and keeps serving them
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"time"

	"capnproto.org/go/capnp/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/vatactor/vatactor/actors"
	"github.com/vatactor/vatactor/inspect"
	"github.com/vatactor/vatactor/interop"
	"github.com/vatactor/vatactor/supervisor"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "where /metrics is served")
	hold := flag.Bool("hold", false, "keep serving /metrics until interrupted")
	flag.Parse()
	if err := run(*listen, *hold, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "metrics:", err)
		os.Exit(1)
	}
}

// Sample is the sample's running state: its /metrics page and its vats.
type Sample struct {
	URL            string // of the /metrics page
	server, client *actors.Vat
	http           *http.Server
	scraper        *http.Client
	mp             *sdkmetric.MeterProvider
}

// Start serves /metrics on listen and spawns the two vats.
func Start(listen string) (*Sample, error) {
	reg := prometheus.NewRegistry()
	exp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, err
	}
	s := &Sample{mp: sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp)), scraper: &http.Client{Transport: &http.Transport{}}}
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	s.http = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	s.URL = "http://" + l.Addr().String() + "/metrics"
	s.server = actors.Spawn(actors.Options{Name: "server", MeterProvider: s.mp,
		Bootstrap: capnp.Client(interop.NewEchoServer().Client(actors.NewServer))})
	mux.Handle("/debug/vat/", http.StripPrefix("/debug/vat", inspect.Handler(s.server)))
	go func() { _ = s.http.Serve(l) }()
	s.client = actors.Spawn(actors.Options{Name: "client", MeterProvider: s.mp})
	return s, nil
}

// Calls has the client make n echo calls and one that fails, then hang up
// with epitaph OK; it returns once both connections are down.
func (s *Sample) Calls(ctx context.Context, n int) error {
	addr, err := s.server.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	boot, cn, err := s.client.Dial(ctx, "tcp", addr.String())
	if err != nil {
		return err
	}
	e := interop.Echo(boot)
	for i := range n {
		f, release := e.Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText(fmt.Sprint("call ", i)) })
		_, err := f.Struct()
		release()
		if err != nil {
			return err
		}
	}
	f, release := e.Fail(ctx, func(p interop.Echo_fail_Params) error { return p.SetReason("the sample asked for it") })
	if _, err := f.Struct(); err == nil {
		return errors.New("fail() did not fail")
	}
	release()
	boot.Release()
	if _, err := cn.Shutdown(ctx, supervisor.Epitaph{Code: supervisor.OK, Message: "sample done"}); err != nil {
		return err
	}
	for len(s.server.Conns()) > 0 { // the server's side ends as the client's epitaph arrives
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
	return nil
}

// Stop stops the vats and the page.
func (s *Sample) Stop() {
	s.client.Stop()
	s.server.Stop()
	_ = s.http.Close()
	s.scraper.CloseIdleConnections()
	_ = s.mp.Shutdown(context.Background())
}

// Scrape fetches the page and returns its vatactor and rpc series.
func (s *Sample) Scrape(ctx context.Context) ([]string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := s.scraper.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("GET %s: %s: %s", s.URL, resp.Status, b)
	}
	var out []string
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if l := sc.Text(); strings.HasPrefix(l, "vatactor_") || strings.HasPrefix(l, "rpc_") {
			out = append(out, l)
		}
	}
	return out, sc.Err()
}

func run(listen string, hold bool, w io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Start(listen)
	if err != nil {
		return err
	}
	defer s.Stop()
	fmt.Fprintln(w, "metrics on", s.URL)
	if err := s.Calls(ctx, 5); err != nil {
		return err
	}
	series, err := s.Scrape(ctx)
	if err != nil {
		return err
	}
	for _, l := range series {
		if !strings.Contains(l, "_bucket{") { // the buckets are many; the page has them
			fmt.Fprintln(w, l)
		}
	}
	if hold {
		fmt.Fprintln(w, "serving", s.URL, "until interrupted")
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt)
		<-sig
	}
	return nil
}
