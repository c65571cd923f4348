// Package tracing is vatactor's OpenTelemetry span model: the names and
// attributes of its spans, how a call's trace context crosses the wire in
// the sidecar segment, and how methods are named.
//
// The library takes a trace.TracerProvider (nil: the global one) and never
// creates exporters itself; package tracing/otlp sets one up from the
// standard OTEL_* environment variables, and package tracing/spantree
// prints finished spans as a compact tree.
//
// The spans:
//
//   - capnp.conn (internal): one connection's life, from accept or dial to
//     the closed socket. Attributes: peer, role, reason, epitaph, table
//     counts at close. Events: up, bootstrap, busy, idle, epitaph.sent,
//     epitaph.received, abort.received, eof.sent, eof.received. A dialed
//     connection's span is a child of the dial's context; an accepted
//     connection's span is a child of the peer's connection span when the
//     peer is one of ours (its first sidecar names that span).
//   - shutdown (internal), a child of capnp.conn: the connection's end,
//     with one child span per step (drain, stopQuestions, stopExports,
//     releaseImports, sendEpitaph, closeWrite, linger, closeSocket), in
//     order.
//   - Interface.method (client): one per question, a child of the caller's
//     context. Its W3C trace context travels with the Call in the sidecar.
//   - Interface.method (server): one per answer, a child of the caller's
//     question span across the wire. The callee's context carries it, so
//     calls made while answering continue the trace.
//   - capnp.export (internal), a child of capnp.conn: one capability
//     exported to the peer, from its first export to its release.
//
// Calls carry rpc.system.name=capnp, rpc.method (the schema's
// "file.capnp:Interface.method"), rpc.response.status_code (OK or the
// exception type: FAILED, OVERLOADED, DISCONNECTED, UNIMPLEMENTED, or
// CANCELED when the caller gave up) and, when it failed, error.type.
package tracing
