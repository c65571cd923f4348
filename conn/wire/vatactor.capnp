# vatactor's two wire extensions to Cap'n Proto RPC. Both are invisible to
# peers that do not know them. The byte layout is documented in the
# README ("The wire"). Regenerate with: bash scripts/gen.sh
@0xa218f274d3d734a0;

using Go = import "/go.capnp";
$Go.package("wire");
$Go.import("github.com/vatactor/vatactor/conn/wire");

const sidecarMagic :UInt64 = 0x524f544341544156;
# The first data word of a sidecar's root struct. Its little-endian bytes
# spell "VATACTOR".

struct Sidecar {
  # A frame may carry one extra, unreferenced, last segment holding a
  # standalone message (root pointer at word 0) whose root is a Sidecar.
  # Implementations that do not know it read the root of segment 0 and never
  # reach it.

  magic @0 :UInt64;
  # Always sidecarMagic.

  features @1 :UInt64;
  # Bit set of what the sender understands: bit n is Feature n.

  traceparent @2 :Text;
  # W3C trace context of the call this frame carries (empty: none).

  tracestate @3 :Text;

  conn @4 :Text;
  # W3C traceparent of the sender's connection span; in the first sidecar
  # of a connection only (empty: none). The receiver's connection span
  # becomes its child.

  timeout @5 :UInt64;
  # On a Call: the microseconds left before the caller's deadline when the
  # frame was written (0: no deadline). The callee's context ends that
  # long after the frame is read; a call still waiting then is refused
  # without running.
}

enum Feature {
  epitaphs @0;
  # The sender reads epitaphs: an OK epitaph may be sent to it.
}

const epitaphDetailId :UInt64 = 0xf3e276361a8c2916;
# The Exception.details id under which an Epitaph travels: in the final
# Abort of a connection, and in the exception of a call that a draining
# peer refused without processing it.

struct Epitaph {
  # The last word of a connection, FIDL style.

  code @0 :Int32;
  # 0 = OK; negative = system codes (zircon values); positive = application.

  text @1 :Text;
  # A short human-readable message.
}
