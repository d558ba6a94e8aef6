package gif

import (
	"context"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/duskchat/dusk-relay/internal/config"
	"github.com/duskchat/dusk-relay/internal/reqresp"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// go-libp2p / go-log globals that live for the whole process.
		goleak.IgnoreAnyFunction("github.com/ipfs/go-log/v2/writer.(*MirrorWriter).logRoutine"),
		goleak.IgnoreAnyFunction("go.opencensus.io/stats/view.(*worker).start"),
	)
}

const testKey = "s3cr3t-k3y"

// Golden bytes from shared/wire-vectors/vectors.json (Rust cbor4ii output).
const (
	vecReqSearch     = "a3646b696e646673656172636865717565727963636174656c696d697414"
	vecReqTrending   = "a3646b696e64687472656e64696e6765717565727960656c696d69741832"
	vecReqLimit4Byte = "a3646b696e646673656172636865717565727963636174656c696d69741a00000014"
	vecRespEmpty     = "a167726573756c747380"
	vecRespTwo       = "a167726573756c747382a56269647278543949674735304662374d693070724243657469746c656a63617420747970696e676375726c783668747470733a2f2f6d656469612e6578616d706c652e636f6d2f78543949674735304662374d6930707242432f67697068792e6769666770726576696577783568747470733a2f2f6d656469612e6578616d706c652e636f6d2f78543949674735304662374d6930707242432f323030772e6769666464696d73821901e019010ea56269646132657469746c65606375726c61756770726576696577606464696d7382001affffffff"
)

// klipyTwo is shaped like a recorded Klipy v2 (Tenor-compatible) answer and
// maps to exactly the gif_response_two vector.
const klipyTwo = `{
  "results": [
    {
      "id": "xT9IgG50Fb7Mi0prBC",
      "title": "Cat Typing GIF",
      "content_description": "cat typing",
      "created": 1700000000.123,
      "itemurl": "https://klipy.com/gifs/cat-typing",
      "url": "https://klipy.com/gifs/cat-typing",
      "tags": ["cat", "typing"],
      "flags": [],
      "hasaudio": false,
      "media_formats": {
        "gif": {"url": "https://media.example.com/xT9IgG50Fb7Mi0prBC/giphy.gif", "duration": 0, "preview": "", "dims": [480, 270], "size": 1048576},
        "tinygif": {"url": "https://media.example.com/xT9IgG50Fb7Mi0prBC/200w.gif", "duration": 0, "preview": "", "dims": [480, 270], "size": 65536}
      }
    },
    {
      "id": "2",
      "media_formats": {
        "gif": {"url": "u", "dims": [1, 1]},
        "tinygif": {"url": "", "dims": [0, 4294967295]}
      }
    }
  ],
  "next": "2"
}`

// fakeKlipy plays the Klipy API on loopback and records what it was asked.
type fakeKlipy struct {
	srv   *httptest.Server
	calls atomic.Int64
	mu    sync.Mutex
	uris  []string
	// respond answers a request; default answers klipyTwo.
	respond func(w http.ResponseWriter, r *http.Request)
}

func newFakeKlipy(t *testing.T, respond func(w http.ResponseWriter, r *http.Request)) *fakeKlipy {
	t.Helper()
	k := &fakeKlipy{respond: respond}
	if k.respond == nil {
		k.respond = func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(klipyTwo)) }
	}
	k.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		k.mu.Lock()
		k.uris = append(k.uris, r.URL.RequestURI())
		k.mu.Unlock()
		k.calls.Add(1)
		k.respond(w, r)
	}))
	t.Cleanup(k.srv.Close)
	return k
}

func (k *fakeKlipy) lastURI() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.uris) == 0 {
		return ""
	}
	return k.uris[len(k.uris)-1]
}

