//go:build race

package conn

// raceOn: under the race detector, sync.Pool drops a share of what it is
// given, on purpose: reuse cannot be measured.
const raceOn = true
