package main

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/bench/lightpeer"
	"github.com/duskchat/dusk-relay/internal/directory"
	"github.com/duskchat/dusk-relay/internal/identity"
)

// startupProtocols is every protocol a Dusk client may use on its first
// connection to the relay.
var startupProtocols = []protocol.ID{
	protoRendezvous, protoTurnCreds, protoDirectory, protoGif,
	"/libp2p/circuit/relay/0.2.0/hop", "/ipfs/ping/1.0.0", "/ipfs/id/1.0.0", "/meshsub/1.1.0",
}

// freeTCPPort returns a loopback port that was free a moment ago.
func freeTCPPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	return port
}

// lockDirectory takes SQLite's exclusive lock on the daemon's directory file
// (as a backup tool or a slow disk would hold it), so the daemon's directory
// open waits in its busy handler. The returned func releases it once.
func lockDirectory(t *testing.T, dataDir string) (release func()) {
	t.Helper()
	db, err := sql.Open("sqlite", filepath.Join(dataDir, directory.FileName))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(context.Background(), "BEGIN EXCLUSIVE"); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	release = func() {
		once.Do(func() {
			_, _ = conn.ExecContext(context.Background(), "ROLLBACK")
			_ = conn.Close()
			_ = db.Close()
		})
	}
	t.Cleanup(release)
	return release
}

// A client that dials while the daemon is still starting (here: the
// directory open waits for a lock) must find every protocol on its first
// connection. Before, the host listened first and such a client got
// "protocol not supported" for the directory, gif and rendezvous.
func TestStartupClientFindsEveryProtocol(t *testing.T) {
	dir := t.TempDir()
	key, err := identity.LoadOrCreate(dir, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	port := freeTCPPort(t)
	addr := ma.StringCast(fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", port))
	release := lockDirectory(t, dir)

	type result struct {
		attempts int
		missing  []string
		at       time.Time
		err      error
	}
	done := make(chan result, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	go func() {
		var r result
		defer func() { done <- r }()
		for ctx.Err() == nil {
			r.attempts++
			dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
			c, err := lightpeer.Dial(dctx, nil, addr, id)
			if err != nil {
				dcancel()
				time.Sleep(5 * time.Millisecond)
				continue
			}
			r.at = time.Now()
			// Negotiate every protocol at once, as a client does right after connecting.
			var mu sync.Mutex
			var wg sync.WaitGroup
			for _, p := range startupProtocols {
				wg.Add(1)
				go func() {
					defer wg.Done()
					s, err := c.Stream(dctx, p)
					if err != nil {
						mu.Lock()
						r.missing = append(r.missing, fmt.Sprintf("%s (%v)", p, err))
						mu.Unlock()
						return
					}
					_ = s.Reset()
				}()
			}
			wg.Wait()
			dcancel()
			_ = c.Close()
			return
		}
		r.err = ctx.Err()
	}()

	// The lock is held until the first client got in or for 3.5 s (the
	// daemon's busy timeout is 5 s): the daemon must not serve before.
	var res result
	var gotRes bool
	released := make(chan time.Time, 1)
	go func() {
		select {
		case res = <-done:
			gotRes = true
		case <-time.After(3500 * time.Millisecond):
		}
		release()
		released <- time.Now()
	}()
	env := append(testEnv(dir), "DUSK_RELAY_LISTEN_ADDRS="+addr.String())
	d := startDaemon(t, env)
	relAt := <-released
	if !gotRes {
		select {
		case res = <-done:
		case <-time.After(30 * time.Second):
			t.Fatalf("no connection to the daemon 30 s after it was ready\n%s", d.logs())
		}
	}
	if res.err != nil {
		t.Fatalf("dialer: %v", res.err)
	}
	if d.peerID != id {
		t.Fatalf("daemon peer ID %s, want the pre-created %s", d.peerID, id)
	}
	t.Logf("first connection after %d dial attempts, %v after the directory lock was released",
		res.attempts, res.at.Sub(relAt).Round(time.Millisecond))
	if res.attempts < 2 {
		t.Errorf("the first dial already succeeded: the test did not dial during start-up")
	}
	if len(res.missing) > 0 {
		t.Errorf("first connection during start-up lacks protocols:\n%s", strings.Join(res.missing, "\n"))
	}
	if res.at.Before(relAt) {
		t.Errorf("daemon accepted a connection while its directory was still opening")
	}
}
