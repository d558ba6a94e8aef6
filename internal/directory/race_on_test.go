//go:build race

package directory

// raceEnabled: the race detector instruments modernc's transpiled SQLite
// too (~40x slower), so data-heavy tests shrink under -race.
const raceEnabled = true
