package actors_test

import (
	"log/slog"
	"os"
	"testing"
)

// testLogger logs every wire message when VATACTOR_TRACE is set.
func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("VATACTOR_TRACE") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
