package main

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/duskchat/dusk-relay/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, testutil.IgnoreLibp2p()...) }

// runBench runs dusk-bench with args against the daemon in
// DUSK_BENCH_RELAY_BIN (default: go build) and fails the test on a
// non-zero exit.
func runBench(t *testing.T, args ...string) (stdout, stderr string) {
	t.Helper()
	if bin := os.Getenv("DUSK_BENCH_RELAY_BIN"); bin != "" {
		args = append(args, "-relay-bin", bin)
	}
	var out, errOut bytes.Buffer
	if code := run(args, &out, &errOut); code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errOut.String())
	}
	return out.String(), errOut.String()
}

// The quickest `turn` path against our server only: builds and starts the
// real daemon, allocates through it and relays packets, so the tool cannot
// silently rot. Numbers are tiny; nothing is timed.
func TestTURNQuickOurs(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the daemon")
	}
	out, _ := runBench(t, "turn", "-quick", "-only", "ours", "-allocs", "1,3", "-duration", "300ms", "-warmup", "100ms")
	rows := 0
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		// payload B, allocs, W, pps, loss %, CPU ms/kpkt, stalls
		if len(f) != 7 || f[0] != "200" {
			continue
		}
		rows++
		pps, err := strconv.ParseFloat(f[3], 64)
		if err != nil || pps <= 0 {
			t.Errorf("allocs %s: pps %q, want > 0", f[1], f[3])
		}
		loss, err := strconv.ParseFloat(f[4], 64)
		if err != nil || loss >= 100 {
			t.Errorf("allocs %s: loss %q, want < 100%%", f[1], f[4])
		}
	}
	if rows != 2 {
		t.Fatalf("want 2 result rows (1 and 3 allocations), got %d:\n%s", rows, out)
	}
	if !strings.Contains(out, "allocs/s") {
		t.Errorf("no allocation setup rate in output:\n%s", out)
	}
}
