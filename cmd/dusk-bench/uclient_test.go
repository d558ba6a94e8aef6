package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func readTestdata(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Outputs captured from turnutils_uclient (coturn 4.6.1) runs against
// the daemon and coturn on loopback.
func TestParseUclient(t *testing.T) {
	st, err := parseUclient(readTestdata(t, "uclient-ours-m100-n100.txt"))
	if err != nil {
		t.Fatal(err)
	}
	// The progress lines (msz=..., tot_send_msgs=9xxx) must not win over
	// the final totals.
	if st.Sent != 10000 || st.Received != 10000 || st.Lost != 0 || st.LossPct != 0 || st.SendDropped != 0 {
		t.Errorf("ours: sent %d received %d lost %d (%v%%) dropped %d, want 10000 10000 0 0 0", st.Sent, st.Received, st.Lost, st.LossPct, st.SendDropped)
	}
	if st.RTTAvgMs != 0.0444 || st.RTTMinMs != 0 || st.RTTMaxMs != 12 {
		t.Errorf("ours: RTT %v (min %d max %d), want 0.0444 (0, 12)", st.RTTAvgMs, st.RTTMinMs, st.RTTMaxMs)
	}
	if st.JitterAvgMs != 0.0424 || st.JitterMaxMs != 8 {
		t.Errorf("ours: jitter %v (max %d), want 0.0424 (8)", st.JitterAvgMs, st.JitterMaxMs)
	}
	if st.ConnectS != 10 || st.TransmitS != 6 || st.Retries437 != 0 || len(st.Errors) != 0 {
		t.Errorf("ours: connect %d s transmit %d s, 437 retries %d, errors %v; want 10, 6, 0, none", st.ConnectS, st.TransmitS, st.Retries437, st.Errors)
	}

	st, err = parseUclient(readTestdata(t, "uclient-coturn-m50-n50.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Sent != 2500 || st.Received != 2500 || st.RTTAvgMs != 0.0784 || st.RTTMaxMs != 4 || st.JitterAvgMs != 0.0016 {
		t.Errorf("coturn: sent %d received %d RTT %v max %d jitter %v; want 2500 2500 0.0784 4 0.0016", st.Sent, st.Received, st.RTTAvgMs, st.RTTMaxMs, st.JitterAvgMs)
	}
}

// A client that gives up (error answers, exit status 255) has no summary:
// it must be a failure, never 0 % loss.
func TestParseUclientAborted(t *testing.T) {
	st, err := parseUclient(readTestdata(t, "uclient-ours-quota-486.txt"))
	if err == nil {
		t.Fatalf("486 abort parsed as a result: %+v", st)
	}
	if st.Errors[486] != 2 {
		t.Errorf("errors %v, want 486×2", st.Errors)
	}
	if got := st.errorCodes(); got != "486×2" {
		t.Errorf("errorCodes = %q", got)
	}

	st, err = parseUclient(readTestdata(t, "uclient-wrong-secret.txt"))
	if err == nil || !strings.Contains(err.Error(), "Cannot complete Allocation") {
		t.Fatalf("wrong secret: err %v, want the client's ERROR line", err)
	}
	if len(st.ErrorLines) != 1 {
		t.Errorf("ERROR lines %q, want the repeated one once", st.ErrorLines)
	}

	if _, err := parseUclient(""); err == nil {
		t.Error("empty output parsed as a result")
	}

	// Summary lines present but nothing sent (uclient then prints nan %).
	zero := "0: : start_mclient: tot_send_msgs=0, tot_recv_msgs=0\n" +
		"0: : Total lost packets 0 (-nan%), total send dropped 0 (-nan%)\n" +
		"0: : Average round trip delay 0.000000 ms; min = 0 ms, max = 0 ms\n"
	if _, err := parseUclient(zero); err == nil {
		t.Error("a run that sent nothing parsed as a result")
	}
}

// The default run (-m 1000 -n 300): 437 answers and the client's retries
// are counted, and a run with loss parses its lost packets.
func TestParseUclientDefaultRun(t *testing.T) {
	st, err := parseUclient(readTestdata(t, "uclient-ours-m1000-n300.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Sent != 300000 || st.Received != 299586 || st.Lost != 414 || st.LossPct != 0.138 {
		t.Errorf("ours: sent %d received %d lost %d (%v%%), want 300000 299586 414 (0.138%%)", st.Sent, st.Received, st.Lost, st.LossPct)
	}
	if st.RTTAvgMs != 0.231877 || st.RTTMaxMs != 54 || st.ConnectS != 117 || st.TransmitS != 16 {
		t.Errorf("ours: RTT %v max %d, connect %d s transmit %d s; want 0.231877 54 117 16", st.RTTAvgMs, st.RTTMaxMs, st.ConnectS, st.TransmitS)
	}
	// 16 "error 437 ()" lines (our server sends no reason phrase), 15 of
	// them followed by "trying allocate again 437...".
	if st.Errors[437] != 16 || st.Retries437 != 15 || st.errorCodes() != "437×16" {
		t.Errorf("ours: errors %v (%q), 437 retries %d; want 437×16 and 15", st.Errors, st.errorCodes(), st.Retries437)
	}

	st, err = parseUclient(readTestdata(t, "uclient-coturn-m1000-n300.txt"))
	if err != nil {
		t.Fatal(err)
	}
	// coturn's 437s carry "Mismatched allocation: wrong transaction ID".
	if st.Sent != 300000 || st.Received != 300000 || st.Errors[437] != 13 || st.Retries437 != 12 {
		t.Errorf("coturn: sent %d received %d, errors %v, 437 retries %d; want 300000 300000 437×13 12", st.Sent, st.Received, st.Errors, st.Retries437)
	}
}

// `uclient -quick` end to end: the real daemon and coturn, each saturated
// by the real turnutils_uclient. Asserts on the parsed figures of both.
func TestUclientQuick(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the daemon, coturn and turnutils_uclient")
	}
	for _, bin := range []string{"turnutils_uclient", "turnserver"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not in PATH (apt-get install coturn): skipping the uclient end-to-end run", bin)
		}
	}
	out, errOut := runBench(t, "uclient", "-quick")
	if strings.Contains(out, "FAILED") {
		t.Fatalf("a client run failed:\n%s\nstderr:\n%s", out, errOut)
	}
	seen := map[string]bool{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		// round, server, sent, received, loss %, mean RTT, max RTT, jitter,
		// error answers, 437 retries, connect s, transmit s, wall s,
		// server CPU s, client CPU s
		if len(f) != 15 || f[0] != "1" {
			continue
		}
		seen[f[1]] = true
		sent, err1 := strconv.Atoi(f[2])
		recv, err2 := strconv.Atoi(f[3])
		loss, err3 := strconv.ParseFloat(f[4], 64)
		rtt, err4 := strconv.ParseFloat(f[5], 64)
		if err1 != nil || err2 != nil || err3 != nil || err4 != nil {
			t.Errorf("%s: unparsable row %q", f[1], line)
			continue
		}
		// -quick: -m 50 -n 50, 50 sessions x 50 messages.
		if sent != 2500 || recv <= 0 || recv > sent {
			t.Errorf("%s: sent %d received %d, want 2500 and 0 < received <= sent", f[1], sent, recv)
		}
		if want := 100 * float64(sent-recv) / float64(sent); loss < 0 || loss > 50 || loss-want > 0.001 || want-loss > 0.001 {
			t.Errorf("%s: loss %v%%, want %.3f%% (from sent/received) and < 50%%", f[1], loss, want)
		}
		if rtt < 0 || rtt > 1000 {
			t.Errorf("%s: mean RTT %v ms", f[1], rtt)
		}
	}
	if !seen["ours"] || !seen["coturn"] {
		t.Fatalf("want a result row for ours and coturn, got %v:\n%s", seen, out)
	}
	if !strings.Contains(out, "ours/coturn") {
		t.Errorf("no ours/coturn summary:\n%s", out)
	}
}
