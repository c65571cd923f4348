// The C++ reference peer of the interop tests, built against Debian's
// libcapnp by internal/cxxpeer.Build.
//
//   peer serve HOST         serve Echo on HOST:0; print "port N" when ready
//   peer client HOST:PORT   run the interop suite against an Echo server;
//                           print one "ok NAME" or "FAIL NAME: why" per case
//                           and exit 0 only if all passed

#include "interop.capnp.h"
#include <capnp/ez-rpc.h>
#include <kj/debug.h>
#include <kj/async-io.h>
#include <iostream>
#include <string>

static int liveCounters = 0;

class CounterImpl final: public Counter::Server {
public:
  CounterImpl() { ++liveCounters; }
  ~CounterImpl() noexcept(false) { --liveCounters; }

protected:
  kj::Promise<void> next(NextContext context) override {
    context.getResults().setN(++n);
    return kj::READY_NOW;
  }

private:
  uint32_t n = 0;
};

static kj::Exception::Type excType(uint8_t t) {
  switch (t) {
    case 1: return kj::Exception::Type::OVERLOADED;
    case 2: return kj::Exception::Type::DISCONNECTED;
    case 3: return kj::Exception::Type::UNIMPLEMENTED;
    default: return kj::Exception::Type::FAILED;
  }
}

class EchoImpl final: public Echo::Server {
public:
  explicit EchoImpl(kj::String tag): tag(kj::mv(tag)) {}

protected:
  kj::Promise<void> echo(EchoContext context) override {
    context.getResults().setText(kj::str(tag, context.getParams().getText()));
    return kj::READY_NOW;
  }

  kj::Promise<void> fail(FailContext context) override {
    auto p = context.getParams();
    return kj::Exception(excType(p.getType()), __FILE__, __LINE__, kj::str(p.getReason()));
  }

  kj::Promise<void> self(SelfContext context) override {
    context.getResults().setEcho(kj::heap<EchoImpl>(kj::str(tag, context.getParams().getTag())));
    return kj::READY_NOW;
  }

  kj::Promise<void> newCounter(NewCounterContext context) override {
    context.getResults().setCounter(kj::heap<CounterImpl>());
    return kj::READY_NOW;
  }

  kj::Promise<void> liveCounters(LiveCountersContext context) override {
    context.getResults().setN(::liveCounters);
    return kj::READY_NOW;
  }

  kj::Promise<void> callBack(CallBackContext context) override {
    auto params = context.getParams();
    auto req = params.getCallback().callRequest();
    req.setText(params.getText());
    return req.send().then([context](capnp::Response<Callback::CallResults>&& resp) mutable {
      context.getResults().setText(resp.getText());
    });
  }

private:
  kj::String tag;
};

class UpperCallback final: public Callback::Server {
protected:
  kj::Promise<void> call(CallContext context) override {
    std::string s = context.getParams().getText().cStr();
    for (auto& ch: s) ch = toupper(ch);
    context.getResults().setText(kj::str(s.c_str(), "!"));
    return kj::READY_NOW;
  }
};

static int failures = 0;

static void report(const char* name, bool ok, kj::StringPtr why = "") {
  if (ok) {
    std::cout << "ok " << name << std::endl;
  } else {
    ++failures;
    std::cout << "FAIL " << name << ": " << why.cStr() << std::endl;
  }
}

static int runClient(kj::StringPtr addr) {
  capnp::EzRpcClient client(addr);
  auto& ws = client.getWaitScope();
  auto& timer = client.getIoProvider().getTimer();
  Echo::Client echo = client.getMain<Echo>();

  {
    auto req = echo.echoRequest();
    req.setText("hello");
    auto text = kj::str(req.send().wait(ws).getText());
    report("plain call", text == "hello", text);
  }
  {
    auto r1 = echo.selfRequest();
    r1.setTag("a:");
    auto p1 = r1.send();
    auto r2 = p1.getEcho().selfRequest();
    r2.setTag("b:");
    auto p2 = r2.send();
    auto r3 = p2.getEcho().echoRequest();
    r3.setText("x");
    auto text = kj::str(r3.send().wait(ws).getText());
    report("pipelined two levels deep", text == "a:b:x", text);
  }
  {
    auto r = echo.selfRequest();
    r.setTag("r:");
    auto child = r.send().wait(ws).getEcho();
    bool ok = true;
    kj::String last;
    for (int i = 0; i < 3; i++) {
      auto req = child.echoRequest();
      req.setText("y");
      last = kj::str(req.send().wait(ws).getText());
      ok = ok && last == "r:y";
    }
    report("capability in results", ok, last);
  }
  {
    auto req = echo.callBackRequest();
    req.setText("ping");
    req.setCallback(kj::heap<UpperCallback>());
    auto text = kj::str(req.send().wait(ws).getText());
    report("capability in params called back", text == "PING!", text);
  }
  for (uint8_t t = 0; t < 4; t++) {
    auto req = echo.failRequest();
    req.setType(t);
    req.setReason(kj::str("boom ", t));
    auto want = excType(t);
    kj::String why = kj::str("no exception");
    bool ok = req.send().then(
        [](auto&&) { return false; },
        [&](kj::Exception&& e) {
          why = kj::str(e.getType(), " ", e.getDescription());
          std::string desc = e.getDescription().cStr();
          return e.getType() == want && desc.find(kj::str("boom ", t).cStr()) != std::string::npos;
        }).wait(ws);
    report(kj::str("exception type ", t).cStr(), ok, why);
  }
  {
    auto live = [&]() { return echo.liveCountersRequest().send().wait(ws).getN(); };
    uint32_t before = live();
    kj::Maybe<Counter::Client> counter = echo.newCounterRequest().send().wait(ws).getCounter();
    bool ok = true;
    KJ_IF_MAYBE(c, counter) {
      for (uint32_t want = 1; want <= 2; want++) {
        ok = ok && c->nextRequest().send().wait(ws).getN() == want;
      }
    }
    ok = ok && live() == before + 1;
    counter = nullptr;  // release
    bool released = false;
    for (int i = 0; i < 500 && !released; i++) {
      released = live() == before;
      if (!released) timer.afterDelay(10 * kj::MILLISECONDS).wait(ws);
    }
    report("release observed by the server", ok && released,
           kj::str("held ok=", ok, " released=", released));
  }
  return failures == 0 ? 0 : 1;
}

static int runServer(kj::StringPtr host) {
  capnp::EzRpcServer server(kj::heap<EchoImpl>(kj::str("")), host, 0);
  auto& ws = server.getWaitScope();
  uint port = server.getPort().wait(ws);
  std::cout << "port " << port << std::endl;
  // Serve until killed.
  kj::NEVER_DONE.wait(ws);
  return 0;
}

int main(int argc, const char* argv[]) {
  if (argc != 3) {
    std::cerr << "usage: peer serve HOST | peer client HOST:PORT" << std::endl;
    return 2;
  }
  kj::StringPtr mode = argv[1];
  if (mode == "serve") return runServer(argv[2]);
  if (mode == "client") return runClient(argv[2]);
  std::cerr << "unknown mode " << argv[1] << std::endl;
  return 2;
}
