package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/libp2p/go-libp2p/core/host"
	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/directory"
	"github.com/duskchat/dusk-relay/internal/reqresp"
	"github.com/duskchat/dusk-relay/internal/testutil"
)

func dirCall(t *testing.T, c host.Host, d *daemon, req directory.Request) directory.Response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var resp directory.Response
	if err := reqresp.CallCBOR(ctx, c, d.peerID, directory.ProtocolID, req, &resp); err != nil {
		t.Fatalf("directory %v: %v", req.Kind, err)
	}
	return resp
}

func readyz(t *testing.T, d *daemon) (int, string) {
	t.Helper()
	cl := http.Client{Timeout: 10 * time.Second}
	resp, err := cl.Get("http://" + d.metrics + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestClusterDirectoryTwoDaemons: two relays share one PostgreSQL
// directory. A profile registered at B is found at A with its relay_addr.
// The engine going away mid-run: both relays stay up and keep serving
// other protocols, directory requests get Error("internal error"),
// /readyz answers 503 naming "directory (postgres)"; when the engine is
// back both recover by themselves.
func TestClusterDirectoryTwoDaemons(t *testing.T) {
	dbURL := testutil.PostgresURL(t)
	cfg, err := pgx.ParseConfig(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	cut := testutil.NewCutProxy(t, net.JoinHostPort(cfg.Host, fmt.Sprint(cfg.Port)))
	viaCut := strings.Replace(dbURL, net.JoinHostPort(cfg.Host, fmt.Sprint(cfg.Port)), cut.Addr(), 1)
	// A password (trust auth ignores it) that must never reach a log line.
	const password = "Sekr1t-pw-in-url"
	viaCut = strings.Replace(viaCut, "://"+cfg.User+"@", "://"+cfg.User+":"+password+"@", 1)
	if !strings.Contains(viaCut, password) {
		t.Fatalf("cannot place a password in %s", dbURL)
	}
	start := func() *daemon {
		return startDaemon(t, append(testEnv(t.TempDir()), "DUSK_DIRECTORY_URL="+viaCut))
	}
	a, b := start(), start()
	alice, bob := newClient(t), newClient(t)
	connectTo(t, alice, b)
	connectTo(t, bob, a)
	relayAddr := b.addrs[0].String() + "/p2p/" + b.peerID.String() + "/p2p-circuit"
	if r := dirCall(t, alice, b, directory.Request{Kind: directory.RequestRegister, DisplayName: "Alice Cluster", RelayAddr: relayAddr}); r.Kind != directory.ResponseOk {
		t.Fatalf("register at B: %#v", r)
	}
	r := dirCall(t, bob, a, directory.Request{Kind: directory.RequestSearch, Query: "alice clu"})
	if r.Kind != directory.ResponseResults || len(r.Results) != 1 ||
		r.Results[0].PeerID != alice.ID().String() || r.Results[0].RelayAddr != relayAddr {
		t.Fatalf("search at A: %#v", r)
	}
	for _, d := range []*daemon{a, b} {
		if code, body := readyz(t, d); code != 200 {
			t.Fatalf("/readyz = %d %s", code, body)
		}
	}

	cut.Down()
	r = dirCall(t, bob, a, directory.Request{Kind: directory.RequestSearch, Query: "alice"})
	if r.Kind != directory.ResponseError || r.Error != "internal error" {
		t.Fatalf("search with the engine down: %#v", r)
	}
	if code, body := readyz(t, a); code != http.StatusServiceUnavailable || !strings.Contains(body, "directory (postgres)") {
		t.Fatalf("/readyz with the engine down = %d %q", code, body)
	}
	// The relay itself is fine: a new client still connects.
	connectTo(t, newClient(t), a)

	cut.Up()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r = dirCall(t, bob, a, directory.Request{Kind: directory.RequestSearch, Query: "alice"})
		if r.Kind == directory.ResponseResults {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no recovery: %#v", r)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(r.Results) != 1 || r.Results[0].RelayAddr != relayAddr {
		t.Fatalf("after recovery: %#v", r)
	}
	if code, body := readyz(t, a); code != 200 {
		t.Fatalf("/readyz after recovery = %d %s", code, body)
	}
	for _, d := range []*daemon{a, b} {
		if logs := d.logs(); strings.Contains(logs, password) || !strings.Contains(logs, `"directory":"postgres"`) {
			t.Fatalf("a log line shows the database password, or the start-up summary lacks the engine:\n%s", logs)
		}
	}
}

// TestImportDirectoryCommand: `dusk-relay import-directory <file>` copies
// a relay's file into PostgreSQL; a second run writes nothing.
func TestImportDirectoryCommand(t *testing.T) {
	path := filepath.Join(t.TempDir(), directory.FileName)
	s, err := directory.Open(path, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range []string{"Alice", "Bob", "Carol"} {
		if err := s.Register(context.Background(), fmt.Sprint("12D3KooWpeer", i), n, "", time.Unix(1_700_000_000+int64(i), 0)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	dbURL := testutil.PostgresURL(t)
	t.Setenv("DUSK_TURN_PUBLIC_IP", "127.0.0.1")
	t.Setenv("DUSK_LOG_LEVEL", "error")
	t.Setenv("DUSK_DATA_DIR", t.TempDir())

	var out, errb bytes.Buffer
	t.Setenv("DUSK_DIRECTORY_URL", "")
	if code := run([]string{"import-directory", path}, &out, &errb); code != exitUsage || !strings.Contains(errb.String(), "DUSK_DIRECTORY_URL") {
		t.Fatalf("without DUSK_DIRECTORY_URL: %d %s", code, errb.String())
	}
	t.Setenv("DUSK_DIRECTORY_URL", dbURL)
	if code := run([]string{"import-directory"}, &out, &errb); code != exitUsage {
		t.Fatalf("without a path: %d", code)
	}
	for round, want := range []string{"3 profiles read, 3 written", "3 profiles read, 0 written, 3 already up to date"} {
		out.Reset()
		errb.Reset()
		if code := run([]string{"import-directory", path}, &out, &errb); code != 0 || !strings.Contains(out.String(), want) {
			t.Fatalf("run %d: %d\nstdout %s\nstderr %s", round, code, out.String(), errb.String())
		}
	}
	pg, err := directory.OpenPG(context.Background(), dbURL, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = pg.Close() }()
	res, err := pg.Search(context.Background(), "o")
	if err != nil || len(res) != 2 || res[0].DisplayName != "Carol" || res[1].DisplayName != "Bob" {
		t.Fatalf("search after import: %v %v", res, err)
	}
	// A missing file: exit 1, nothing else happens.
	errb.Reset()
	if code := run([]string{"import-directory", path + ".missing"}, &out, &errb); code != exitFailure {
		t.Fatalf("missing file: %d %s", code, errb.String())
	}
}

func TestHelpNamesImportDirectory(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"--help"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "dusk-relay import-directory <directory.sqlite3>") {
		t.Fatalf("--help: %d\n%s", code, out.String())
	}
}

// TestClusterDirectoryEngineDownAtStart: a relay started while PostgreSQL
// is unreachable starts anyway (relaying does not depend on it), reports
// "directory (postgres)" on /readyz, and creates the schema and serves
// the directory once the engine answers.
func TestClusterDirectoryEngineDownAtStart(t *testing.T) {
	dbURL := testutil.PostgresURL(t)
	cfg, err := pgx.ParseConfig(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	target := net.JoinHostPort(cfg.Host, fmt.Sprint(cfg.Port))
	cut := testutil.NewCutProxy(t, target)
	viaCut := strings.Replace(dbURL, target, cut.Addr(), 1)
	cut.Down()
	d := startDaemon(t, append(testEnv(t.TempDir()), "DUSK_DIRECTORY_URL="+viaCut))
	if code, body := readyz(t, d); code != http.StatusServiceUnavailable || !strings.Contains(body, "directory (postgres)") {
		t.Fatalf("/readyz with the engine down at start = %d %q", code, body)
	}
	c := newClient(t)
	connectTo(t, c, d)
	if r := dirCall(t, c, d, directory.Request{Kind: directory.RequestRegister, DisplayName: "Early"}); r.Kind != directory.ResponseError || r.Error != "internal error" {
		t.Fatalf("register with the engine down: %#v", r)
	}
	cut.Up()
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body := readyz(t, d)
		if code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz never recovered: %d %q", code, body)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if r := dirCall(t, c, d, directory.Request{Kind: directory.RequestRegister, DisplayName: "Early"}); r.Kind != directory.ResponseOk {
		t.Fatalf("register after the engine came up: %#v", r)
	}
	if r := dirCall(t, c, d, directory.Request{Kind: directory.RequestSearch, Query: "earl"}); r.Kind != directory.ResponseResults || len(r.Results) != 1 {
		t.Fatalf("search after the engine came up: %#v", r)
	}
}
