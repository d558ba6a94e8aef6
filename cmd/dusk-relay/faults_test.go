package main

// Fault suite: crashes, unusable data directories, busy ports, exhausted
// TURN ports, corrupt files and SIGTERM under load, against the real
// daemon. What counts: a clear message and a non-zero exit, never a
// silent identity change, never lost acknowledged data.

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/duskchat/dusk-relay/internal/directory"
	"github.com/duskchat/dusk-relay/internal/reqresp"
)

// kill9 kills the daemon with SIGKILL and waits for it.
func (d *daemon) kill9(t *testing.T) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err := <-d.waitErr
	d.waitErr <- err // for the cleanup
}

// searchName returns the display name stored for peer p ("" if none).
func searchName(t *testing.T, c host.Host, d *daemon, p peer.ID) string {
	t.Helper()
	var resp directory.Response
	if err := reqresp.CallCBOR(ctx10(t), c, d.peerID, protoDirectory, directory.Request{Kind: directory.RequestSearch, Query: p.String()}, &resp); err != nil || resp.Kind != directory.ResponseResults {
		t.Fatalf("search %s: %+v %v", p, resp, err)
	}
	for _, r := range resp.Results {
		if r.PeerID == p.String() {
			return r.DisplayName
		}
	}
	return ""
}

// TestKill9DuringRegistrationBurst: 16 peers register new names in a loop;
// the daemon is killed with SIGKILL mid-burst. After a restart every peer's
// stored name is the last one acknowledged or a later one (one that was
// committed but whose Ok never arrived), never an older one, and nobody
// who got an Ok is missing.
func TestKill9DuringRegistrationBurst(t *testing.T) {
	dir := t.TempDir()
	env := append(testEnv(dir), "DUSK_DIRECTORY_REGISTER_PER_MINUTE=1000000")
	d := startDaemon(t, env)
	const peers = 16
	clients := make([]host.Host, peers)
	for i := range clients {
		clients[i] = newClient(t)
		connectTo(t, clients[i], d)
	}
	acked := make([]atomic.Int64, peers)     // last k answered Ok (-1: none)
	attempted := make([]atomic.Int64, peers) // last k sent
	var total atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range clients {
		acked[i].Store(-1)
		attempted[i].Store(-1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := int64(0); k < 10000; k++ {
				select {
				case <-stop:
					return
				default:
				}
				attempted[i].Store(k)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				var resp directory.Response
				err := reqresp.CallCBOR(ctx, clients[i], d.peerID, protoDirectory,
					directory.Request{Kind: directory.RequestRegister, DisplayName: fmt.Sprintf("peer%02d-%05d", i, k)}, &resp)
				cancel()
				if err != nil {
					return // the daemon is gone
				}
				if resp.Kind != directory.ResponseOk {
					t.Errorf("register answered %+v", resp)
					return
				}
				acked[i].Store(k)
				total.Add(1)
			}
		}()
	}
	for i := 0; i < 400 && total.Load() < 200; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	d.kill9(t)
	close(stop)
	wg.Wait()
	t.Logf("SIGKILL after %d acknowledged registrations", total.Load())
	if total.Load() == 0 {
		t.Fatal("no registration was acknowledged before the kill")
	}

	d2 := startDaemon(t, testEnv(dir))
	if d2.peerID != d.peerID {
		t.Fatalf("peer ID changed across kill -9: %s -> %s", d.peerID, d2.peerID)
	}
	c := newClient(t)
	connectTo(t, c, d2)
	for i, cl := range clients {
		name := searchName(t, c, d2, cl.ID())
		a, at := acked[i].Load(), attempted[i].Load()
		if a < 0 {
			continue
		}
		var gi int
		var k int64
		if _, err := fmt.Sscanf(name, "peer%02d-%05d", &gi, &k); err != nil || gi != i {
			t.Errorf("peer %d: acknowledged %d, stored %q", i, a, name)
			continue
		}
		if k < a || k > at {
			t.Errorf("peer %d: stored name %d, acknowledged %d, attempted %d", i, k, a, at)
		}
	}
}

