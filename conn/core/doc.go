// Package core is the Cap'n Proto RPC protocol of one connection as a pure
// state machine, in the etcd-io/raft style: it imports no net, no sync and
// no protoactor, starts no goroutine and reads no clock.
//
// Everything that happens to a connection is an Input given to Core.Step,
// with the time it happened as a value: a message from the peer, a request
// of local code (call, bootstrap, release, cancel, shutdown with an
// epitaph), the result of a call we delivered, a deadline that fired, a
// child actor that stopped, the socket's end. Everything the connection
// does is an Output that Step returns, as data: messages to send, calls
// to deliver to local capabilities, settlements of local calls, child
// actors to spawn and stop, deadlines to arm, the socket to close,
// lifecycle events and log records. Whoever runs a Core (the connection
// actor in package conn, or the deterministic simulation in internal/sim)
// carries the outputs out, in order, and feeds back what comes of them.
//
// The core holds the connection's four tables (questions, answers,
// exports, imports) and its embargoes, and routes every call: a call on
// an import goes to the peer; a call held by an embargo or pipelined on
// an answer still running waits in the core and is let through in the
// order it was made (E-order); a call on one of the peer's own
// capabilities reflected back to it is forwarded on the same connection,
// so a Disembargo that follows it cannot overtake it. Local capabilities
// are Refs chosen by the runner; the core never calls them.
//
// The connection's end is a sequence of named phases (see Phase), each
// one function of the core: drain, stopQuestions, stopExports,
// releaseImports, sendEpitaph, then the closer's closeWrite, linger and
// closeSocket, which the runner carries out and reports with SocketClosed.
package core