// clock is a settable clock for TTL and limiter tests.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newService(t *testing.T, base, key string, testKey bool, opts ...Option) (*Service, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	s := New(config.Gif{KlipyAPIKey: key, KlipyTestKey: config.Flag(testKey), GifAPIBase: base},
		zap.New(core), prometheus.NewRegistry(), opts...)
	t.Cleanup(func() { _ = s.Close() })
	return s, logs
}

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestUpstreamURL(t *testing.T) {
	k := newFakeKlipy(t, nil)
	s, _ := newService(t, k.srv.URL+"/v2/", testKey, false)
	ctx := ctxT(t)
	cases := []struct {
		req  GifRequest
		want string
	}{
		{GifRequest{Kind: "search", Query: "cat", Limit: 20},
			"/v2/search?q=cat&key=" + testKey + "&limit=20&media_filter=tinygif,gif"},
		// escaped like Rust's urlencoding (space %20, not +), limit clamped
		{GifRequest{Kind: "search", Query: "Zoë & dogs+1/2?~", Limit: 100},
			"/v2/search?q=zo%C3%AB%20%26%20dogs%2B1%2F2%3F~&key=" + testKey + "&limit=50&media_filter=tinygif,gif"},
		{GifRequest{Kind: "trending", Query: "", Limit: 50},
			"/v2/featured?key=" + testKey + "&limit=50&media_filter=tinygif,gif"},
		{GifRequest{Kind: "trending", Query: "ignored", Limit: 3},
			"/v2/featured?key=" + testKey + "&limit=3&media_filter=tinygif,gif"},
		// any other kind is trending; limit 0 asks for one
		{GifRequest{Kind: "bogus", Query: "x", Limit: 0},
			"/v2/featured?key=" + testKey + "&limit=1&media_filter=tinygif,gif"},
		// a blank search query asks for featured GIFs
		{GifRequest{Kind: "search", Query: " \t ", Limit: 7},
			"/v2/featured?key=" + testKey + "&limit=7&media_filter=tinygif,gif"},
	}
	for i, c := range cases {
		if got := s.Search(ctx, c.req); len(got.Results) != 2 {
			t.Fatalf("case %d: got %d results, want 2", i, len(got.Results))
		}
		if got := k.calls.Load(); got != int64(i+1) {
			t.Fatalf("case %d: upstream calls = %d, want %d", i, got, i+1)
		}
		if got := k.lastURI(); got != c.want {
			t.Errorf("case %d: upstream URI\n got %s\nwant %s", i, got, c.want)
		}
	}
}

func TestKeyIsEscaped(t *testing.T) {
	s, _ := newService(t, "https://api.example.com/v2", "a+b&c", false)
	got := s.upstreamURL(GifRequest{Kind: "trending", Limit: 1})
	if want := "https://api.example.com/v2/featured?key=a%2Bb%26c&limit=1&media_filter=tinygif,gif"; got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}