// TestUnusableDataDir: a data dir that cannot be created (a path under a
// regular file: chmod does not stop root) makes the daemon exit non-zero
// naming the path; a missing one is created 0700.
func TestUnusableDataDir(t *testing.T) {
	file := filepath.Join(t.TempDir(), "plainfile")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(file, "sub")
	code, _, stderr := runChild(t, testEnv(bad))
	t.Logf("data dir under a file: exit %d: %s", code, lastLine(stderr))
	if code == 0 {
		t.Fatalf("started with data dir %s", bad)
	}
	if !strings.Contains(stderr, bad) && !strings.Contains(stderr, file) {
		t.Errorf("error does not name the data dir: %s", lastLine(stderr))
	}

	missing := filepath.Join(t.TempDir(), "does", "not", "exist")
	d := startDaemon(t, testEnv(missing))
	st, err := os.Stat(missing)
	if err != nil || !st.IsDir() || st.Mode().Perm() != 0o700 {
		t.Errorf("missing data dir: %v %v, want a 0700 directory", st.Mode(), err)
	}
	if _, err := os.Stat(filepath.Join(missing, "keypair")); err != nil {
		t.Errorf("no keypair written: %v", err)
	}
	assertServing(t, d)
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// TestPortsInUse: a busy libp2p, TURN UDP, TURN TCP or metrics port stops
// the start with a non-zero exit and a message naming the address.
func TestPortsInUse(t *testing.T) {
	tcpBusy, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcpBusy.Close()
	udpBusy, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udpBusy.Close()
	tport := strconv.Itoa(tcpBusy.Addr().(*net.TCPAddr).Port)
	uport := strconv.Itoa(udpBusy.LocalAddr().(*net.UDPAddr).Port)
	for _, c := range []struct{ name, kv, want string }{
		{"libp2p", "DUSK_RELAY_LISTEN_ADDRS=/ip4/127.0.0.1/tcp/" + tport, tport},
		{"turn-udp", "DUSK_TURN_UDP_PORT=" + uport, uport},
		{"turn-tcp", "DUSK_TURN_TCP_PORT=" + tport, tport},
		{"metrics", "DUSK_METRICS_ADDR=127.0.0.1:" + tport, tport},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			code, _, stderr := runChild(t, append(testEnv(dir), c.kv))
			t.Logf("%s busy: exit %d: %s", c.name, code, lastLine(stderr))
			if code == 0 {
				t.Fatalf("started with %s", c.kv)
			}
			if !strings.Contains(lastLine(stderr), c.want) {
				t.Errorf("error does not name port %s: %s", c.want, lastLine(stderr))
			}
		})
	}
}

// TestSecondInstanceSameTURNPort: a second daemon configured with the TURN
// UDP port of a running one must not start (SO_REUSEPORT must not let two
// processes split one port's traffic).
func TestSecondInstanceSameTURNPort(t *testing.T) {
	// Two sockets per instance: SO_REUSEPORT is in play.
	d := startDaemon(t, append(testEnv(t.TempDir()), "DUSK_TURN_UDP_THREADS=2"))
	udpAddr, _ := turnAddrs(t, d)
	_, port, _ := net.SplitHostPort(udpAddr)
	code, _, stderr := runChild(t, append(testEnv(t.TempDir()), "DUSK_TURN_UDP_THREADS=2", "DUSK_TURN_UDP_PORT="+port))
	t.Logf("second instance on TURN UDP port %s: exit %d: %s", port, code, lastLine(stderr))
	if code == 0 {
		t.Fatalf("a second daemon started on TURN UDP port %s beside a running one", port)
	}
	if !strings.Contains(lastLine(stderr), port) {
		t.Errorf("error does not name the port: %s", lastLine(stderr))
	}
	// The first one still owns the port.
	creds := fetchCreds(t, d)
	if err := dialTURN(t, udpAddr, creds.Username, creds.Password).allocate(); err != nil {
		t.Errorf("first daemon's TURN after the second start: %v", err)
	}
}

