package main

// Hostile request-response clients against the real daemon: stream floods
// that hold request buffers, gif requests that burn the Klipy quota and
// the cache, directory floods of free identities, and the log lines they
// used to produce. Attacker addresses are 127.0.0.2 and up; honest
// clients come from 127.0.0.1 or 127.0.0.50+.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/duskchat/dusk-relay/internal/directory"
	"github.com/duskchat/dusk-relay/internal/gif"
	"github.com/duskchat/dusk-relay/internal/reqresp"
	"github.com/duskchat/dusk-relay/internal/turncreds"
)

// rrClientFrom is a client whose connections come from localIP, without
// a resource manager so only the daemon's limits count.
func rrClientFrom(t *testing.T, localIP string) host.Host {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/"+localIP+"/tcp/0"), libp2p.DisableRelay(),
		libp2p.ResourceManager(&network.NullResourceManager{}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// connectPaced connects c, retrying while the daemon's per-address
// connection rate limit (2/s after a burst) turns it away.
func connectPaced(t *testing.T, c host.Host, d *daemon) {
	t.Helper()
	var err error
	for i := 0; i < 40; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = c.Connect(ctx, peer.AddrInfo{ID: d.peerID, Addrs: d.addrs})
		cancel()
		if err == nil {
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("connect to daemon: %v", err)
}

// heapInuse is the daemon's go_memstats_heap_inuse_bytes in MiB.
func heapInuse(t *testing.T, d *daemon) float64 {
	t.Helper()
	v, ok := scrape(t, d.metrics)["go_memstats_heap_inuse_bytes"]
	if !ok {
		t.Fatal("no go_memstats_heap_inuse_bytes on /metrics")
	}
	return v / (1 << 20)
}

// heapWatch samples the daemon heap every 250 ms until stopped.
type heapWatch struct {
	before, peak float64
	stop, done   chan struct{}
}

func watchHeap(t *testing.T, d *daemon) *heapWatch {
	w := &heapWatch{before: heapInuse(t, d), stop: make(chan struct{}), done: make(chan struct{})}
	w.peak = w.before
	go func() {
		defer close(w.done)
		tk := time.NewTicker(250 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-tk.C:
				resp, err := http.Get("http://" + d.metrics + "/metrics")
				if err != nil {
					continue
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				for _, l := range strings.Split(string(body), "\n") {
					var v float64
					if _, err := fmt.Sscanf(l, "go_memstats_heap_inuse_bytes %g", &v); err == nil && v/(1<<20) > w.peak {
						w.peak = v / (1 << 20)
					}
				}
			}
		}
	}()
	return w
}

func (w *heapWatch) finish() (before, peak float64) {
	close(w.stop)
	<-w.done
	return w.before, w.peak
}

// floodStreams opens n streams per client on proto, writes size bytes on
// each and never half-closes. It returns the streams that were accepted
// (fully written) and the refusals.
func floodStreams(t *testing.T, clients []host.Host, d *daemon, proto protocol.ID, n, size int) (held []network.Stream, refused int) {
	t.Helper()
	payload := bytes.Repeat([]byte{0x61}, size)
	var (
		mu sync.Mutex
		wg sync.WaitGroup
		rf atomic.Int32
	)
	sem := make(chan struct{}, 64)
	for _, c := range clients {
		for i := 0; i < n; i++ {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				s, err := c.NewStream(ctx, d.peerID, proto)
				if err != nil {
					rf.Add(1)
					return
				}
				_ = s.SetWriteDeadline(time.Now().Add(10 * time.Second))
				if _, err := s.Write(payload); err != nil {
					rf.Add(1)
					_ = s.Reset()
					return
				}
				mu.Lock()
				held = append(held, s)
				mu.Unlock()
			}()
		}
	}
	wg.Wait()
	return held, int(rf.Load())
}

// TestHostileReqrespStreamFlood: 4 addresses × 250 streams on the
// directory protocol, each sending one byte less than the protocol's cap
// and never half-closing, while an honest client is served. The daemon
// holds at most cap bytes per stream and ends every stream at its read
// deadline; a request one byte over the cap is reset at once, on every
// protocol.
//
// Before: every /dusk/* stream could buffer 1 MiB for 15 s; the same flood
// at 1 MiB - 1 per stream is what the closing note compares against.
func TestHostileReqrespStreamFlood(t *testing.T) {
	d := startDaemon(t, testEnv(t.TempDir()))
	// DUSKTEST_FLOOD_BYTES / DUSKTEST_FLOOD_PER_CLIENT: for measuring other
	// sizes (e.g. the old 1 MiB cap on an old build) by hand.
	size, perClient := directory.MaxRequestSize-1, 250
	if v := os.Getenv("DUSKTEST_FLOOD_BYTES"); v != "" {
		_, _ = fmt.Sscan(v, &size)
	}
	if v := os.Getenv("DUSKTEST_FLOOD_PER_CLIENT"); v != "" {
		_, _ = fmt.Sscan(v, &perClient)
	}
	var clients []host.Host
	for i := 2; i <= 5; i++ {
		c := rrClientFrom(t, fmt.Sprintf("127.0.0.%d", i))
		connectTo(t, c, d)
		clients = append(clients, c)
	}
	runtimeHeapSettle(t, d)
	hw := watchHeap(t, d)
	mem := watchMem(t, d)
	start := time.Now()
	held, refused := floodStreams(t, clients, d, protoDirectory, perClient, size)
	t.Logf("flood: %d streams of %d bytes held open, %d refused, in %v", len(held), size, refused, time.Since(start).Round(time.Millisecond))

	// Served while the flood is held.
	assertServing(t, d)
	time.Sleep(2 * time.Second)
	before, peak := hw.finish()
	mem.report(t, d, "stream flood")
	t.Logf("daemon heap in use: before %.1f MiB, peak %.1f MiB during the flood (%.1f KiB per held stream)",
		before, peak, (peak-before)*1024/float64(max(len(held), 1)))
	if len(held) < 4*perClient*9/10 {
		t.Fatalf("only %d streams held: the flood did not take place", len(held))
	}
	if size < 64<<10 && peak-before > 64 {
		t.Errorf("heap grew by %.1f MiB under %d streams of %d bytes", peak-before, len(held), size)
	}

	// Every flood stream is ended by the daemon (read deadline), unanswered.
	type end struct {
		n   int
		err error
	}
	ends := make(chan end, len(held))
	for _, s := range held {
		go func() {
			_ = s.SetReadDeadline(time.Now().Add(30 * time.Second))
			b, err := io.ReadAll(s)
			ends <- end{len(b), err}
		}()
	}
	for range held {
		e := <-ends
		if e.n > 0 {
			t.Fatalf("flood stream answered with %d bytes", e.n)
		}
		if errors.Is(e.err, os.ErrDeadlineExceeded) {
			t.Fatalf("daemon still held a flood stream 30 s later")
		}
	}
	t.Logf("all flood streams ended %v after the flood began", time.Since(start).Round(time.Second))
	for _, s := range held {
		_ = s.Reset()
	}
	t.Logf("daemon heap in use after the flood: %.1f MiB", heapInuse(t, d))

	// One byte over each protocol's cap: reset at once, no answer.
	c := newClient(t)
	connectTo(t, c, d)
	for proto, limit := range map[protocol.ID]int{
		protoDirectory: directory.MaxRequestSize,
		protoGif:       gif.MaxRequestSize,
		protoTurnCreds: turncreds.MaxRequestSize,
	} {
		e, err := badStream(c, d, proto, bytes.Repeat([]byte{0x61}, limit+1), false, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s, %d bytes: %s", proto, limit+1, e)
		if len(e.answer) > 0 || e.err == nil || e.held > 3*time.Second {
			t.Errorf("%s: a request of cap+1 bytes got %s; want a prompt reset without an answer", proto, e)
		}
	}
	assertServing(t, d)
}

// runtimeHeapSettle waits until the freshly started daemon's heap stops
// moving, so the flood's growth is not mixed with start-up.
func runtimeHeapSettle(t *testing.T, d *daemon) {
	t.Helper()
	prev := heapInuse(t, d)
	for i := 0; i < 10; i++ {
		time.Sleep(300 * time.Millisecond)
		cur := heapInuse(t, d)
		if cur-prev < 0.5 && prev-cur < 0.5 {
			return
		}
		prev = cur
	}
}

// TestHostileReqrespSilentStreams: 300 streams that negotiate a protocol
// and send nothing are reset at the first-byte deadline (5 s), not held for
// the full 15 s read deadline.
func TestHostileReqrespSilentStreams(t *testing.T) {
	d := startDaemon(t, testEnv(t.TempDir()))
	c := rrClientFrom(t, "127.0.0.2")
	connectTo(t, c, d)
	const n = 300
	protos := []protocol.ID{protoDirectory, protoGif, protoTurnCreds}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var worst time.Duration
	var failed []string
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e, err := badStream(c, d, protos[i%len(protos)], nil, true, 20*time.Second)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed = append(failed, err.Error())
				return
			}
			if len(e.answer) > 0 {
				failed = append(failed, "answered: "+e.String())
			}
			worst = max(worst, e.held)
		}()
	}
	wg.Wait()
	if len(failed) > 0 {
		t.Fatalf("%d of %d silent streams: %v", len(failed), n, failed[0])
	}
	t.Logf("%d silent streams: the last one was reset after %v", n, worst.Round(time.Millisecond))
	if worst > 10*time.Second {
		t.Errorf("silent streams held %v; want the %v first-byte deadline", worst, reqresp.FirstByteTimeout)
	}
	assertServing(t, d)
}