func TestMapping(t *testing.T) {
	const body = `{"results": [
	  {"id": "full", "content_description": "desc", "title": "ignored",
	   "media_formats": {"gif": {"url": "g1"}, "tinygif": {"url": "p1", "dims": [100, 80]}}},
	  {"id": "title-fallback", "title": "the title",
	   "media_formats": {"gif": {"url": "g2"}, "tinygif": {"url": "p2"}}},
	  {"id": "empty-description", "content_description": "", "title": "not used",
	   "media_formats": {"gif": {"url": "g3"}, "tinygif": {"url": "p3", "dims": [1]}}},
	  {"id": "no-gif", "media_formats": {"tinygif": {"url": "p4", "dims": [1, 2]}}},
	  {"id": "no-tinygif", "media_formats": {"gif": {"url": "g5"}}},
	  {"id": "url-not-string", "media_formats": {"gif": {"url": 5}, "tinygif": {"url": "p6"}}},
	  {"id": 7, "content_description": 3,
	   "media_formats": {"gif": {"url": "g7"}, "tinygif": {"url": "p7", "dims": [-1, 2]}}},
	  {"id": "float-dims", "media_formats": {"gif": {"url": "g8"}, "tinygif": {"url": "p8", "dims": [1.5, 2]}}},
	  {"id": "wide", "media_formats": {"gif": {"url": "g9"}, "tinygif": {"url": "p9", "dims": [4294967296, 4294967297, 9]}}},
	  "not an object"
	]}`
	k := newFakeKlipy(t, func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(body)) })
	s, _ := newService(t, k.srv.URL, testKey, false)
	got := s.Search(ctxT(t), GifRequest{Kind: "search", Query: "x", Limit: 10}).Results
	want := []GifResult{
		{ID: "full", Title: "desc", URL: "g1", Preview: "p1", Dims: [2]uint32{100, 80}},
		{ID: "title-fallback", Title: "the title", URL: "g2", Preview: "p2", Dims: [2]uint32{220, 165}},
		{ID: "empty-description", Title: "", URL: "g3", Preview: "p3", Dims: [2]uint32{220, 165}},
		{ID: "", Title: "", URL: "g7", Preview: "p7", Dims: [2]uint32{220, 165}},
		{ID: "float-dims", URL: "g8", Preview: "p8", Dims: [2]uint32{220, 165}},
		// Rust `as u32` truncates.
		{ID: "wide", URL: "g9", Preview: "p9", Dims: [2]uint32{0, 1}},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d results %+v, want %d", len(got), got, len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("result %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestNonObjectBodiesGiveEmptyResults(t *testing.T) {
	for _, body := range []string{`[]`, `{"results": {}}`, `{"results": null}`, `{}`, `null`, `"x"`} {
		got, err := parseKlipy([]byte(body))
		if err != nil || len(got) != 0 {
			t.Errorf("%s: got %v, %v; want no results, no error", body, got, err)
		}
	}
}

func TestCacheHit(t *testing.T) {
	k := newFakeKlipy(t, nil)
	s, _ := newService(t, k.srv.URL, testKey, false)
	ctx := ctxT(t)
	first := s.Search(ctx, GifRequest{Kind: "search", Query: "Cat", Limit: 20})
	// Same key after trim + lowercase.
	second := s.Search(ctx, GifRequest{Kind: "search", Query: "  cAT ", Limit: 20})
	if k.calls.Load() != 1 {
		t.Fatalf("upstream calls = %d, want 1", k.calls.Load())
	}
	if len(first.Results) != 2 || len(second.Results) != 2 || first.Results[0] != second.Results[0] {
		t.Fatalf("results differ: %+v vs %+v", first, second)
	}
	if got := metricValue(s.m.hits); got != 1 {
		t.Errorf("hits = %v, want 1", got)
	}
	if got := metricValue(s.m.misses); got != 1 {
		t.Errorf("misses = %v, want 1", got)
	}
	if got := metricValue(s.m.upstream); got != 1 {
		t.Errorf("upstream = %v, want 1", got)
	}
	// Another limit is another key.
	s.Search(ctx, GifRequest{Kind: "search", Query: "cat", Limit: 21})
	if k.calls.Load() != 2 {
		t.Fatalf("upstream calls = %d, want 2", k.calls.Load())
	}
}

func TestEmptyResultsAreNotCached(t *testing.T) {
	k := newFakeKlipy(t, func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(`{"results": []}`)) })
	s, _ := newService(t, k.srv.URL, testKey, false)
	ctx := ctxT(t)
	for range 3 {
		if got := s.Search(ctx, GifRequest{Kind: "search", Query: "nothing", Limit: 5}); got.Results == nil || len(got.Results) != 0 {
			t.Fatalf("got %#v, want empty non-nil results", got.Results)
		}
	}
	if k.calls.Load() != 3 {
		t.Fatalf("upstream calls = %d, want 3", k.calls.Load())
	}
}