// TestTURNPortRangeExhausted: with a one-port relay range, the second
// allocation is refused, the first keeps working, and the daemon serves.
func TestTURNPortRangeExhausted(t *testing.T) {
	port := freeUDPPort(t)
	env := append(testEnv(t.TempDir()), "DUSK_TURN_PORT_RANGE_START="+port, "DUSK_TURN_PORT_RANGE_END="+port)
	d := startDaemon(t, env)
	udpAddr, _ := turnAddrs(t, d)
	a := fetchCreds(t, d)
	first := dialTURN(t, udpAddr, a.Username, a.Password)
	if err := first.allocate(); err != nil {
		t.Fatalf("first allocation: %v", err)
	}
	if got := strconv.Itoa(first.relay.LocalAddr().(*net.UDPAddr).Port); got != port {
		t.Fatalf("relayed port %s outside the range %s", got, port)
	}
	b := fetchCreds(t, d)
	err := dialTURNFrom(t, "127.0.0.2", udpAddr, b.Username, b.Password).allocate()
	t.Logf("allocation with the range exhausted: code %d (%v)", turnCode(err), err)
	if err == nil {
		t.Fatal("second allocation succeeded with a one-port range")
	}
	assertServing(t, d)
	// The first allocation still works: a permission and a refresh succeed.
	if err := first.CreatePermission(&net.UDPAddr{IP: net.ParseIP("8.8.8.8"), Port: 9}); err != nil {
		t.Errorf("first allocation broken after exhaustion: %v", err)
	}
	// Once it is released, the port is allocatable again.
	_ = first.relay.Close()
	first.relay = nil
	var again error
	for i := 0; i < 50; i++ {
		if again = dialTURNFrom(t, "127.0.0.3", udpAddr, b.Username, b.Password).allocate(); again == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if again != nil {
		t.Errorf("port not reusable after the allocation was released: %v", again)
	}
}

func freeUDPPort(t *testing.T) string {
	t.Helper()
	for i := 0; i < 50; i++ {
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := pc.LocalAddr().(*net.UDPAddr).Port
		_ = pc.Close()
		if p >= 1024 {
			return strconv.Itoa(p)
		}
	}
	t.Fatal("no free UDP port")
	return ""
}

// TestCorruptKeypairVariants extends TestCorruptKeypairRefusesToStart
// (junk bytes) with an empty file, a truncated real key, a key for an
// unknown type, a directory and a dangling symlink: each refuses to start,
// names the keypair, and leaves it as it was.
func TestCorruptKeypairVariants(t *testing.T) {
	sk, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	good, err := crypto.MarshalPrivateKey(sk)
	if err != nil {
		t.Fatal(err)
	}
	// Field 1 (type) = 99, field 2 (data) = 64 bytes.
	unknownType := append([]byte{0x08, 99, 0x12, 64}, bytes.Repeat([]byte{1}, 64)...)
	for _, c := range []struct {
		name  string
		setup func(path string) error
	}{
		{"empty", func(p string) error { return os.WriteFile(p, nil, 0o600) }},
		{"truncated", func(p string) error { return os.WriteFile(p, good[:len(good)/2], 0o600) }},
		{"unknown-type", func(p string) error { return os.WriteFile(p, unknownType, 0o600) }},
		{"directory", func(p string) error { return os.Mkdir(p, 0o700) }},
		{"dangling-symlink", func(p string) error { return os.Symlink(filepath.Join(filepath.Dir(p), "gone"), p) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "keypair")
			if err := c.setup(path); err != nil {
				t.Fatal(err)
			}
			before := snapshot(path)
			code, stdout, stderr := runChild(t, testEnv(dir))
			t.Logf("keypair %s: exit %d: %s", c.name, code, lastLine(stderr))
			if code == 0 || strings.Contains(stdout, "relay address") {
				t.Fatalf("started with a %s keypair", c.name)
			}
			if !strings.Contains(lastLine(stderr), "keypair") {
				t.Errorf("error does not mention the keypair: %s", lastLine(stderr))
			}
			if after := snapshot(path); after != before {
				t.Errorf("keypair changed: %q -> %q", before, after)
			}
		})
	}
}

