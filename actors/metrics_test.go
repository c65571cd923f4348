package actors_test

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
	"capnproto.org/go/capnp/v3/rpc"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/vatactor/vatactor/actors"
	"github.com/vatactor/vatactor/conn"
	"github.com/vatactor/vatactor/interop"
	"github.com/vatactor/vatactor/metering"
	"github.com/vatactor/vatactor/supervisor"
	"github.com/vatactor/vatactor/tracing"
)

// point is one data point of a collected metric: its attributes and its
// count (histograms), sum (counters) or value (gauges).
type point struct {
	attrs attribute.Set
	n     float64
}

func (p point) attr(k attribute.Key) string {
	v, _ := p.attrs.Value(k)
	return v.Emit()
}

type collected map[string][]point

func collect(t *testing.T, r *sdkmetric.ManualReader) collected {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := collected{}
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != metering.ScopeName {
			continue
		}
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Histogram[float64]:
				for _, dp := range d.DataPoints {
					out[m.Name] = append(out[m.Name], point{dp.Attributes, float64(dp.Count)})
				}
			case metricdata.Sum[int64]:
				for _, dp := range d.DataPoints {
					out[m.Name] = append(out[m.Name], point{dp.Attributes, float64(dp.Value)})
				}
			case metricdata.Gauge[int64]:
				for _, dp := range d.DataPoints {
					out[m.Name] = append(out[m.Name], point{dp.Attributes, float64(dp.Value)})
				}
			default:
				t.Fatalf("%s: data of type %T", m.Name, m.Data)
			}
		}
	}
	return out
}

// sum adds the points of name whose attributes include all of want.
func (c collected) sum(name string, want ...attribute.KeyValue) float64 {
	var n float64
	for _, p := range c[name] {
		ok := true
		for _, kv := range want {
			if v, has := p.attrs.Value(kv.Key); !has || v != kv.Value {
				ok = false
			}
		}
		if ok {
			n += p.n
		}
	}
	return n
}

func (c collected) String() string {
	var b strings.Builder
	for name, ps := range c {
		for _, p := range ps {
			fmt.Fprintf(&b, "%s %v = %v\n", name, p.attrs.Encoded(attribute.DefaultEncoder()), p.n)
		}
	}
	return b.String()
}

// meterProvider is an SDK provider read by hand.
func meterProvider(t *testing.T) (*sdkmetric.MeterProvider, *sdkmetric.ManualReader) {
	r := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	return mp, r
}

func meteredVat(t *testing.T, name string, boot capnp.Client, mp *sdkmetric.MeterProvider, down chan<- conn.Down) *actors.Vat {
	v := actors.Spawn(actors.Options{Name: name, Bootstrap: boot, MeterProvider: mp, Logger: testLogger(t),
		OnEvent: func(e conn.Event) {
			if d, ok := e.(conn.Down); ok && down != nil {
				down <- d
			}
		}})
	t.Cleanup(v.Stop)
	return v
}

func waitDowns(t *testing.T, ch <-chan conn.Down, n int) []conn.Down {
	t.Helper()
	var out []conn.Down
	for len(out) < n {
		select {
		case d := <-ch:
			out = append(out, d)
		case <-time.After(10 * time.Second):
			t.Fatalf("%d of %d connections ended", len(out), n)
		}
	}
	return out
}

