// Package supervisor holds the lifecycle vocabulary of vatactor: the
// reasons a connection ends with, the epitaph codes a peer may send, and
// the restart policies that read them (Policy: a RestartType, an
// Intensity and a Backoff; Supervisor applies one, as actors.DialSupervised
// does for a client's connection).
//
// Reasons are data, in the Erlang/OTP sense: every connection ends with
// exactly one, its parent receives it as a message, and Expected reports
// whether it is a normal end (not an error) or a failure.
package supervisor
