// The C++ reference in go run ./bench, built against Debian's libcapnp by
// internal/cxxpeer.BuildBench: the Bench service of bench/schema, served
// and called by the C++ implementation itself.
//
//   bench serve HOST
//       serve Bench on HOST:0; print "port N" when ready
//   bench run HOST:PORT SCENARIO CONNS WORKERS WARMUP MILLIS
//       CONNS connections, WORKERS calls in flight on each: each worker
//       does WARMUP ops, then all repeat the op for MILLIS ms; print
//       "ops N elapsed_ns T cpu_ns C" (C: the machine's busy time over
//       those MILLIS ms, from /proc/stat, where it can be read) and then
//       one line with each op's latency in ns. SCENARIO: echo64,
//       echo1MiB, put1MiB, get1MiB, pipeline3, stream10k, tree.

#include "bench.capnp.h"
#include <capnp/ez-rpc.h>
#include <kj/async-io.h>
#include <kj/debug.h>
#include <kj/time.h>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

class SinkImpl final: public Sink::Server {
protected:
  kj::Promise<void> write(WriteContext context) override {
    ++chunks;
    bytes += context.getParams().getChunk().size();
    return kj::READY_NOW;
  }
  kj::Promise<void> done(DoneContext context) override {
    auto r = context.getResults();
    r.setChunks(chunks);
    r.setBytes(bytes);
    return kj::READY_NOW;
  }

private:
  uint32_t chunks = 0;
  uint64_t bytes = 0;
};

class BenchImpl final: public Bench::Server {
protected:
  kj::Promise<void> echo(EchoContext context) override {
    context.getResults().setData(context.getParams().getData());
    return kj::READY_NOW;
  }
  kj::Promise<void> next(NextContext context) override {
    context.getResults().setBench(thisCap());
    return kj::READY_NOW;
  }
  kj::Promise<void> upload(UploadContext context) override {
    context.getResults().setSink(kj::heap<SinkImpl>());
    return kj::READY_NOW;
  }
  kj::Promise<void> put(PutContext context) override {
    context.getResults().setN(context.getParams().getData().size());
    return kj::READY_NOW;
  }
  kj::Promise<void> get(GetContext context) override {
    auto n = context.getParams().getN();
    KJ_REQUIRE(n <= (1 << 20));
    auto data = context.getResults().initData(n);
    memset(data.begin(), 0, n);
    return kj::READY_NOW;
  }
  kj::Promise<void> tree(TreeContext context) override {
    auto p = context.getParams();
    uint64_t next = 0;
    fill(context.getResults().initTree(), p.getDepth(), p.getFanout(), next);
    return kj::READY_NOW;
  }

private:
  static void fill(Tree::Builder t, uint8_t depth, uint8_t fanout, uint64_t& next) {
    t.setValue(next++);
    if (depth <= 1) return;
    auto kids = t.initChildren(fanout);
    for (uint i = 0; i < fanout; i++) fill(kids[i], depth - 1, fanout, next);
  }
};

// walk sums a tree's values and counts its nodes.
static void walk(Tree::Reader t, uint64_t& sum, uint64_t& n) {
  sum += t.getValue();
  ++n;
  for (auto c: t.getChildren()) walk(c, sum, n);
}

static int runServer(kj::StringPtr host) {
  capnp::EzRpcServer server(kj::heap<BenchImpl>(), host, 0);
  auto& ws = server.getWaitScope();
  uint port = server.getPort().wait(ws);
  std::cout << "port " << port << std::endl;
  kj::NEVER_DONE.wait(ws);
  return 0;
}

static kj::TimePoint now() { return kj::systemPreciseMonotonicClock().now(); }

static const size_t streamChunks = 10000;

// One op of a scenario on b.
class Op {
public:
  Op(kj::StringPtr scenario): scenario(scenario) {
    size_t n = scenario == "echo1MiB" || scenario == "put1MiB" ? (1 << 20) : 64;
    payload = kj::heapArray<kj::byte>(n);
    memset(payload.begin(), 0, n);
    chunk = kj::heapArray<kj::byte>(1024);
    memset(chunk.begin(), 0, chunk.size());
    KJ_REQUIRE(scenario == "echo64" || scenario == "echo1MiB" || scenario == "pipeline3" || scenario == "stream10k" ||
               scenario == "tree" || scenario == "put1MiB" || scenario == "get1MiB", "unknown scenario", scenario);
  }

