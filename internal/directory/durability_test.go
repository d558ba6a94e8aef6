package directory

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/config"
	"github.com/duskchat/dusk-relay/internal/reqresp"
)

// The kill -9 test re-executes this test binary as a stand-in daemon
// (TestMain dispatches on helperEnv): it opens the store, serves the
// protocol on a loopback libp2p host, prints its address and runs until
// its stdin closes or it is killed.
const (
	helperEnv   = "DUSK_DIRECTORY_TEST_HELPER"
	helperDBEnv = "DUSK_DIRECTORY_TEST_DB"
)

func runHelper() int {
	store, err := Open(os.Getenv(helperDBEnv), zap.NewNop())
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper open:", err)
		return 1
	}
	h, err := libp2p.New(
		libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.DisableMetrics(),
		libp2p.DisableRelay(),
	)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper host:", err)
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	NewService(store, config.Directory{}, zap.NewNop(), nil).Attach(ctx, h)
	fmt.Printf("READY %s %s\n", h.ID(), h.Addrs()[0])
	_, _ = io.Copy(io.Discard, os.Stdin) // parent gone or done
	cancel()
	_ = h.Close()
	_ = store.Close()
	return 0
}

func TestKill9KeepsAcknowledgedRegistrations(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a subprocess")
	}
	dbPath := filepath.Join(t.TempDir(), FileName)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=1", helperDBEnv+"="+dbPath)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	defer func() {
		if !killed {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		_ = stdin.Close()
	}()
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if line := sc.Text(); strings.HasPrefix(line, "READY ") {
				ready <- line
				break
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	var line string
	select {
	case line = <-ready:
	case <-time.After(60 * time.Second):
		t.Fatal("helper did not start")
	}
	f := strings.Fields(line)
	relayID, err := peer.Decode(f[1])
	if err != nil {
		t.Fatal(err)
	}
	addr, err := ma.NewMultiaddr(f[2])
	if err != nil {
		t.Fatal(err)
	}

	// Several clients register in a loop; each remembers the last
	// registration that was acknowledged with Ok. The daemon is killed
	// while requests are still in flight.
	const clients = 4
	hosts := make([]host.Host, clients)
	for i := range hosts {
		hosts[i] = newHost(t)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := hosts[i].Connect(ctx, peer.AddrInfo{ID: relayID, Addrs: []ma.Multiaddr{addr}})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
	acked := make([]int, clients) // highest acknowledged sequence, -1 none
	var mu sync.Mutex
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for i := range hosts {
		acked[i] = -1
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for n := 0; n < 10_000; n++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				var resp Response
				err := reqresp.CallCBOR(ctx, hosts[i], relayID, ProtocolID,
					Request{Kind: RequestRegister, DisplayName: fmt.Sprintf("client%d-%d", i, n)}, &resp)
				cancel()
				if err != nil {
					return // daemon gone
				}
				if resp.Kind != ResponseOk {
					t.Errorf("client %d: %#v", i, resp)
					return
				}
				mu.Lock()
				acked[i] = n
				mu.Unlock()
			}
		}(i)
	}
	// Wait until every client has a few acknowledged writes.
	deadline := time.Now().Add(60 * time.Second)
	for {
		mu.Lock()
		least := acked[0]
		for _, a := range acked {
			least = min(least, a)
		}
		mu.Unlock()
		if least >= 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("clients made no progress")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	killed = true
	close(stop)
	wg.Wait()

	// Reopen the file the killed process left behind (WAL not
	// checkpointed, locks abandoned): every acknowledged write is there.
	store, err := Open(dbPath, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = store.Close() }()
	ctx := context.Background()
	for i, h := range hosts {
		p, _, ok, err := store.Get(ctx, h.ID().String())
		if err != nil || !ok {
			t.Fatalf("client %d (acked %d): profile missing (%v)", i, acked[i], err)
		}
		var got int
		if _, err := fmt.Sscanf(p.DisplayName, fmt.Sprintf("client%d-%%d", i), &got); err != nil {
			t.Fatalf("client %d: stored name %q", i, p.DisplayName)
		}
		// The last Ok'd write, or the one in flight at the kill.
		if got != acked[i] && got != acked[i]+1 {
			t.Fatalf("client %d: stored #%d, last acknowledged #%d", i, got, acked[i])
		}
		t.Logf("client %d: acknowledged %d, stored %d", i, acked[i], got)
	}
	// The index survived with the rows: search still finds them.
	res, err := store.Search(ctx, "client")
	if err != nil || len(res) != clients {
		t.Fatalf("search after restart: %d results, %v", len(res), err)
	}
}
