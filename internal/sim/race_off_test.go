//go:build !race

package sim

const raceSeeds = 0