func TestTTLTrendingVersusSearch(t *testing.T) {
	k := newFakeKlipy(t, nil)
	clk := newClock()
	s, _ := newService(t, k.srv.URL, testKey, false, WithClock(clk.Now))
	ctx := ctxT(t)
	trending := GifRequest{Kind: "trending", Limit: 50}
	search := GifRequest{Kind: "search", Query: "cat", Limit: 20}
	s.Search(ctx, trending)
	s.Search(ctx, search)
	if k.calls.Load() != 2 {
		t.Fatalf("upstream calls = %d, want 2", k.calls.Load())
	}

	clk.Add(TrendingTTL) // exactly 10 min: still fresh (Rust: elapsed > ttl expires)
	s.Search(ctx, trending)
	if k.calls.Load() != 2 {
		t.Fatalf("trending refetched at exactly its TTL: calls = %d", k.calls.Load())
	}
	clk.Add(time.Second) // 10 min 1 s: trending expired, search still fresh
	s.Search(ctx, trending)
	s.Search(ctx, search)
	if k.calls.Load() != 3 {
		t.Fatalf("after 10m1s: calls = %d, want 3 (trending refetched, search cached)", k.calls.Load())
	}

	clk.Add(SearchTTL - TrendingTTL) // search now 30 min 1 s old
	s.Search(ctx, search)
	if k.calls.Load() != 4 {
		t.Fatalf("after 30m1s: calls = %d, want 4 (search refetched)", k.calls.Load())
	}

	// Eviction drops what expired: at +41 min the refetched trending
	// (inserted at +10m1s) is stale, the refetched search is not.
	clk.Add(11 * time.Minute)
	evicted, left := s.cache.evictExpired(clk.Now())
	if evicted != 1 || left != 1 {
		t.Fatalf("evicted %d, left %d; want 1, 1", evicted, left)
	}
}

func TestCacheIsBounded(t *testing.T) {
	c := newCache(3, 1<<30)
	exp := time.Now().Add(time.Hour)
	for i := range 5 {
		c.put(fmt.Sprint(i), []GifResult{{ID: fmt.Sprint(i)}}, exp)
	}
	if c.len() != 3 {
		t.Fatalf("len = %d, want 3", c.len())
	}
	for i, want := range []bool{false, false, true, true, true} {
		if _, ok := c.get(fmt.Sprint(i), time.Now()); ok != want {
			t.Errorf("entry %d present = %v, want %v (oldest evicted first)", i, ok, want)
		}
	}
}

func TestTestKeyLimiter(t *testing.T) {
	k := newFakeKlipy(t, nil)
	clk := newClock()
	s, logs := newService(t, k.srv.URL, testKey, true, WithClock(clk.Now))
	ctx := ctxT(t)
	for i := range TestKeyMaxCalls {
		if got := s.Search(ctx, GifRequest{Kind: "search", Query: fmt.Sprint("q", i), Limit: 1}); len(got.Results) != 2 {
			t.Fatalf("call %d: %d results, want 2", i, len(got.Results))
		}
		clk.Add(100 * time.Millisecond)
	}
	// 101st distinct query inside the window: refused, no upstream call.
	for range 3 {
		if got := s.Search(ctx, GifRequest{Kind: "search", Query: "one too many", Limit: 1}); len(got.Results) != 0 {
			t.Fatalf("over budget: got %d results, want 0", len(got.Results))
		}
	}
	if k.calls.Load() != TestKeyMaxCalls {
		t.Fatalf("upstream calls = %d, want %d", k.calls.Load(), TestKeyMaxCalls)
	}
	if got := metricValue(s.m.limited); got != 3 {
		t.Errorf("rate_limited = %v, want 3", got)
	}
	if n := logs.FilterMessageSnippet("rate limit reached").Len(); n != 1 {
		t.Errorf("rate-limit warnings = %d, want 1", n)
	}
	// Cached entries are still served while limited.
	if got := s.Search(ctx, GifRequest{Kind: "search", Query: "q0", Limit: 1}); len(got.Results) != 2 {
		t.Fatalf("cached entry while limited: %d results", len(got.Results))
	}
	// The window slides: the first call (t0) leaves it after 60 s.
	clk.Add(TestKeyWindow - 10*time.Second + time.Millisecond)
	if got := s.Search(ctx, GifRequest{Kind: "search", Query: "one too many", Limit: 1}); len(got.Results) != 2 {
		t.Fatalf("after the window slid: %d results, want 2", len(got.Results))
	}
	if k.calls.Load() != TestKeyMaxCalls+1 {
		t.Fatalf("upstream calls = %d, want %d", k.calls.Load(), TestKeyMaxCalls+1)
	}
	// ...but only one slot was freed.
	if got := s.Search(ctx, GifRequest{Kind: "search", Query: "and another", Limit: 1}); len(got.Results) != 0 {
		t.Fatalf("second call after slide: %d results, want 0", len(got.Results))
	}
}

