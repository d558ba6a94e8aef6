package config

import (
	"testing"

	"go.uber.org/goleak"
)

// Config starts no goroutines; the check guards against one creeping in
// (e.g. a watcher for .env).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
