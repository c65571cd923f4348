//go:build race

package sim

// The race detector makes a run ten times slower and finds nothing in a
// single goroutine: under it, TestSimulation runs a sample (CI runs the
// full count without it).
const raceSeeds = 300