// snapshot describes a path's type and content.
func snapshot(p string) string {
	fi, err := os.Lstat(p)
	if err != nil {
		return "missing"
	}
	switch {
	case fi.Mode()&os.ModeSymlink != 0:
		l, _ := os.Readlink(p)
		return "symlink:" + l
	case fi.IsDir():
		return "dir"
	}
	b, _ := os.ReadFile(p)
	return fmt.Sprintf("file:%x", b)
}

// TestCorruptDirectoryDatabase: a directory.sqlite3 that is not a database,
// or a real one cut in half, stops the start with a message naming the
// database; the file and the keypair stay untouched (no silent reset of
// the directory, no identity change).
func TestCorruptDirectoryDatabase(t *testing.T) {
	// A real database with content, from a first run.
	seedDir := t.TempDir()
	d := startDaemon(t, testEnv(seedDir))
	c := newClient(t)
	connectTo(t, c, d)
	for i := 0; i < 50; i++ {
		h := newClient(t)
		connectTo(t, h, d)
		var resp directory.Response
		if err := reqresp.CallCBOR(ctx10(t), h, d.peerID, protoDirectory,
			directory.Request{Kind: directory.RequestRegister, DisplayName: fmt.Sprintf("user %03d %s", i, strings.Repeat("x", 40))}, &resp); err != nil {
			t.Fatal(err)
		}
		_ = h.Close()
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	d.waitErr <- <-d.waitErr
	real, err := os.ReadFile(filepath.Join(seedDir, directory.FileName))
	if err != nil {
		t.Fatal(err)
	}
	key, err := os.ReadFile(filepath.Join(seedDir, "keypair"))
	if err != nil {
		t.Fatal(err)
	}
	garbage := make([]byte, 8192)
	_, _ = rand.Read(garbage)
	header := append([]byte("SQLite format 3\x00"), garbage[16:]...)
	for _, c := range []struct {
		name string
		db   []byte
	}{
		{"garbage", garbage},
		{"text", []byte("this is not a database\n")},
		{"bad-header-pages", header},
		{"truncated-half", real[:len(real)/2]},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			dbPath := filepath.Join(dir, directory.FileName)
			if err := os.WriteFile(dbPath, c.db, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "keypair"), key, 0o600); err != nil {
				t.Fatal(err)
			}
			code, stdout, stderr := runChild(t, testEnv(dir))
			t.Logf("database %s (%d bytes): exit %d: %s", c.name, len(c.db), code, lastLine(stderr))
			after, _ := os.ReadFile(dbPath)
			if code == 0 {
				// SQLite may accept some damage (e.g. a cut after the used pages);
				// then the content must still be there.
				t.Errorf("started with a %s database (stdout %q)", c.name, stdout)
			} else if !strings.Contains(lastLine(stderr), "directory") {
				t.Errorf("error does not name the directory database: %s", lastLine(stderr))
			}
			if !bytes.Equal(after, c.db) {
				t.Errorf("database file rewritten (%d -> %d bytes)", len(c.db), len(after))
			}
			if k, _ := os.ReadFile(filepath.Join(dir, "keypair")); !bytes.Equal(k, key) {
				t.Errorf("keypair changed")
			}
		})
	}
}