// dialMeteredEcho connects a client vat to an Echo server vat over TCP,
// both metered by mp, and returns the client's bootstrap and connection.
func dialMeteredEcho(t *testing.T, mp *sdkmetric.MeterProvider, downs chan<- conn.Down) (capnp.Client, *conn.Conn) {
	t.Helper()
	server := meteredVat(t, "server", capnp.Client(interop.NewEchoServer().Client(actors.NewServer)), mp, downs)
	client := meteredVat(t, "client", capnp.Client{}, mp, downs)
	addr, err := server.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	boot, cn, err := client.Dial(context.Background(), "tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	return boot, cn
}

// TestMetricsVatToVat: calls, connections, their ends and tables, as a
// vat's MeterProvider sees them.
func TestMetricsVatToVat(t *testing.T) {
	mp, r := meterProvider(t)
	downs := make(chan conn.Down, 4)
	boot, cn := dialMeteredEcho(t, mp, downs)
	ctx := context.Background()
	e := interop.Echo(boot)
	for range 3 {
		if got, err := echoText(ctx, e, "hi"); err != nil || got != "hi" {
			t.Fatalf("echo: %q %v", got, err)
		}
	}
	f, release := e.Fail(ctx, func(p interop.Echo_fail_Params) error { return p.SetReason("asked") })
	if _, err := f.Struct(); err == nil {
		t.Fatal("fail() did not fail")
	}
	release()

	live := collect(t, r)
	if n := live.sum(metering.ConnectionsOpen); n != 2 {
		t.Errorf("connections open = %v, want 2 (one each side)\n%v", n, live)
	}
	for _, table := range []string{"questions", "answers", "exports", "imports", "embargoes"} {
		if len(live[metering.TableSize]) == 0 || !strings.Contains(live.String(), "capnp.table="+table) {
			t.Errorf("no %s gauge\n%v", metering.TableSize, live)
		}
	}
	if n := live.sum(metering.TableSize, metering.AttrVat.String("server"), metering.AttrTable.String("exports")); n < 1 {
		t.Errorf("exports gauge = %v, want the bootstrap export\n%v", n, live)
	}
	boot.Release()
	if _, err := cn.Shutdown(ctx, supervisor.Epitaph{Code: supervisor.OK, Message: "done"}); err != nil {
		t.Fatal(err)
	}
	waitDowns(t, downs, 2)

	got := collect(t, r)
	echo := attribute.String("rpc.method", "Echo.echo")
	ok := attribute.String("rpc.response.status_code", "OK")
	for _, name := range []string{metering.ClientCallDuration, metering.ServerCallDuration} {
		if n := got.sum(name, tracing.SystemName, echo, ok); n != 3 {
			t.Errorf("%s echo OK = %v, want 3\n%v", name, n, got)
		}
		if n := got.sum(name, attribute.String("rpc.response.status_code", "FAILED"), attribute.String("error.type", "FAILED")); n != 1 {
			t.Errorf("%s FAILED = %v, want 1 (fail())\n%v", name, n, got)
		}
	}
	if n := got.sum(metering.ConnectionsOpen); n != 0 {
		t.Errorf("connections open = %v after both ended\n%v", n, got)
	}
	if n := got.sum(metering.ConnectionsEnded, tracing.AttrExpected.Bool(true)); n != 2 {
		t.Errorf("expected ends = %v, want 2\n%v", n, got)
	}
	if n := got.sum(metering.ConnectionsEnded, tracing.AttrRole.String("client"), tracing.AttrReasonKind.String("LocalShutdown"), tracing.AttrEpitaphCode.String("OK")); n != 1 {
		t.Errorf("client end LocalShutdown OK = %v\n%v", n, got)
	}
	if n := got.sum(metering.ConnectionsEnded, tracing.AttrRole.String("server"), tracing.AttrReasonKind.String("PeerEpitaph")); n != 1 {
		t.Errorf("server end PeerEpitaph = %v\n%v", n, got)
	}
	if n := got.sum(metering.ConnectionDuration); n != 2 {
		t.Errorf("connection durations = %v, want 2", n)
	}
	if n := got.sum(metering.PhaseDuration, metering.AttrPhase.String("closeSocket")); n != 2 {
		t.Errorf("closeSocket steps = %v, want 2\n%v", n, got)
	}
	for _, name := range []string{metering.MessagesSent, metering.MessagesReceived} {
		if n := got.sum(name, metering.AttrMessageType.String("call")); n < 4 {
			t.Errorf("%s calls = %v, want at least 4\n%v", name, n, got)
		}
	}
	if got.sum(metering.BytesSent) < 100 || got.sum(metering.BytesReceived) < 100 {
		t.Errorf("bytes sent %v received %v", got.sum(metering.BytesSent), got.sum(metering.BytesReceived))
	}
}

// TestMetricsClientDurationsOfAnIdleConnection: a call's client duration
// is recorded by the connection actor after a turn that writes; on a
// connection that writes nothing more (the caller holds the answer, the
// connection stays up) it is recorded all the same, soon.
func TestMetricsClientDurationsOfAnIdleConnection(t *testing.T) {
	mp, r := meterProvider(t)
	boot, _ := dialMeteredEcho(t, mp, nil)
	ctx := context.Background()
	defer boot.Release()
	e := interop.Echo(boot)
	f, release := e.Echo(ctx, func(p interop.Echo_echo_Params) error { return p.SetText("held") })
	defer release()
	if _, err := f.Struct(); err != nil {
		t.Fatal(err)
	}
	echo := attribute.String("rpc.method", "Echo.echo")
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := collect(t, r)
		n := got.sum(metering.ClientCallDuration, echo)
		if n == 1 {
			break
		}
		if n > 1 || time.Now().After(deadline) {
			t.Fatalf("%s Echo.echo = %v, want 1 while the connection is up\n%v", metering.ClientCallDuration, n, got)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestMetricsCleanHangUpsAreExpected: a peer that hangs up cleanly —
// vatactor, go-capnp or the C++ reference — counts as an expected end.
// TestMetricsEpitaphCodesOfPeersAreBounded: the codes of peers'
// epitaphs, which they choose, count under a few values (a code's
// number, a series each, would let a peer grow the provider's series).
func TestMetricsEpitaphCodesOfPeersAreBounded(t *testing.T) {
	mp, r := meterProvider(t)
	downs := make(chan conn.Down, 16)
	server := meteredVat(t, "server", capnp.Client(interop.NewEchoServer().Client(actors.NewServer)), mp, downs)
	client := newSide(t, "client", capnp.Client{}, conn.Options{})
	addr, err := server.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	codes := []supervisor.Code{4242, 4243, 4244, -77, supervisor.Unavailable}
	for _, code := range codes {
		boot, cn, err := client.vat.Dial(ctx, "tcp", addr.String())
		if err != nil {
			t.Fatal(err)
		}
		if got, err := echoText(ctx, interop.Echo(boot), "hi"); err != nil || got != "hi" {
			t.Fatalf("echo: %q %v", got, err)
		}
		boot.Release()
		if _, err := cn.Shutdown(ctx, supervisor.Epitaph{Code: code, Message: "bye"}); err != nil {
			t.Fatal(err)
		}
	}
	waitDowns(t, downs, len(codes))
	got := collect(t, r)
	peer := tracing.AttrReasonKind.String("PeerEpitaph")
	for code, want := range map[string]float64{"APP": 3, "SYSTEM": 1, "UNAVAILABLE": 1} {
		if n := got.sum(metering.ConnectionsEnded, peer, tracing.AttrEpitaphCode.String(code)); n != want {
			t.Errorf("ends with epitaph code %s = %v, want %v\n%v", code, n, want, got)
		}
	}
	if strings.Contains(got.String(), "4242") || strings.Contains(got.String(), "-77") {
		t.Errorf("a code's number became an attribute value:\n%v", got)
	}
}

func TestMetricsCleanHangUpsAreExpected(t *testing.T) {
	peers := []struct {
		name   string
		hangUp func(t *testing.T, addr string)
	}{
		{"vatactor", func(t *testing.T, addr string) {
			client := actors.Spawn(actors.Options{Name: "client", Logger: testLogger(t)})
			defer client.Stop()
			boot, cn, err := client.Dial(context.Background(), "tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := echoText(context.Background(), interop.Echo(boot), "hi"); err != nil {
				t.Fatal(err)
			}
			boot.Release()
			_, _ = cn.Shutdown(context.Background(), supervisor.Epitaph{Code: supervisor.OK})
		}},
		{"go-capnp", func(t *testing.T, addr string) {
			nc, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			rc := rpc.NewConn(rpc.NewStreamTransport(nc), nil)
			boot := interop.Echo(rc.Bootstrap(context.Background()))
			if _, err := echoText(context.Background(), boot, "hi"); err != nil {
				t.Fatal(err)
			}
			boot.Release()
			_ = rc.Close()
		}},
		{"C++", func(t *testing.T, addr string) {
			peer := cxxPeer(t)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			if out, err := exec.CommandContext(ctx, peer, "client", addr).CombinedOutput(); err != nil {
				t.Fatalf("C++ client: %v\n%s", err, out)
			}
		}},
	}
	for _, p := range peers {
		t.Run(p.name, func(t *testing.T) {
			mp, r := meterProvider(t)
			downs := make(chan conn.Down, 1)
			server := meteredVat(t, "server", capnp.Client(interop.NewEchoServer().Client(actors.NewServer)), mp, downs)
			addr, err := server.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			p.hangUp(t, addr.String())
			d := waitDowns(t, downs, 1)[0]
			got := collect(t, r)
			if n := got.sum(metering.ConnectionsEnded, tracing.AttrExpected.Bool(true)); n != 1 {
				t.Errorf("%s hung up (%v): expected ends = %v, want 1\n%v", p.name, d.Reason, n, got)
			}
			if n := got.sum(metering.ConnectionsEnded, tracing.AttrExpected.Bool(false)); n != 0 {
				t.Errorf("%s hung up (%v): counted as unexpected\n%v", p.name, d.Reason, got)
			}
		})
	}
}