func TestUpstreamFailuresGiveEmptyResults(t *testing.T) {
	release := make(chan struct{})
	k := newFakeKlipy(t, func(w http.ResponseWriter, r *http.Request) {
		switch q := r.URL.Query().Get("q"); q {
		case "500":
			http.Error(w, "boom", http.StatusInternalServerError)
		case "404":
			w.WriteHeader(http.StatusNotFound)
		case "badjson":
			_, _ = w.Write([]byte(`{"results": [`))
		case "trailing":
			_, _ = w.Write([]byte(klipyTwo + `{}`))
		case "huge":
			_, _ = w.Write([]byte(`{"results": [], "pad": "`))
			_, _ = w.Write([]byte(strings.Repeat("x", MaxUpstreamBody)))
			_, _ = w.Write([]byte(`"}`))
		case "slow":
			select {
			case <-r.Context().Done():
			case <-release:
			}
		default:
			_, _ = w.Write([]byte(klipyTwo))
		}
	})
	defer close(release)
	clk := newClock()
	s, logs := newService(t, k.srv.URL, testKey, false, WithClock(clk.Now),
		WithHTTPClient(&http.Client{Timeout: 200 * time.Millisecond}))
	ctx := ctxT(t)
	queries := []string{"500", "404", "badjson", "trailing", "huge", "slow"}
	for _, q := range queries {
		got := s.Search(ctx, GifRequest{Kind: "search", Query: q, Limit: 5})
		if got.Results == nil || len(got.Results) != 0 {
			t.Errorf("%s: got %#v, want empty non-nil results", q, got.Results)
		}
		clk.Add(failLogEvery) // one warning per failLogEvery
	}
	if got := metricValue(s.m.upstreamErr); got != float64(len(queries)) {
		t.Errorf("upstream errors = %v, want %d", got, len(queries))
	}
	// Failures are not cached: asking again goes upstream again.
	s.Search(ctx, GifRequest{Kind: "search", Query: "500", Limit: 5})
	if k.calls.Load() != int64(len(queries)+1) {
		t.Errorf("upstream calls = %d, want %d", k.calls.Load(), len(queries)+1)
	}
	// Every failure a minute apart was warned about, and the key never
	// reached the log (the timeout error from net/http quotes the full URL).
	if n := logs.FilterMessage("klipy request failed").Len(); n != len(queries)+1 {
		t.Errorf("warnings = %d, want %d", n, len(queries)+1)
	}
	// Failures within a minute: one warning, which counts the others.
	clk.Add(failLogEvery)
	for range 5 {
		s.Search(ctx, GifRequest{Kind: "search", Query: "500", Limit: 5})
	}
	clk.Add(failLogEvery)
	s.Search(ctx, GifRequest{Kind: "search", Query: "500", Limit: 5})
	warned := logs.FilterMessage("klipy request failed").All()
	if len(warned) != len(queries)+3 || warned[len(warned)-1].ContextMap()["suppressed_since_last"] != int64(4) {
		t.Errorf("burst of failures: %d warnings, last %v", len(warned), warned[len(warned)-1].ContextMap())
	}
	sawURL := false
	for _, e := range logs.All() {
		text := e.Message + fmt.Sprint(e.ContextMap())
		if strings.Contains(text, testKey) {
			t.Fatalf("API key leaked into log: %s", text)
		}
		if strings.Contains(text, "key=REDACTED") {
			sawURL = true
		}
	}
	if !sawURL {
		t.Errorf("expected a redacted URL in the timeout warning")
	}
	// A healthy request still works afterwards.
	if got := s.Search(ctx, GifRequest{Kind: "search", Query: "ok", Limit: 5}); len(got.Results) != 2 {
		t.Fatalf("healthy query: %d results", len(got.Results))
	}
}

func TestNoKey(t *testing.T) {
	k := newFakeKlipy(t, nil)
	s, logs := newService(t, k.srv.URL, "", false)
	if n := logs.FilterLevelExact(zapcore.WarnLevel).Len(); n != 1 {
		t.Fatalf("warnings at start = %d, want 1", n)
	}
	for range 3 {
		if got := s.Search(ctxT(t), GifRequest{Kind: "trending", Limit: 10}); got.Results == nil || len(got.Results) != 0 {
			t.Fatalf("got %#v, want empty non-nil", got.Results)
		}
	}
	if k.calls.Load() != 0 {
		t.Fatalf("upstream calls without key = %d", k.calls.Load())
	}
	if n := logs.FilterLevelExact(zapcore.WarnLevel).Len(); n != 1 {
		t.Fatalf("warnings after requests = %d, want still 1", n)
	}
}