// TestSIGTERMUnderLoad: with registrations, searches, rendezvous traffic,
// held streams and TURN allocations in flight, SIGTERM ends the daemon
// with exit 0 within 5 s (orchestrators kill after their grace period;
// DOCKER.md's compose file gives 10 s).
func TestSIGTERMUnderLoad(t *testing.T) {
	env := append(testEnv(t.TempDir()), "DUSK_DIRECTORY_REGISTER_PER_MINUTE=1000000")
	d := startDaemon(t, env)
	udpAddr, _ := turnAddrs(t, d)
	c := newUnlimitedClient(t)
	connectTo(t, c, d)

	// Streams that never finish their request, on every protocol.
	var held []network.Stream
	for _, p := range []protocol.ID{protoDirectory, protoTurnCreds, protoGif, protoRendezvous} {
		for i := 0; i < 5; i++ {
			s, err := c.NewStream(ctx10(t), d.peerID, p)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = s.Write([]byte{0x0a}) // negotiate; an incomplete request
			held = append(held, s)
		}
	}
	defer func() {
		for _, s := range held {
			_ = s.Reset()
		}
	}()
	for i := 0; i < 3; i++ {
		creds := fetchCreds(t, d)
		if err := dialTURN(t, udpAddr, creds.Username, creds.Password).allocate(); err != nil {
			t.Fatal(err)
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var ops atomic.Int64
	rec := sealOwnRecord(t, c)
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; k < 100000; k++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				var err error
				switch k % 3 {
				case 0:
					var resp directory.Response
					err = reqresp.CallCBOR(ctx, c, d.peerID, protoDirectory, directory.Request{Kind: directory.RequestRegister, DisplayName: fmt.Sprintf("load %d", k)}, &resp)
				case 1:
					var resp directory.Response
					err = reqresp.CallCBOR(ctx, c, d.peerID, protoDirectory, directory.Request{Kind: directory.RequestSearch, Query: "load"}, &resp)
				default:
					_, err = rdvCall(ctx, c, d.peerID, rdvRegister(fmt.Sprintf("ns/%d/%d", w, k%50), rec))
				}
				cancel()
				if err != nil {
					return
				}
				ops.Add(1)
			}
		}()
	}
	time.Sleep(500 * time.Millisecond)
	sent := time.Now()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var exitErr error
	select {
	case exitErr = <-d.waitErr:
		d.waitErr <- exitErr
	case <-time.After(20 * time.Second):
		close(stop)
		wg.Wait()
		t.Fatalf("daemon still running 20 s after SIGTERM\n%s", tail(d.logs(), 30))
	}
	took := time.Since(sent)
	close(stop)
	wg.Wait()
	t.Logf("SIGTERM under load (%d ops done, %d held streams, 3 TURN allocations): exited after %v, %v",
		ops.Load(), len(held), took.Round(time.Millisecond), exitErr)
	if exitErr != nil {
		t.Errorf("exit after SIGTERM: %v\n%s", exitErr, tail(d.logs(), 30))
	}
	if took > 5*time.Second {
		t.Errorf("SIGTERM took %v, want within 5 s; stop sequence:\n%s", took, grepLines(d.logs(), "shutting down", "stopped", "stop "))
	}
}

// grepLines keeps the log lines containing any of subs.
func grepLines(s string, subs ...string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		for _, sub := range subs {
			if strings.Contains(l, sub) {
				out = append(out, l)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// TestUnusableStateFiles: a directory where the database or the TURN
// secret should be, or a corrupt TURN secret, stops the start with a
// message naming the file; nothing is replaced.
func TestUnusableStateFiles(t *testing.T) {
	for _, c := range []struct {
		name, file, want string
		setup            func(p string) error
	}{
		{"database-is-a-directory", directory.FileName, "directory", func(p string) error { return os.Mkdir(p, 0o700) }},
		{"secret-is-a-directory", "turn_secret", "turn_secret", func(p string) error { return os.Mkdir(p, 0o700) }},
		{"secret-garbage", "turn_secret", "turn_secret", func(p string) error { return os.WriteFile(p, []byte("short\n"), 0o600) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, c.file)
			if err := c.setup(path); err != nil {
				t.Fatal(err)
			}
			before := snapshot(path)
			code, _, stderr := runChild(t, testEnv(dir))
			t.Logf("%s: exit %d: %s", c.name, code, lastLine(stderr))
			if code == 0 {
				t.Fatalf("started with %s", c.name)
			}
			if !strings.Contains(lastLine(stderr), c.want) {
				t.Errorf("error does not name %s: %s", c.want, lastLine(stderr))
			}
			if after := snapshot(path); after != before {
				t.Errorf("%s changed: %q -> %q", c.file, before, after)
			}
		})
	}
}
