# Test services shared by the interop tests and the C++ reference peer
# (internal/cxxpeer). Regenerate with: bash scripts/gen.sh
@0xc2e7d1a3b4f50691;

using Go = import "/go.capnp";
$Go.package("interop");
$Go.import("github.com/vatactor/vatactor/interop");

interface Echo {
  # The service every interop peer serves as its bootstrap capability.

  echo @0 (text :Text) -> (text :Text);
  # Returns its argument.

  fail @1 (type :UInt8, reason :Text) -> ();
  # Always throws an exception of the given type (0 failed, 1 overloaded,
  # 2 disconnected, 3 unimplemented) with the given reason.

  self @2 (tag :Text) -> (echo :Echo);
  # Returns an Echo whose echo() prefixes results with `tag`; used for
  # capabilities in results and for pipelining several levels deep.

  newCounter @3 () -> (counter :Counter);
  # Returns a new Counter; liveCounters() counts the ones not yet released.

  liveCounters @4 () -> (n :UInt32);

  callBack @5 (callback :Callback, text :Text) -> (text :Text);
  # Calls callback.call(text) and returns what it returned: a capability
  # passed in params and called back across the connection.

  wait @6 (ms :UInt32) -> (ms :UInt32);
  # Returns its argument after ms milliseconds, or fails when the call is
  # cancelled first: a call that stays in flight. Runs concurrently with
  # other calls. (The C++ peer leaves it unimplemented.)
}

interface Counter {
  next @0 () -> (n :UInt32);
}

interface Callback {
  call @0 (text :Text) -> (text :Text);
}