func TestConcurrentIdenticalMissesShareOneCall(t *testing.T) {
	release := make(chan struct{})
	k := newFakeKlipy(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		_, _ = w.Write([]byte(klipyTwo))
	})
	s, _ := newService(t, k.srv.URL, testKey, false)
	ctx := ctxT(t)
	const n = 32
	var wg sync.WaitGroup
	results := make([]int, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = len(s.Search(ctx, GifRequest{Kind: "search", Query: "cat", Limit: 20}).Results)
		}()
	}
	waitFor(t, func() bool { return metricValue(s.m.misses) == n && k.calls.Load() == 1 })
	close(release)
	wg.Wait()
	if k.calls.Load() != 1 {
		t.Fatalf("upstream calls = %d, want 1", k.calls.Load())
	}
	for i, r := range results {
		if r != 2 {
			t.Fatalf("caller %d got %d results, want 2", i, r)
		}
	}
}

func TestSlowUpstreamDoesNotBlockCacheHits(t *testing.T) {
	release := make(chan struct{})
	k := newFakeKlipy(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("q") == "slow" {
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
		}
		_, _ = w.Write([]byte(klipyTwo))
	})
	s, _ := newService(t, k.srv.URL, testKey, false)
	ctx := ctxT(t)
	s.Search(ctx, GifRequest{Kind: "search", Query: "cat", Limit: 20})

	slowDone := make(chan struct{})
	go func() {
		defer close(slowDone)
		s.Search(ctx, GifRequest{Kind: "search", Query: "slow", Limit: 20})
	}()
	waitFor(t, func() bool { return k.calls.Load() == 2 })
	// The slow fetch is in flight; a cached query and another miss answer.
	if got := s.Search(ctx, GifRequest{Kind: "search", Query: "cat", Limit: 20}); len(got.Results) != 2 {
		t.Fatalf("cache hit during slow upstream: %d results", len(got.Results))
	}
	if got := s.Search(ctx, GifRequest{Kind: "search", Query: "dog", Limit: 20}); len(got.Results) != 2 {
		t.Fatalf("other miss during slow upstream: %d results", len(got.Results))
	}
	select {
	case <-slowDone:
		t.Fatal("slow request finished before release")
	default:
	}
	close(release)
	<-slowDone
}

