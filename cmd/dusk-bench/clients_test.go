package main

import (
	"bytes"
	"context"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/duskchat/dusk-relay/internal/bench"
)

// clientsRelayBin builds the daemon once per test (or takes
// DUSK_BENCH_RELAY_BIN).
func clientsRelayBin(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("DUSK_BENCH_RELAY_BIN"); bin != "" {
		return bin
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin, err := bench.BuildDaemon(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

func runClientsQuick(t *testing.T, bin string, extra ...string) string {
	t.Helper()
	// Latency is not asserted (a timed test would fail on a loaded
	// machine or under -race): the pass line then means no errors.
	args := append([]string{"clients", "-quick", "-relay-bin", bin, "-timeout", "2m", "-p99-max", "1m"}, extra...)
	var out, errOut bytes.Buffer
	start := time.Now()
	if code := run(args, &out, &errOut); code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errOut.String())
	}
	t.Logf("%v in %v\n%s", args, time.Since(start), out.String())
	return out.String()
}

// The -quick run against the real daemon: every operation of the app
// happens at both steps (connect ... message RTT over a relayed circuit),
// the relay forwards gossip to the clients, nothing fails, and the largest
// N is the last step. Then the same run with the relay's circuit cap below
// the pairs: the refusals are reported by kind and the step fails.
func TestClientsQuick(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the daemon")
	}
	bin := clientsRelayBin(t)

	out := runClientsQuick(t, bin)
	rows := 0
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || (f[0] != "20" && f[0] != "40") || f[len(f)-1] != "pass" {
			continue
		}
		rows++
		if strings.Contains(line, " - ") {
			t.Errorf("N=%s: an operation has no samples: %s", f[0], line)
		}
	}
	if rows != 2 {
		t.Fatalf("want 2 passing steps (N=20, N=40), got %d:\n%s", rows, out)
	}
	if !strings.Contains(out, "largest N with every p99 <= 1m0s and no errors: 40") {
		t.Errorf("largest N line missing or wrong:\n%s", out)
	}
	m := regexp.MustCompile(`N=40: .*gossip published (\d+), delivered to clients (\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no gossip figures for N=40:\n%s", out)
	}
	if pub, _ := strconv.Atoi(m[1]); pub == 0 {
		t.Errorf("no gossip published at N=40")
	}
	if got, _ := strconv.Atoi(m[2]); got == 0 {
		t.Errorf("the relay forwarded no gossip to the clients at N=40")
	}

	// 20 clients hold 2 circuit pairs; a cap of 1 circuit refuses one.
	// With 20 s reservations (renewed after 15 s / 10) every client
	// renews at least once within the run.
	out = runClientsQuick(t, bin, "-n", "20", "-speedup", "10", "-env", "DUSK_RELAY_MAX_CIRCUITS=1,DUSK_RELAY_RESERVATION_TTL=20s")
	m = regexp.MustCompile(`N=20: connect (\d+), identify \d+, reserve (\d+),`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no operation counts for N=20:\n%s", out)
	}
	if conns, _ := strconv.Atoi(m[1]); conns != 20 {
		t.Errorf("%d connects, want 20 (no reconnects)", conns)
	}
	if rsv, _ := strconv.Atoi(m[2]); rsv < 40 {
		t.Errorf("%d reservations by 20 clients, want each renewed (>= 40)", rsv)
	}
	if !regexp.MustCompile(`error circuit open: RESOURCE_LIMIT_EXCEEDED\s+[1-9]`).MatchString(out) {
		t.Errorf("circuit refusals not reported by kind:\n%s", out)
	}
	if !strings.Contains(out, "no step held every p99") {
		t.Errorf("a step with errors passed:\n%s", out)
	}
}

// The circuit fraction is a fraction of the clients, in whole pairs.
func TestFracPickPairs(t *testing.T) {
	for _, frac := range []float64{0.1, 0.2, 0.5, 1} {
		pairs := 0
		for p := range 500 {
			if fracPick(p, frac) {
				pairs++
			}
		}
		if want := int(frac * 500); pairs != want {
			t.Errorf("frac %v: %d of 500 pairs, want %d", frac, pairs, want)
		}
	}
}
