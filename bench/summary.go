package main

// summary is the last JSON line (ratios per scenario, vatactor over
// go-capnp) and the table of targets.
type summary struct {
	byScenario map[string]map[string]float64
	targets    []target
}

// A target is one of the goals vatactor is measured against, with the
// figure this run measured.
type target struct {
	name  string
	value float64
	op    string // "≤" or "≥"
	limit float64
	met   bool
}

func (r *report) summary() summary {
	s := summary{byScenario: map[string]map[string]float64{}}
	add := func(name string, value float64, op string, limit float64) {
		met := value <= limit
		if op == "≥" {
			met = value >= limit
		}
		s.targets = append(s.targets, target{name, value, op, limit, met})
	}
	for _, sc := range scenarios() {
		ours := r.find(sc.name, implVatactor)
		if ours == nil {
			continue
		}
		if sc.costOf != "" {
			base := r.find(sc.costOf+"/un"+sc.feature, implVatactor)
			if base == nil || base.callsPerSec() == 0 || base.allocsPerCall() == 0 {
				continue
			}
			cost := pairedCost(ours, base)
			s.byScenario[sc.name] = map[string]float64{
				"throughput_cost": round(cost, 3),
				"alloc_ratio":     round(ours.allocsPerCall()/base.allocsPerCall(), 3),
			}
			if sc.feature == traced {
				add("tracing cost, "+sc.costOf+" (1 − traced/untraced calls/s)", cost, "≤", 0.10)
			} else {
				add("metering cost, "+sc.costOf+" (1 − metered/unmetered calls/s)", cost, "≤", 0.05)
			}
			continue
		}
		m := map[string]float64{}
		if g := r.find(sc.name, implGRPC); g != nil && g.callsPerSec() > 0 && g.allocsPerCall() > 0 {
			m["speedup_vs_grpc"] = round(ours.callsPerSec()/g.callsPerSec(), 3)
			m["alloc_ratio_vs_grpc"] = round(ours.allocsPerCall()/g.allocsPerCall(), 3)
			if p := g.lat.quantile(0.5); p > 0 {
				m["p50_ratio_vs_grpc"] = round(float64(ours.lat.quantile(0.5))/float64(p), 3)
			}
			setCPURatio(m, "cpu_ratio_vs_grpc", ours, g)
			if sc.name == "echo" {
				add("calls/s echo (vatactor/gRPC-Go)", m["speedup_vs_grpc"], "≥", 3)
			}
			s.byScenario[sc.name] = m
		}
		if cx := r.find(sc.name, implCxx); cx != nil && cx.callsPerSec() > 0 {
			m["speedup_vs_cxx"] = round(ours.callsPerSec()/cx.callsPerSec(), 3)
			if p := cx.lat.quantile(0.5); p > 0 {
				m["p50_ratio_vs_cxx"] = round(float64(ours.lat.quantile(0.5))/float64(p), 3)
			}
			setCPURatio(m, "cpu_ratio_vs_cxx", ours, cx)
			switch sc.name {
			case "echo", "inflight64", "conns100x8", "payload1MiB":
				// Alike only with vatactor's client in a process of its
				// own (-client-process), as the C++ client always is.
				layout := "; the Go pair in one process, C++'s in two"
				if ours.foreign {
					layout = ", each client in its own process"
				}
				add("calls/s "+sc.name+" (vatactor/C++"+layout+")", m["speedup_vs_cxx"], "≥", 1)
			}
			s.byScenario[sc.name] = m
		}
		theirs := r.find(sc.name, implGoCapnp)
		if theirs == nil || theirs.callsPerSec() == 0 || theirs.allocsPerCall() == 0 {
			continue
		}
		m["speedup"] = round(ours.callsPerSec()/theirs.callsPerSec(), 3)
		m["alloc_ratio"] = round(ours.allocsPerCall()/theirs.allocsPerCall(), 3)
		m["bytes_ratio"] = round(ours.bytesPerCall()/theirs.bytesPerCall(), 3)
		if p := theirs.lat.quantile(0.5); p > 0 {
			m["p50_ratio"] = round(float64(ours.lat.quantile(0.5))/float64(p), 3)
		}
		setCPURatio(m, "cpu_ratio", ours, theirs)
		s.byScenario[sc.name] = m
		add("allocs/call "+sc.name+" (vatactor/go-capnp)", m["alloc_ratio"], "≤", 0.5)
		switch sc.name {
		case "echo":
			add("p50 echo (vatactor/go-capnp)", m["p50_ratio"], "≤", 0.7)
			if f := r.floor; f != nil && f.lat.quantile(0.5) > 0 {
				ratio := float64(ours.lat.quantile(0.5)) / float64(f.lat.quantile(0.5))
				m["floor_ratio"] = round(ratio, 3)
				s.byScenario["tcp-floor"] = map[string]float64{
					"calls_per_sec": round(f.callsPerSec(), 0),
					"p50_us":        round(us(f.lat.quantile(0.5)), 1),
				}
				add("p50 echo (vatactor/TCP floor)", ratio, "≤", 2.5)
			}
		case "inflight64", "conns100x8":
			add("calls/s "+sc.name+" (vatactor/go-capnp)", m["speedup"], "≥", 2.5)
		case "payload1MiB":
			add("calls/s payload1MiB (vatactor/go-capnp)", m["speedup"], "≥", 1.5)
			add("bytes/call payload1MiB (vatactor/go-capnp)", m["bytes_ratio"], "≤", 1)
		}
	}
	for _, idle := range r.idle {
		if idle.Impl != implVatactor {
			continue
		}
		add("bytes per idle connection", idle.BytesPerConn, "≤", 8<<10)
		add("goroutines per idle connection", idle.GoroutinesPerConn, "≤", 1)
		add("graceful shutdown of the idle connections (ms)", idle.ShutdownMS, "≤", 2000)
		add("idle peers that saw a reset, not EOF", float64(idle.PeersReset+idle.PeersOther), "≤", 0)
	}
	return s
}

// setCPURatio sets m[key] to the machine's busy time per call of ours
// over theirs, where both were measured.
func setCPURatio(m map[string]float64, key string, ours, theirs *result) {
	o, ok := ours.cpuPerCall()
	t, tok := theirs.cpuPerCall()
	if ok && tok && t > 0 {
		m[key] = round(float64(o)/float64(t), 3)
	}
}
