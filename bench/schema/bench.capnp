# The service the benchmarks (go run ./bench) call, served the same way to
# vatactor's vats and to go-capnp's rpc.Conn. Regenerate with:
# bash scripts/gen.sh
@0xa9d2c8f1e3b75a41;

using Go = import "/go.capnp";
$Go.package("schema");
$Go.import("github.com/vatactor/vatactor/bench/schema");

interface Bench {
  echo @0 (data :Data) -> (data :Data);
  # Returns its argument.

  next @1 () -> (bench :Bench);
  # Returns this same Bench: the links of a pipelined chain.

  upload @2 () -> (sink :Sink);
  # Returns a new Sink for one streamed upload.

  hold @3 () -> ();
  # Stays in flight until unhold() is called: live questions.

  unhold @4 () -> (n :UInt32);
  # Returns every held call; n is how many there were.

  tree @5 (depth :UInt8, fanout :UInt8) -> (tree :Tree);
  # Returns a complete tree of that depth and fan-out, built anew for
  # each call: a deep nested result that costs the server some work.

  put @6 (data :Data) -> (n :UInt64);
  # Returns the length of its argument: a large request, a small reply.

  get @7 (n :UInt32) -> (data :Data);
  # Returns n bytes: a small request, a large reply.
}

struct Tree {
  value @0 :UInt64;
  children @1 :List(Tree);
}

interface Sink {
  write @0 (chunk :Data) -> stream;
  # One chunk of an upload, flow-controlled by the caller's window.

  done @1 () -> (chunks :UInt32, bytes :UInt64);
  # Ends the upload: what the sink received.
}
