package bench

import (
	"bytes"
	"context"
	"errors"
	"math"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestQuantile(t *testing.T) {
	xs := []float64{5, 1, 4, 2, 3}
	if got := Median(xs); got != 3 {
		t.Fatalf("median = %v, want 3", got)
	}
	if got := Quantile(xs, 0); got != 1 {
		t.Fatalf("q0 = %v, want 1", got)
	}
	if got := Quantile(xs, 1); got != 5 {
		t.Fatalf("q1 = %v, want 5", got)
	}
	if got := Quantile([]float64{1, 2}, 0.5); got != 1.5 {
		t.Fatalf("interpolated median = %v, want 1.5", got)
	}
	if !math.IsNaN(Median(nil)) {
		t.Fatal("median of nothing must be NaN")
	}
	if xs[0] != 5 {
		t.Fatal("Quantile sorted its input")
	}
	if Ratio(3, 2) != "1.50x" || Ratio(1, 0) != "n/a" || Ratio(math.NaN(), 1) != "n/a" {
		t.Fatal("Ratio formatting")
	}
}

func TestParseMetric(t *testing.T) {
	text := `# HELP go_goroutines Number of goroutines.
# TYPE go_goroutines gauge
go_goroutines 42
go_goroutines_extra 7
dusk_x{kind="a"} 1.5
dusk_x{kind="b"} 2
`
	if v, err := ParseMetric(text, "go_goroutines"); err != nil || v != 42 {
		t.Fatalf("go_goroutines = %v, %v; want 42", v, err)
	}
	if v, err := ParseMetric(text, "dusk_x"); err != nil || v != 3.5 {
		t.Fatalf("dusk_x = %v, %v; want the sum 3.5", v, err)
	}
	if _, err := ParseMetric(text, "missing"); !errors.Is(err, ErrDaemon) {
		t.Fatalf("missing metric: err = %v", err)
	}
}

func TestProcOfSelf(t *testing.T) {
	// Burn a little CPU so utime moves past one tick.
	end := time.Now().Add(50 * time.Millisecond)
	for x := 0; time.Now().Before(end); x++ {
		_ = x * x
	}
	cpu, err := CPUTime(os.Getpid())
	if err != nil || cpu <= 0 {
		t.Fatalf("CPUTime(self) = %v, %v", cpu, err)
	}
	rss, err := RSS(os.Getpid())
	if err != nil || rss < 1<<20 {
		t.Fatalf("RSS(self) = %d, %v", rss, err)
	}
	if _, err := CPUTime(1 << 30); !errors.Is(err, ErrProc) {
		t.Fatalf("CPUTime of a missing pid: %v", err)
	}
	if _, err := Status(os.Getpid(), "NoSuchField"); !errors.Is(err, ErrProc) {
		t.Fatalf("missing status field: %v", err)
	}
}

func TestFreePortBindsBoth(t *testing.T) {
	p, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: p})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	l, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: p})
	if err != nil {
		t.Fatal(err)
	}
	_ = l.Close()
}

func TestTablePrint(t *testing.T) {
	tb := NewTable("a", "b")
	tb.Row(1, 2.5)
	var plain, md bytes.Buffer
	tb.Print(&plain, false)
	tb.Print(&md, true)
	if !strings.Contains(plain.String(), "2.50") {
		t.Fatalf("plain table: %q", plain.String())
	}
	if !strings.HasPrefix(md.String(), "| a | b |\n| --- | --- |\n| 1 | 2.50 |") {
		t.Fatalf("markdown table: %q", md.String())
	}
}

// The baseline server starts, answers STUN on loopback and stops.
func TestCoturnStartStop(t *testing.T) {
	if _, err := exec.LookPath("turnserver"); err != nil {
		t.Skip("coturn not installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := StartCoturn(ctx, CoturnOptions{Dir: t.TempDir(), Secret: "s", Realm: "duskchat.app", Threads: 1, MinPort: 25000, MaxPort: 25100})
	if err != nil {
		t.Fatal(err)
	}
	if err := StunPing(&net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: c.Port}, time.Second); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := StunPing(&net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: c.Port}, 300*time.Millisecond); err == nil {
		t.Fatal("coturn still answers after Stop")
	}
}

func TestStartCoturnMissingBinary(t *testing.T) {
	_, err := StartCoturn(context.Background(), CoturnOptions{Bin: "/nonexistent/turnserver", Dir: t.TempDir()})
	if err == nil {
		t.Fatal("want an error for a missing binary")
	}
}

func TestStartCoturnNotInstalled(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	if _, err := StartCoturn(context.Background(), CoturnOptions{Dir: t.TempDir()}); !errors.Is(err, ErrNoCoturn) {
		t.Fatalf("err = %v, want ErrNoCoturn", err)
	}
}