// fakeKlipyServer counts upstream calls and answers one GIF.
func fakeKlipyServer(t *testing.T) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var calls atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		_, _ = w.Write([]byte(`{"results":[{"id":"1","content_description":"a cat","media_formats":{` +
			`"gif":{"url":"https://media.example/1.gif"},"tinygif":{"url":"https://media.example/1t.gif","dims":[220,165]}}}]}`))
	}))
	t.Cleanup(srv.Close)
	return srv, &calls
}

func gifAsk(ctx context.Context, c host.Host, d *daemon, req gif.GifRequest) (int, error) {
	var resp gif.GifResponse
	if err := reqresp.CallCBOR(ctx, c, d.peerID, protoGif, req, &resp); err != nil {
		return 0, err
	}
	return len(resp.Results), nil
}

// TestHostileGifUpstream: 200 "trending" requests (and unknown kinds)
// with distinct queries just under the request cap cost one upstream call
// and one cache entry; 20 fresh identities on one address asking 10
// distinct searches each are held to the per-address budget; an honest
// client on another address still gets a fresh search answered.
//
// Before: the cache key was the raw kind:query:limit, so each of those
// requests was an upstream call (against Klipy's 100/min test quota) and
// a cache entry holding its query.
func TestHostileGifUpstream(t *testing.T) {
	srv, calls := fakeKlipyServer(t)
	env := testEnv(t.TempDir())
	env = append(env, "KLIPY_API_KEY=test-key", "DUSK_GIF_API_BASE="+srv.URL,
		"DUSK_GIF_UPSTREAM_PER_PEER_PER_MINUTE=5")
	d := startDaemon(t, env)
	ctx := ctx10(t)

	a := rrClientFrom(t, "127.0.0.2")
	connectTo(t, a, d)
	hw := watchHeap(t, d)
	query := strings.Repeat("x", gif.MaxRequestSize-100)
	kinds := []string{"trending", "featured", "", "TRENDING"}
	for i := 0; i < 200; i++ {
		n, err := gifAsk(ctx, a, d, gif.GifRequest{Kind: kinds[i%len(kinds)], Query: fmt.Sprint(i, query), Limit: 20})
		if err != nil || n != 1 {
			t.Fatalf("trending request %d: %d results, %v", i, n, err)
		}
	}
	before, peak := hw.finish()
	t.Logf("200 trending requests with %d-byte queries: %d upstream calls, heap %.1f -> %.1f MiB", len(query), calls.Load(), before, peak)
	if calls.Load() != 1 {
		t.Fatalf("upstream calls = %d, want 1 (every request is the same trending page)", calls.Load())
	}
	m := scrape(t, d.metrics)
	if m["dusk_gif_cache_entries"] != 1 {
		t.Errorf("cache entries = %v, want 1", m["dusk_gif_cache_entries"])
	}

	// Fresh identities on one address: 5 misses each, 50 per address
	// (plus what the address bucket refills while the loop runs: 50/min).
	var served, empty int
	floodStart := time.Now()
	for id := 0; id < 20; id++ {
		c := rrClientFrom(t, "127.0.0.3")
		connectTo(t, c, d)
		for q := 0; q < 10; q++ {
			n, err := gifAsk(ctx, c, d, gif.GifRequest{Kind: "search", Query: fmt.Sprintf("cat %d %d", id, q), Limit: 20})
			if err != nil {
				t.Fatalf("identity %d query %d: %v", id, q, err)
			}
			if n > 0 {
				served++
			} else {
				empty++
			}
		}
	}
	t.Logf("20 identities on 127.0.0.3, 200 distinct searches: %d answered from upstream, %d empty (limited); upstream calls so far %d",
		served, empty, calls.Load())
	refill := int(time.Since(floodStart).Minutes()*50) + 1
	if served < 50 || served > 50+refill || calls.Load() != int64(served+1) {
		t.Errorf("served %d misses (upstream calls %d); want the per-address budget of 50 (+%d refilled)", served, calls.Load(), refill)
	}

	// An honest client elsewhere gets a fresh search.
	h := rrClientFrom(t, "127.0.0.50")
	connectTo(t, h, d)
	if n, err := gifAsk(ctx, h, d, gif.GifRequest{Kind: "search", Query: "honest dog", Limit: 10}); err != nil || n != 1 {
		t.Fatalf("honest client: %d results, %v", n, err)
	}
	assertServing(t, d)
}