func TestCallerContextEndsWait(t *testing.T) {
	release := make(chan struct{})
	k := newFakeKlipy(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	defer close(release)
	s, _ := newService(t, k.srv.URL, testKey, false)
	ctx, cancel := context.WithCancel(ctxT(t))
	done := make(chan GifResponse)
	go func() { done <- s.Search(ctx, GifRequest{Kind: "trending", Limit: 1}) }()
	waitFor(t, func() bool { return k.calls.Load() == 1 })
	cancel()
	if got := <-done; got.Results == nil || len(got.Results) != 0 {
		t.Fatalf("got %#v, want empty non-nil", got.Results)
	}
}

// TestGoldenOverLibp2p runs the protocol the way a Rust client does and
// compares the bytes with the vectors the Rust encoder produced.
func TestGoldenOverLibp2p(t *testing.T) {
	k := newFakeKlipy(t, nil)
	srvHost, cli := newHost(t), newHost(t)
	connect(t, cli, srvHost)
	ctx := ctxT(t)

	s, _ := newService(t, k.srv.URL, testKey, false)
	s.Attach(ctx, srvHost)

	for _, reqHex := range []string{vecReqSearch, vecReqLimit4Byte} {
		resp, err := reqresp.Call(ctx, cli, srvHost.ID(), Protocol, mustHex(t, reqHex))
		if err != nil {
			t.Fatalf("call: %v", err)
		}
		if got := hex.EncodeToString(resp); got != vecRespTwo {
			t.Fatalf("response bytes\n got %s\nwant %s", got, vecRespTwo)
		}
	}
	if k.calls.Load() != 1 || k.lastURI() != "/search?q=cat&key="+testKey+"&limit=20&media_filter=tinygif,gif" {
		t.Fatalf("upstream calls = %d, last %q", k.calls.Load(), k.lastURI())
	}

	// Undecodable requests (negative limit, garbage): closed without an
	// answer, and the service keeps working.
	for _, bad := range []string{"a3646b696e646673656172636865717565727963636174656c696d697420", "ff", ""} {
		resp, err := reqresp.Call(ctx, cli, srvHost.ID(), Protocol, mustHex(t, bad))
		if len(resp) != 0 {
			t.Fatalf("bad request %q: resp %x, err %v; want no answer", bad, resp, err)
		}
	}

	// No key: the empty vector (results never null).
	noKeyHost := newHost(t)
	connect(t, cli, noKeyHost)
	s2, _ := newService(t, k.srv.URL, "", false)
	s2.Attach(ctx, noKeyHost)
	resp, err := reqresp.Call(ctx, cli, noKeyHost.ID(), Protocol, mustHex(t, vecReqTrending))
	if err != nil {
		t.Fatalf("call: %v", err)
	}
	if got := hex.EncodeToString(resp); got != vecRespEmpty {
		t.Fatalf("no-key response %s, want %s", got, vecRespEmpty)
	}

	// After Close the protocol is gone.
	_ = s2.Close()
	if _, err := reqresp.Call(ctx, cli, noKeyHost.ID(), Protocol, mustHex(t, vecReqTrending)); err == nil {
		t.Fatal("call after Close succeeded")
	}
}

func TestEncodingMatchesVectors(t *testing.T) {
	two := GifResponse{Results: []GifResult{
		{ID: "xT9IgG50Fb7Mi0prBC", Title: "cat typing",
			URL:     "https://media.example.com/xT9IgG50Fb7Mi0prBC/giphy.gif",
			Preview: "https://media.example.com/xT9IgG50Fb7Mi0prBC/200w.gif", Dims: [2]uint32{480, 270}},
		{ID: "2", URL: "u", Dims: [2]uint32{0, 4294967295}},
	}}
	for _, c := range []struct {
		v    any
		want string
	}{
		{GifRequest{Kind: "search", Query: "cat", Limit: 20}, vecReqSearch},
		{GifRequest{Kind: "trending", Query: "", Limit: 50}, vecReqTrending},
		{GifResponse{}, vecRespEmpty},
		{two, vecRespTwo},
	} {
		b, err := reqresp.Marshal(c.v)
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(b); got != c.want {
			t.Errorf("%T: got %s, want %s", c.v, got, c.want)
		}
	}
}

func BenchmarkCacheHit(b *testing.B) {
	k := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(klipyTwo)) }))
	defer k.Close()
	s := New(config.Gif{KlipyAPIKey: testKey, GifAPIBase: k.URL}, zap.NewNop(), nil)
	defer func() { _ = s.Close() }()
	ctx := context.Background()
	req := GifRequest{Kind: "search", Query: "cat", Limit: 20}
	s.Search(ctx, req)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if len(s.Search(ctx, req).Results) != 2 {
				b.Fatal("miss")
			}
		}
	})
}

// metricValue reads a counter or gauge.
func metricValue(m prometheus.Metric) float64 {
	var out dto.Metric
	if err := m.Write(&out); err != nil {
		return -1
	}
	if out.Counter != nil {
		return out.Counter.GetValue()
	}
	return out.Gauge.GetValue()
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// waitFor polls cond for at most 10 s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for range 1000 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("condition not reached within 10 s")
}

func newHost(t *testing.T) host.Host {
	t.Helper()
	h, err := libp2p.New(
		libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.DisableMetrics(),
		libp2p.DisableRelay(),
	)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

func connect(t *testing.T, a, b host.Host) {
	t.Helper()
	if err := a.Connect(ctxT(t), peer.AddrInfo{ID: b.ID(), Addrs: b.Addrs()}); err != nil {
		t.Fatal(err)
	}
}
