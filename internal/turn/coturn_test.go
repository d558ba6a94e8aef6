package turn

import (
	"context"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
)

// TestCoturnClient drives our server with coturn's turnutils_uclient, a
// TURN client nobody here wrote: it derives the REST credentials from the
// shared secret itself (-W), allocates, and relays between its own clients
// (-y: each client sends to the other's relayed address).
func TestCoturnClient(t *testing.T) {
	bin, err := exec.LookPath("turnutils_uclient")
	if err != nil {
		t.Skip("turnutils_uclient not installed (Debian package coturn; .ci/run installs it)")
	}
	for _, c := range []struct {
		name string
		args []string
	}{
		{"udp", nil},
		{"tcp", []string{"-t"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel() // uclient idles a few seconds at start; overlap the two runs
			s, err := New(testConfig(), testSecret, zap.NewNop(), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			port := s.UDPAddr().Port
			if c.name == "tcp" {
				port = s.TCPAddr().Port
			}
			before := s.Stats()
			const messages = 10
			args := append([]string{
				"-y",      // client to client through two relays
				"-c",      // no RTCP allocation pair
				"-m", "1", // one client pair
				"-n", strconv.Itoa(messages),
				"-l", "120", // bytes per message
				"-z", "5", // ms between messages
				"-W", string(testSecret), // REST shared secret: uclient makes "<expiry>:<user>" itself
				"-u", peerA,
				"-p", strconv.Itoa(port),
			}, c.args...)
			args = append(args, "127.0.0.1")
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
			text := string(out)
			if err != nil {
				t.Fatalf("%s %s: %v\n%s", bin, strings.Join(args, " "), err, text)
			}
			// uclient reports e.g. "Total lost packets 0 (0.000000%), total send dropped 0 (0.000000%)".
			m := regexp.MustCompile(`Total lost packets (\d+)`).FindStringSubmatch(text)
			if m == nil || m[1] != "0" {
				t.Fatalf("uclient lost packets or printed no report:\n%s", text)
			}
			// Every message went client -> relay -> relay -> client and arrived.
			all := regexp.MustCompile(`tot_send_msgs=(\d+), tot_recv_msgs=(\d+)`).FindAllStringSubmatch(text, -1)
			if len(all) == 0 {
				t.Fatalf("no message totals:\n%s", text)
			}
			if last := all[len(all)-1]; last[1] != strconv.Itoa(2*messages) || last[2] != strconv.Itoa(2*messages) {
				t.Fatalf("sent %s, received %s messages, want %d each:\n%s", last[1], last[2], 2*messages, text)
			}
			after := s.Stats()
			if got := after.AllocationsTotal - before.AllocationsTotal; got < 2 {
				t.Fatalf("%d allocations by uclient, want >= 2\n%s", got, text)
			}
			if got := after.PacketsToPeer - before.PacketsToPeer; got < 2*messages {
				t.Fatalf("%d packets relayed, want >= %d\n%s", got, 2*messages, text)
			}
			t.Logf("uclient %s: %d allocations, %d packets relayed; %s", c.name,
				after.AllocationsTotal-before.AllocationsTotal, after.PacketsToPeer-before.PacketsToPeer,
				lastLines(text, 3))
		})
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