// seedDirectory writes profiles into a data dir before the daemon opens it.
func seedDirectory(t *testing.T, dataDir string, rows map[string]time.Time) {
	t.Helper()
	st, err := directory.Open(filepath.Join(dataDir, directory.FileName), nil)
	if err != nil {
		t.Fatal(err)
	}
	for id, seen := range rows {
		if err := st.Register(context.Background(), id, "seeded "+id[len(id)-4:], "", seen); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
}

func rrDirCall(ctx context.Context, c host.Host, d *daemon, req directory.Request) (directory.Response, error) {
	var resp directory.Response
	err := reqresp.CallCBOR(ctx, c, d.peerID, protoDirectory, req, &resp)
	return resp, err
}

// countLevel counts the daemon's log records of these loggers at these levels.
func (d *daemon) countLevel(loggers, levels []string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, l := range d.stderr {
		var rec map[string]any
		if json.Unmarshal([]byte(l), &rec) != nil {
			continue
		}
		lg, _ := rec["logger"].(string)
		lv, _ := rec["level"].(string)
		for _, want := range loggers {
			if lg == want {
				for _, wl := range levels {
					if lv == wl {
						n++
					}
				}
			}
		}
	}
	return n
}

// TestHostileDirectoryGrowth: profiles older than the expiry are swept at
// start; one address registering 80 fresh identities is cut at its
// per-address budget; 12 addresses × 40 identities fill a 200-row
// directory twice over and the table stays at 200 while an honest client
// arriving afterwards registers at once and is found; one peer's search
// flood is cut at its budget; credential and directory floods add no
// info/warn log line.
//
// Before: no cap, no expiry, no per-address limit: every identity added a
// row (and an fsync) forever, searches were unlimited, and every Register,
// Remove and credential was an info line.
func TestHostileDirectoryGrowth(t *testing.T) {
	dataDir := t.TempDir()
	now := time.Now()
	expired, kept := genID(t), genID(t)
	seedDirectory(t, dataDir, map[string]time.Time{
		expired: now.Add(-40 * 24 * time.Hour),
		kept:    now.Add(-2 * 24 * time.Hour),
	})
	env := append(testEnv(dataDir), "DUSK_DIRECTORY_MAX_ROWS=200", "DUSK_DIRECTORY_REGISTER_PER_ADDR_PER_MINUTE=50",
		"DUSK_DIRECTORY_SEARCH_PER_MINUTE=20", "DUSK_LOG_LEVEL=info")
	d := startDaemon(t, env)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	look := newClient(t)
	connectTo(t, look, d)
	found := func(id string) int {
		r, err := rrDirCall(ctx, look, d, directory.Request{Kind: directory.RequestSearch, Query: id})
		if err != nil || r.Kind != directory.ResponseResults {
			t.Fatalf("search %s: %+v %v", id, r, err)
		}
		return len(r.Results)
	}
	// The sweep runs when the service starts.
	for i := 0; i < 50 && found(expired) != 0; i++ {
		time.Sleep(100 * time.Millisecond)
	}
	if found(expired) != 0 || found(kept) != 1 {
		t.Fatalf("after the start-up sweep: expired found %d, kept found %d; want 0, 1", found(expired), found(kept))
	}
	quietBefore := d.countLevel([]string{"directory", "turncreds"}, []string{"info", "warn"})

	// One address, 80 fresh identities (paced by the daemon's connection
	// rate limit, so the budget refills a little meanwhile).
	ok, limited := 0, 0
	floodStart := time.Now()
	for i := 0; i < 80; i++ {
		c := rrClientFrom(t, "127.0.0.2")
		connectPaced(t, c, d)
		r, err := rrDirCall(ctx, c, d, directory.Request{Kind: directory.RequestRegister, DisplayName: fmt.Sprint("sybil ", i)})
		switch {
		case err != nil:
			t.Fatal(err)
		case r.Kind == directory.ResponseOk:
			ok++
		case r.Error == "rate limited":
			limited++
		default:
			t.Fatalf("register: %+v", r)
		}
		_ = c.Close()
	}
	took := time.Since(floodStart)
	refill := int(took.Minutes()*50) + 1
	t.Logf("80 identities from one address in %v: %d registered, %d rate limited", took.Round(time.Millisecond), ok, limited)
	if ok < 50 || ok > 50+refill {
		t.Errorf("one address registered %d identities; want its budget of 50 (+%d refilled)", ok, refill)
	}

	// 12 more addresses, 40 identities each: the table is full twice over.
	var wg sync.WaitGroup
	var regOK atomic.Int32
	for a := 10; a < 22; a++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 40; i++ {
				c := rrClientFrom(t, fmt.Sprintf("127.0.0.%d", a))
				connectTo(t, c, d)
				r, err := rrDirCall(ctx10(t), c, d, directory.Request{Kind: directory.RequestRegister, DisplayName: fmt.Sprintf("sybil %d-%d", a, i)})
				if err == nil && r.Kind == directory.ResponseOk {
					regOK.Add(1)
				}
				_ = c.Close()
			}
		}()
	}
	wg.Wait()
	m := scrape(t, d.metrics)
	t.Logf("12 addresses × 40 identities: %d registered; directory holds %v profiles, evicted %v",
		regOK.Load(), m["dusk_directory_profiles"], m[`dusk_directory_ops_total{op="evict",result="ok"}`])
	if regOK.Load() != 480 {
		t.Errorf("%d of 480 registrations accepted; a full directory must not refuse newcomers", regOK.Load())
	}
	if m["dusk_directory_profiles"] != 200 {
		t.Errorf("directory holds %v profiles, want the cap 200", m["dusk_directory_profiles"])
	}

	// An honest newcomer registers and is found at once.
	h := rrClientFrom(t, "127.0.0.50")
	connectTo(t, h, d)
	if r, err := rrDirCall(ctx, h, d, directory.Request{Kind: directory.RequestRegister, DisplayName: "Honest Harriet"}); err != nil || r.Kind != directory.ResponseOk {
		t.Fatalf("honest register: %+v %v", r, err)
	}
	if found(h.ID().String()) != 1 {
		t.Fatal("honest client not found after registering into a full directory")
	}

	// One peer's search flood: 20 answered, the rest refused; others served.
	s := rrClientFrom(t, "127.0.0.3")
	connectTo(t, s, d)
	answered := 0
	for i := 0; i < 60; i++ {
		r, err := rrDirCall(ctx, s, d, directory.Request{Kind: directory.RequestSearch, Query: "Q!"})
		if err != nil {
			t.Fatal(err)
		}
		if r.Kind == directory.ResponseResults {
			answered++
		}
	}
	t.Logf("60 searches from one peer: %d answered", answered)
	if answered != 20 {
		t.Errorf("one peer got %d searches answered; want its budget of 20", answered)
	}

	// Credential and Remove floods: still no info/warn line per request.
	for i := 0; i < 100; i++ {
		var creds turncreds.Response
		if err := reqresp.CallCBOR(ctx, s, d.peerID, protoTurnCreds, turncreds.Request{PeerID: s.ID().String()}, &creds); err != nil {
			t.Fatal(err)
		}
		if _, err := rrDirCall(ctx, s, d, directory.Request{Kind: directory.RequestRemove}); err != nil {
			t.Fatal(err)
		}
	}
	assertServing(t, d)
	if n := d.countLevel([]string{"directory", "turncreds"}, []string{"info", "warn"}) - quietBefore; n != 0 {
		t.Errorf("%d info/warn lines from directory/turncreds during the floods", n)
	}
}

// genID is a fresh, valid peer ID string.
func genID(t *testing.T) string {
	t.Helper()
	h, err := libp2p.New(libp2p.NoListenAddrs)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	return h.ID().String()
}
