package reservations

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/duskchat/dusk-relay/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testutil.IgnoreLibp2p()...)
}

func testRedis(t *testing.T) (redis.UniversalClient, string) {
	t.Helper()
	url, prefix := testutil.RedisURL(t)
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opt)
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb, prefix
}

func pid(n byte) peer.ID {
	_, id := testutil.FixedKey(n)
	return id
}

func addrsOf(s ...string) func() []ma.Multiaddr {
	var out []ma.Multiaddr
	for _, a := range s {
		out = append(out, ma.StringCast(a))
	}
	return func() []ma.Multiaddr { return out }
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for i := 0; !cond(); i++ {
		if i > 200 {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func lookup(t *testing.T, rdb redis.UniversalClient, prefix string, p peer.ID) []Record {
	t.Helper()
	recs, err := Lookup(context.Background(), rdb, prefix, p)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// Two relays record the same peer: both records are found, the latest
// expiry first; one relay's end leaves the other's; Close removes what
// the closing relay still holds; the key expires with its latest record.
func TestRecorderTwoRelays(t *testing.T) {
	rdb, prefix := testRedis(t)
	relayA, relayB, client1, client2 := pid(1), pid(2), pid(3), pid(4)
	a := New(rdb, prefix, nil)
	b := New(rdb, prefix, nil)
	a.Start(relayA, addrsOf("/ip4/198.51.100.1/tcp/4001", "/dns4/a.example/tcp/4001"))
	b.Start(relayB, addrsOf("/ip4/198.51.100.2/tcp/4001"))
	defer b.Close()

	now := time.Now()
	a.OnReserve(client1, now.Add(30*time.Minute))
	b.OnReserve(client1, now.Add(time.Hour))
	a.OnReserve(client2, now.Add(time.Hour))
	waitFor(t, "two records of client1", func() bool { return len(lookup(t, rdb, prefix, client1)) == 2 })
	recs := lookup(t, rdb, prefix, client1)
	if recs[0].Relay != relayB || recs[1].Relay != relayA || len(recs[1].Addrs) != 2 ||
		recs[1].Addrs[1].String() != "/dns4/a.example/tcp/4001" || recs[0].Expires.UnixMilli() != now.Add(time.Hour).UnixMilli() {
		t.Fatalf("records %+v", recs)
	}
	if ttl := rdb.PTTL(context.Background(), key(prefix, client1)).Val(); ttl < 59*time.Minute || ttl > time.Hour {
		t.Fatalf("key PTTL %v, want the latest record's", ttl)
	}
	a.OnEnd(client1)
	waitFor(t, "A's record of client1 removed", func() bool { return len(lookup(t, rdb, prefix, client1)) == 1 })
	if r := lookup(t, rdb, prefix, client1); r[0].Relay != relayB {
		t.Fatalf("left %+v", r)
	}
	// Renewal moves the expiry.
	a.OnReserve(client2, now.Add(2*time.Hour))
	waitFor(t, "renewal", func() bool {
		r := lookup(t, rdb, prefix, client2)
		return len(r) == 1 && r[0].Expires.UnixMilli() == now.Add(2*time.Hour).UnixMilli()
	})
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if r := lookup(t, rdb, prefix, client2); len(r) != 0 {
		t.Fatalf("A closed but its record stays: %+v", r)
	}
	if n := rdb.Exists(context.Background(), key(prefix, client2)).Val(); n != 0 {
		t.Fatal("empty key left behind")
	}
	// Events after Close are ignored, not written.
	a.OnReserve(client2, now.Add(time.Hour))
	time.Sleep(100 * time.Millisecond)
	if r := lookup(t, rdb, prefix, client2); len(r) != 0 {
		t.Fatalf("write after Close: %+v", r)
	}
}

// Expired fields are neither returned nor kept by the next write.
func TestExpiredRecordsSkipped(t *testing.T) {
	rdb, prefix := testRedis(t)
	p := pid(5)
	ctx := context.Background()
	past := time.Now().Add(-time.Minute)
	if err := rdb.HSet(ctx, key(prefix, p), pid(6).String(), encode(past, nil)).Err(); err != nil {
		t.Fatal(err)
	}
	if r := lookup(t, rdb, prefix, p); len(r) != 0 {
		t.Fatalf("expired record returned: %+v", r)
	}
	rec := New(rdb, prefix, nil)
	rec.Start(pid(7), addrsOf("/ip4/198.51.100.7/tcp/4001"))
	defer rec.Close()
	rec.OnReserve(p, time.Now().Add(time.Hour))
	waitFor(t, "record", func() bool { return len(lookup(t, rdb, prefix, p)) == 1 })
	if n := rdb.HLen(ctx, key(prefix, p)).Val(); n != 1 {
		t.Fatalf("%d fields, want the expired one dropped", n)
	}
	// Garbage from another version is skipped, not fatal.
	_ = rdb.HSet(ctx, key(prefix, p), "not-a-peer", "x").Err()
	if r := lookup(t, rdb, prefix, p); len(r) != 1 {
		t.Fatalf("with garbage: %+v", r)
	}
}

// Redis down: the hooks never block, the queue stays bounded, Close
// returns within its budget; Lookup fails typed.
func TestRecorderRedisDown(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialerRetries: 1, DialTimeout: 200 * time.Millisecond})
	defer rdb.Close()
	rec := New(rdb, "x:", nil)
	rec.Start(pid(1), addrsOf("/ip4/198.51.100.1/tcp/4001"))
	start := time.Now()
	exp := time.Now().Add(time.Hour)
	for i := range maxPending + 1000 {
		rec.OnReserve(peer.ID(fmt.Sprint("p", i)), exp)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("%d hook calls took %v", maxPending+1000, d)
	}
	rec.mu.Lock()
	n := len(rec.pending)
	rec.mu.Unlock()
	if n > maxPending {
		t.Fatalf("%d queued > %d", n, maxPending)
	}
	start = time.Now()
	_ = rec.Close()
	if d := time.Since(start); d > closeBudget+2*time.Second {
		t.Fatalf("Close took %v", d)
	}
	if _, err := Lookup(context.Background(), rdb, "x:", pid(2)); err == nil {
		t.Fatal("Lookup with Redis down: no error")
	}
}

// A Redis that lost the records (restarted empty, flushed) has them back
// at the next refresh, without the client renewing its reservation.
func TestRecordsRewrittenAfterLoss(t *testing.T) {
	rdb, prefix := testRedis(t)
	rec := New(rdb, prefix, nil)
	rec.SetRefresh(100 * time.Millisecond)
	rec.Start(pid(8), addrsOf("/ip4/198.51.100.8/tcp/4001"))
	defer rec.Close()
	p, gone := pid(9), pid(10)
	rec.OnReserve(p, time.Now().Add(time.Hour))
	rec.OnReserve(gone, time.Now().Add(time.Hour))
	rec.OnEnd(gone)
	waitFor(t, "record", func() bool { return len(lookup(t, rdb, prefix, p)) == 1 })
	if err := rdb.Del(context.Background(), key(prefix, p)).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "record rewritten", func() bool { return len(lookup(t, rdb, prefix, p)) == 1 })
	time.Sleep(300 * time.Millisecond)
	if r := lookup(t, rdb, prefix, gone); len(r) != 0 {
		t.Fatalf("an ended reservation came back: %+v", r)
	}
}
