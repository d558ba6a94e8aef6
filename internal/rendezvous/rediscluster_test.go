package rendezvous

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// startRedisCluster starts a Redis Cluster of three masters of this
// test's own (redis-server and redis-cli on loopback, no persistence) and
// returns a cluster client. Skipped without the binaries, failed in CI.
func startRedisCluster(t *testing.T) *redis.ClusterClient {
	t.Helper()
	server, err1 := exec.LookPath("redis-server")
	cli, err2 := exec.LookPath("redis-cli")
	if err1 != nil || err2 != nil {
		msg := "redis-server/redis-cli not installed (apt-get install redis-server)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	var addrs []string
	for range 3 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		_ = ln.Close()
		dir := t.TempDir()
		cmd := exec.Command(server, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "",
			"--appendonly", "no", "--cluster-enabled", "yes", "--cluster-config-file", dir+"/nodes.conf", "--dir", dir)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })
		addrs = append(addrs, fmt.Sprintf("127.0.0.1:%d", port))
	}
	for _, a := range addrs {
		c := redis.NewClient(&redis.Options{Addr: a})
		for i := 0; c.Ping(context.Background()).Err() != nil; i++ {
			if i > 100 {
				t.Fatalf("node %s does not answer", a)
			}
			time.Sleep(50 * time.Millisecond)
		}
		_ = c.Close()
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.Command(cli, args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	t.Cleanup(func() { _ = cc.Close() })
	for i := 0; ; i++ {
		info, err := cc.ClusterInfo(context.Background()).Result()
		if err == nil && len(info) > 0 && strings.Contains(info, "cluster_state:ok") {
			break
		}
		if i > 200 {
			t.Fatalf("cluster not ok: %v %s", err, info)
		}
		time.Sleep(50 * time.Millisecond)
	}
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
