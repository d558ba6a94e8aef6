package directory

import (
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/duskchat/dusk-relay/internal/testutil"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		// Re-executed as the daemon stand-in of the kill -9 test.
		os.Exit(runHelper())
	}
	goleak.VerifyTestMain(m, testutil.IgnoreLibp2p()...)
}
