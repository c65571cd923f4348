# The calculator service of samples/calculator. Regenerate with: bash scripts/gen.sh
@0xe1c5a9b3d7f20468;

using Go = import "/go.capnp";
$Go.package("calculator");
$Go.import("github.com/vatactor/vatactor/samples/calculator/calculator");

interface Calculator {
  # Evaluates expressions. Values are capabilities, so a client can pipeline:
  # evaluate an expression, then read it or pass it to another expression,
  # without waiting for the first answer.

  evaluate @0 (expression :Expression) -> (value :Value);

  getOperator @1 (op :Operator) -> (func :Function);
  # Returns one of the server's built-in binary functions.

  struct Expression {
    union {
      literal @0 :Float64;
      previousResult @1 :Value;
      # A Value returned by an earlier evaluate() (possibly still a promise).
      parameter @2 :UInt32;
      # Only inside a function body: the index of an argument.
      call :group {
        function @3 :Function;
        params @4 :List(Expression);
      }
    }
  }

  interface Value {
    read @0 () -> (value :Float64);
  }

  interface Function {
    # A function of the client's, passed to the server and called back by it,
    # or one of the server's own operators.
    call @0 (params :List(Float64)) -> (value :Float64);
  }

  enum Operator {
    add @0;
    subtract @1;
    multiply @2;
    divide @3;
  }
}