  kj::Promise<void> run(Bench::Client b) {
    if (scenario == "pipeline3") {
      auto r1 = b.nextRequest().send();
      auto r2 = r1.getBench().nextRequest().send();
      auto req = r2.getBench().echoRequest();
      req.setData(payload);
      return req.send().then([](auto resp) {
        KJ_REQUIRE(resp.getData().size() == 64);
      }).attach(kj::mv(r1), kj::mv(r2));
    }
    if (scenario == "put1MiB") {
      auto req = b.putRequest();
      req.setData(payload);
      return req.send().then([](auto resp) { KJ_REQUIRE(resp.getN() == (1 << 20)); });
    }
    if (scenario == "get1MiB") {
      auto req = b.getRequest();
      req.setN(1 << 20);
      return req.send().then([](auto resp) { KJ_REQUIRE(resp.getData().size() == (1 << 20)); });
    }
    if (scenario == "tree") {
      // 6 levels of 4 children (bench/scenario.go's treeDepth, treeFanout).
      auto req = b.treeRequest();
      req.setDepth(6);
      req.setFanout(4);
      return req.send().then([](auto resp) {
        uint64_t sum = 0, n = 0;
        walk(resp.getTree(), sum, n);
        KJ_REQUIRE(n == 1365 && sum == 1365 * 1364 / 2, n, sum);
      });
    }
    if (scenario == "stream10k") {
      auto sink = b.uploadRequest().send().getSink();
      return write(sink, 0).then([sink]() mutable {
        return sink.doneRequest().send().then([](auto resp) {
          KJ_REQUIRE(resp.getChunks() == streamChunks && resp.getBytes() == streamChunks * 1024);
        });
      });
    }
    auto req = b.echoRequest();
    req.setData(payload);
    size_t n = payload.size();
    return req.send().then([n](auto resp) { KJ_REQUIRE(resp.getData().size() == n); });
  }

private:
  // write streams chunks i… to sink, each sent when flow control lets it.
  kj::Promise<void> write(Sink::Client sink, size_t i) {
    if (i == streamChunks) return kj::READY_NOW;
    auto req = sink.writeRequest();
    req.setChunk(chunk);
    return req.send().then([this, sink, i]() mutable { return write(sink, i + 1); });
  }

  kj::StringPtr scenario;
  kj::Array<kj::byte> payload;
  kj::Array<kj::byte> chunk;
};

struct Worker {
  uint64_t ops = 0;
  std::vector<int64_t> lat;
};

// The machine's busy time since boot in ns (user, nice, system, irq and
// softirq of /proc/stat's "cpu" line, in ticks of 10 ms), or -1.
static long long machineBusyNs() {
  FILE* f = fopen("/proc/stat", "r");
  if (f == nullptr) return -1;
  unsigned long long user, nice, system, idle, iowait, irq, softirq;
  int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu", &user, &nice, &system, &idle, &iowait, &irq, &softirq);
  fclose(f);
  if (n != 7) return -1;
  return (long long)(user + nice + system + irq + softirq) * 10000000LL;
}

static kj::Promise<void> warm(Op& op, Bench::Client b, int n) {
  if (n == 0) return kj::READY_NOW;
  return op.run(b).then([&op, b, n]() mutable { return warm(op, b, n - 1); });
}

static kj::Promise<void> measure(Op& op, Bench::Client b, Worker& w, kj::TimePoint end) {
  auto t0 = now();
  return op.run(b).then([&op, b, &w, end, t0]() mutable -> kj::Promise<void> {
    auto t1 = now();
    w.lat.push_back((t1 - t0) / kj::NANOSECONDS);
    ++w.ops;
    if (t1 >= end) return kj::READY_NOW;
    return measure(op, b, w, end);
  });
}

static int runClient(kj::StringPtr addr, kj::StringPtr scenario, int conns, int workers, int warmup, long millis) {
  Op op(scenario);
  std::vector<kj::Own<capnp::EzRpcClient>> clients;
  std::vector<Bench::Client> benches;
  for (int i = 0; i < conns; i++) {
    clients.push_back(kj::heap<capnp::EzRpcClient>(addr));
    benches.push_back(clients.back()->getMain<Bench>());
  }
  auto& ws = clients[0]->getWaitScope();
  {
    kj::Vector<kj::Promise<void>> ps;
    for (auto& b: benches)
      for (int k = 0; k < workers; k++) ps.add(warm(op, b, warmup));
    kj::joinPromises(ps.releaseAsArray()).wait(ws);
  }
  std::vector<Worker> ws2(benches.size() * workers);
  long long busy0 = machineBusyNs();
  auto start = now();
  auto end = start + millis * kj::MILLISECONDS;
  {
    kj::Vector<kj::Promise<void>> ps;
    size_t k = 0;
    for (auto& b: benches)
      for (int j = 0; j < workers; j++) ps.add(measure(op, b, ws2[k++], end));
    kj::joinPromises(ps.releaseAsArray()).wait(ws);
  }
  auto elapsed = (now() - start) / kj::NANOSECONDS;
  long long busy1 = machineBusyNs();
  uint64_t ops = 0;
  for (auto& w: ws2) ops += w.ops;
  printf("ops %llu elapsed_ns %lld", (unsigned long long)ops, (long long)elapsed);
  if (busy0 >= 0 && busy1 >= busy0) printf(" cpu_ns %lld", busy1 - busy0);
  printf("\n");
  for (auto& w: ws2)
    for (auto l: w.lat) printf("%lld ", (long long)l);
  printf("\n");
  fflush(stdout);
  return 0;
}

int main(int argc, const char* argv[]) {
  if (argc == 3 && kj::StringPtr(argv[1]) == "serve") return runServer(argv[2]);
  if (argc == 8 && kj::StringPtr(argv[1]) == "run")
    return runClient(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]), atoi(argv[6]), atol(argv[7]));
  std::cerr << "usage: bench serve HOST | bench run HOST:PORT SCENARIO CONNS WORKERS WARMUP MILLIS" << std::endl;
  return 2;
}
