package rendezvous

import (
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/testutil"
)

// startRedisCluster starts a Redis Cluster of three masters of this
// test's own and returns a cluster client.
func startRedisCluster(t *testing.T) *redis.ClusterClient {
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: testutil.RedisClusterNodes(t)})
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// On a Redis Cluster of three shards the store works as on one server:
// every script touches one slot (a namespace's, or the budgets'), and the
// namespaces spread over the shards.
func TestRedisClusterShardsByNamespace(t *testing.T) {
	cc := startRedisCluster(t)
	clock := newFakeClock()
	s := New(testCfg, zap.NewNop(), nil, WithRedis(cc, "dusk:"), WithClock(clock.Now), WithMaxPerPeer(3))
	defer s.Close()
	exp := clock.Now().Add(3 * time.Hour)
	for i := 1; i <= 30; i++ {
		ns := fmt.Sprintf("dusk/community/com_%016x", i%10)
		mustAdd(t, s, pid(i), testSrc, ns, []byte{byte(i)}, exp)
	}
	for i := range 10 {
		ns := fmt.Sprintf("dusk/community/com_%016x", i)
		if got := pageAll(t, s, ns, 2); len(got) != 3 {
			t.Fatalf("%s: %d registrations, want 3", ns, len(got))
		}
	}
	// Budgets, eviction, unregister-all and the sweep run there too.
	mustAdd(t, s, pid(1), testSrc, "a", []byte("r"), exp)
	mustAdd(t, s, pid(1), testSrc, "b", []byte("r"), exp)
	if _, _, err := s.be.add(bg, pid(1), testSrc, "c", []byte("r"), exp, clock.Now()); err != errPeerLimit {
		t.Fatalf("per-peer cap on the cluster: %v", err)
	}
	if n, err := s.be.unregister(bg, pid(1), ""); n != 3 || err != nil {
		t.Fatalf("unregister all: %d %v", n, err)
	}
	clock.Advance(4 * time.Hour)
	if n := s.Registrations(); n != 0 {
		t.Fatalf("after expiry: %d", n)
	}
	// The namespaces' keys sit on more than one shard.
	shards := map[string]bool{}
	for i := range 10 {
		slot := cc.ClusterKeySlot(bg, s.be.(*redisBackend).nsKeys(nsTag(fmt.Sprintf("dusk/community/com_%016x", i)))[0]).Val()
		shards[fmt.Sprint(slot*3/16384)] = true
	}
	if len(shards) < 2 {
		t.Fatalf("10 namespaces on %d shard(s)", len(shards))
	}
}
