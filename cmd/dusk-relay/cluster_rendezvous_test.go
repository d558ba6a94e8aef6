package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/record"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/redis/go-redis/v9"
	pb "github.com/waku-org/go-libp2p-rendezvous/pb"

	"github.com/duskchat/dusk-relay/internal/reservations"
	"github.com/duskchat/dusk-relay/internal/testutil"
)

// privateRedis is a redis-server of this test's own, on a free loopback
// port, that the test may stop and start again (the shared test Redis
// cannot be stopped). It holds no data across restarts (--save ”).
type privateRedis struct {
	t        *testing.T
	bin      string
	port     int
	password string
	cmd      *exec.Cmd
	done     chan struct{}
}

func startPrivateRedis(t *testing.T, password string) *privateRedis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		msg := "redis-server not installed (apt-get install redis-server, or run the tests through .ci/engines.sh)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()
	r := &privateRedis{t: t, bin: bin, port: port, password: password}
	r.start()
	t.Cleanup(r.stop)
	return r
}

func (r *privateRedis) url() string {
	return fmt.Sprintf("redis://:%s@127.0.0.1:%d", r.password, r.port)
}

func (r *privateRedis) start() {
	r.t.Helper()
	r.cmd = exec.Command(r.bin, "--port", strconv.Itoa(r.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--requirepass", r.password, "--dir", r.t.TempDir())
	if err := r.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	r.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(r.cmd, r.done)
	c := r.client()
	defer c.Close()
	for i := 0; ; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return
		}
		if i > 100 {
			r.t.Fatalf("private redis-server on %d: %v", r.port, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop kills the server (no shutdown courtesy: the engine goes away).
func (r *privateRedis) stop() {
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	<-r.done
	r.cmd = nil
}

func (r *privateRedis) client() *redis.Client {
	return redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", r.port), Password: r.password, MaxRetries: -1})
}

func rdvDiscoverPage(ns string, limit uint64, cookie []byte) *pb.Message {
	return &pb.Message{Type: pb.Message_DISCOVER.Enum(), Discover: &pb.Message_Discover{Ns: &ns, Limit: &limit, Cookie: cookie}}
}

// registeredPeers returns the peers of the records in a discover answer.
func registeredPeers(t *testing.T, regs []*pb.Message_Register) []peer.ID {
	t.Helper()
	var out []peer.ID
	for _, r := range regs {
		_, rec, err := record.ConsumeEnvelope(r.GetSignedPeerRecord(), peer.PeerRecordEnvelopeDomain)
		if err != nil {
			t.Fatal(err)
		}
		pr, ok := rec.(*peer.PeerRecord)
		if !ok {
			t.Fatalf("record of type %T", rec)
		}
		out = append(out, pr.PeerID)
	}
	return out
}

// TestClusterRendezvousTwoDaemons: two relays share one Redis. A
// namespace registered at B is discovered at A, and a cookie A hands out
// continues at B. A reservation at A is recorded in Redis with A's peer
// ID, addresses and the reservation's TTL, and removed when the client
// leaves. Redis killed mid-run: both relays stay up, relaying goes on,
// rendezvous answers E_UNAVAILABLE, /readyz is 503 naming "rendezvous
// (redis)"; Redis started again: both recover by themselves.
func TestClusterRendezvousTwoDaemons(t *testing.T) {
	const password = "Sekr1t-redis-pw"
	rs := startPrivateRedis(t, password)
	start := func() *daemon {
		return startDaemon(t, append(testEnv(t.TempDir()), "DUSK_REDIS_URL="+rs.url()))
	}
	a, b := start(), start()
	const ns = "dusk/community/com_0123456789abcdef"

	// Six clients register, alternately at B and A.
	var members []host.Host
	for i := range 6 {
		c := newClient(t)
		d := b
		if i%2 == 1 {
			d = a
		}
		connectTo(t, c, d)
		r, err := rdvCall(ctx10(t), c, d.peerID, rdvRegister(ns, sealOwnRecord(t, c)))
		if err != nil || r.GetRegisterResponse().GetStatus() != pb.Message_OK {
			t.Fatalf("register %d: %v %v", i, r, err)
		}
		members = append(members, c)
	}
	want := make([]peer.ID, len(members))
	for i, m := range members {
		want[i] = m.ID()
	}
	asker := newClient(t)
	connectTo(t, asker, a)
	connectTo(t, asker, b)
	r, err := rdvCall(ctx10(t), asker, a.peerID, rdvDiscoverPage(ns, 4, nil))
	if err != nil || r.GetDiscoverResponse().GetStatus() != pb.Message_OK {
		t.Fatalf("discover at A: %v %v", r, err)
	}
	page1 := registeredPeers(t, r.GetDiscoverResponse().GetRegistrations())
	if !slices.Equal(page1, want[:4]) {
		t.Fatalf("page 1 at A: %v, want %v", page1, want[:4])
	}
	r, err = rdvCall(ctx10(t), asker, b.peerID, rdvDiscoverPage(ns, 4, r.GetDiscoverResponse().GetCookie()))
	if err != nil || r.GetDiscoverResponse().GetStatus() != pb.Message_OK {
		t.Fatalf("discover at B with A's cookie: %v %v", r, err)
	}
	if page2 := registeredPeers(t, r.GetDiscoverResponse().GetRegistrations()); !slices.Equal(page2, want[4:]) {
		t.Fatalf("page 2 at B with A's cookie: %v, want %v", page2, want[4:])
	}
	for _, reg := range r.GetDiscoverResponse().GetRegistrations() {
		if reg.GetNs() != ns || reg.GetTtl() < 7000 || reg.GetTtl() > 7200 {
			t.Fatalf("registration without the Rust shape: ns %q ttl %d", reg.GetNs(), reg.GetTtl())
		}
	}
	// Unregister at A removes what was registered at B.
	unreg := &pb.Message{Type: pb.Message_UNREGISTER.Enum(), Unregister: &pb.Message_Unregister{Ns: &[]string{ns}[0]}}
	if s, err := members[0].NewStream(ctx10(t), a.peerID, protoRendezvous); err == nil {
		_ = writeRdv(s, unreg)
		_ = s.Close()
	} else {
		connectTo(t, members[0], a)
		s, err := members[0].NewStream(ctx10(t), a.peerID, protoRendezvous)
		if err != nil {
			t.Fatal(err)
		}
		_ = writeRdv(s, unreg)
		_ = s.Close()
	}
	eventuallyT(t, "unregister at A seen at B", 10*time.Second, func() bool {
		r, err := rdvCall(ctx10(t), asker, b.peerID, rdvDiscoverPage(ns, 100, nil))
		return err == nil && len(r.GetDiscoverResponse().GetRegistrations()) == 5
	})

	// Reservation records.
	rdb := rs.client()
	defer rdb.Close()
	rc := newClient(t)
	connectTo(t, rc, a)
	if _, err := client.Reserve(ctx10(t), rc, peer.AddrInfo{ID: a.peerID, Addrs: a.addrs}); err != nil {
		t.Fatalf("reserve at A: %v", err)
	}
	var recs []reservations.Record
	eventuallyT(t, "reservation record", 10*time.Second, func() bool {
		recs, err = reservations.Lookup(context.Background(), rdb, "dusk:", rc.ID())
		return err == nil && len(recs) == 1
	})
	if recs[0].Relay != a.peerID || !sameAddrs(recs[0].Addrs, a.addrs) {
		t.Fatalf("record %+v; want relay %s with %v", recs[0], a.peerID, a.addrs)
	}
	if left := time.Until(recs[0].Expires); left < 59*time.Minute || left > time.Hour {
		t.Fatalf("record expires in %v, want the 1 h reservation TTL", left)
	}
	if ttl := rdb.PTTL(context.Background(), "dusk:rsv{"+rc.ID().String()+"}").Val(); ttl < 59*time.Minute || ttl > time.Hour {
		t.Fatalf("record key PTTL %v, want ~1h", ttl)
	}
	_ = rc.Close()
	eventuallyT(t, "reservation record removed after the client left", 10*time.Second, func() bool {
		recs, err := reservations.Lookup(context.Background(), rdb, "dusk:", rc.ID())
		n, _ := rdb.Exists(context.Background(), "dusk:rsv{"+rc.ID().String()+"}").Result()
		return err == nil && len(recs) == 0 && n == 0
	})

	for _, d := range []*daemon{a, b} {
		if code, body := readyz(t, d); code != 200 {
			t.Fatalf("/readyz = %d %s", code, body)
		}
	}

	// Redis goes away.
	rs.stop()
	newcomer := newClient(t)
	connectTo(t, newcomer, a)
	startReq := time.Now()
	r, err = rdvCall(ctx10(t), newcomer, a.peerID, rdvRegister(ns, sealOwnRecord(t, newcomer)))
	if err != nil || r.GetRegisterResponse().GetStatus() != pb.Message_E_UNAVAILABLE {
		t.Fatalf("register with Redis down: %v %v", r, err)
	}
	r, err = rdvCall(ctx10(t), asker, b.peerID, rdvDiscoverPage(ns, 10, nil))
	if err != nil || r.GetDiscoverResponse().GetStatus() != pb.Message_E_UNAVAILABLE {
		t.Fatalf("discover with Redis down: %v %v", r, err)
	}
	if d := time.Since(startReq); d > 8*time.Second {
		t.Fatalf("answers with Redis down took %v", d)
	}
	for _, d := range []*daemon{a, b} {
		if code, body := readyz(t, d); code != http.StatusServiceUnavailable || !strings.Contains(body, "rendezvous (redis)") {
			t.Fatalf("/readyz with Redis down = %d %q", code, body)
		}
	}
	// Relaying is unaffected: a reservation is still granted.
	if _, err := client.Reserve(ctx10(t), newcomer, peer.AddrInfo{ID: a.peerID, Addrs: a.addrs}); err != nil {
		t.Fatalf("reserve with Redis down: %v", err)
	}

	// Redis is back (empty: no persistence). Both relays recover.
	rs.start()
	eventuallyT(t, "register after Redis restart", 30*time.Second, func() bool {
		r, err := rdvCall(ctx10(t), newcomer, a.peerID, rdvRegister(ns, sealOwnRecord(t, newcomer)))
		return err == nil && r.GetRegisterResponse().GetStatus() == pb.Message_OK
	})
	r, err = rdvCall(ctx10(t), asker, b.peerID, rdvDiscoverPage(ns, 10, nil))
	if got := registeredPeers(t, r.GetDiscoverResponse().GetRegistrations()); err != nil || !slices.Equal(got, []peer.ID{newcomer.ID()}) {
		t.Fatalf("discover at B after restart: %v %v", got, err)
	}
	// The queued reservation record of the newcomer is written once Redis answers.
	eventuallyT(t, "reservation record after Redis restart", 15*time.Second, func() bool {
		recs, err := reservations.Lookup(context.Background(), rdb, "dusk:", newcomer.ID())
		return err == nil && len(recs) == 1 && recs[0].Relay == a.peerID
	})
	for _, d := range []*daemon{a, b} {
		if code, body := readyz(t, d); code != 200 {
			t.Fatalf("/readyz after recovery = %d %s", code, body)
		}
		if logs := d.logs(); strings.Contains(logs, password) || !strings.Contains(logs, `"rendezvous":"redis"`) {
			t.Fatalf("a log line shows the Redis password, or the start-up summary lacks the engine:\n%s", logs)
		}
	}
}

func sameAddrs(a, b []ma.Multiaddr) bool {
	as := make([]string, 0, len(a))
	for _, x := range a {
		as = append(as, x.String())
	}
	bs := make([]string, 0, len(b))
	for _, x := range b {
		bs = append(bs, x.String())
	}
	slices.Sort(as)
	slices.Sort(bs)
	return len(as) > 0 && slices.Equal(as, bs)
}

func eventuallyT(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestClusterRendezvousOnRedisCluster: DUSK_REDIS_URL naming a Redis
// Cluster (seed nodes in ?addr=): two relays share registrations and
// cookies across the shards, and reservation records land there too.
func TestClusterRendezvousOnRedisCluster(t *testing.T) {
	nodes := testutil.RedisClusterNodes(t)
	url := "redis://" + nodes[0] + "?addr=" + nodes[1] + "&addr=" + nodes[2]
	start := func() *daemon {
		return startDaemon(t, append(testEnv(t.TempDir()), "DUSK_REDIS_URL="+url))
	}
	a, b := start(), start()
	asker := newClient(t)
	connectTo(t, asker, a)
	connectTo(t, asker, b)
	var want []peer.ID
	for i := range 4 {
		c := newClient(t)
		d := []*daemon{a, b}[i%2]
		connectTo(t, c, d)
		for _, ns := range []string{"dusk/peers", "dusk/community/com_00000000000000" + fmt.Sprintf("%02d", i)} {
			r, err := rdvCall(ctx10(t), c, d.peerID, rdvRegister(ns, sealOwnRecord(t, c)))
			if err != nil || r.GetRegisterResponse().GetStatus() != pb.Message_OK {
				t.Fatalf("register %d %s: %v %v", i, ns, r, err)
			}
		}
		want = append(want, c.ID())
	}
	r, err := rdvCall(ctx10(t), asker, b.peerID, rdvDiscoverPage("dusk/peers", 3, nil))
	if err != nil || r.GetDiscoverResponse().GetStatus() != pb.Message_OK {
		t.Fatalf("discover at B: %v %v", r, err)
	}
	got := registeredPeers(t, r.GetDiscoverResponse().GetRegistrations())
	r, err = rdvCall(ctx10(t), asker, a.peerID, rdvDiscoverPage("dusk/peers", 3, r.GetDiscoverResponse().GetCookie()))
	if err != nil || r.GetDiscoverResponse().GetStatus() != pb.Message_OK {
		t.Fatalf("discover at A with B's cookie: %v %v", r, err)
	}
	got = append(got, registeredPeers(t, r.GetDiscoverResponse().GetRegistrations())...)
	if !slices.Equal(got, want) {
		t.Fatalf("paged across relays: %v, want %v", got, want)
	}
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: nodes})
	defer cc.Close()
	rc := newClient(t)
	connectTo(t, rc, b)
	if _, err := client.Reserve(ctx10(t), rc, peer.AddrInfo{ID: b.peerID, Addrs: b.addrs}); err != nil {
		t.Fatal(err)
	}
	eventuallyT(t, "reservation record on the cluster", 10*time.Second, func() bool {
		recs, err := reservations.Lookup(context.Background(), cc, "dusk:", rc.ID())
		return err == nil && len(recs) == 1 && recs[0].Relay == b.peerID
	})
	if code, body := readyz(t, a); code != 200 || !strings.Contains(a.logs(), `"rendezvous":"redis"`) {
		t.Fatalf("/readyz %d %s", code, body)
	}
}

// TestClusterRendezvousFreeIdentities: the free-identities flood against
// two relays sharing one Redis, each identity sending to A or B in turn:
// 48 identities from 8 addresses register 4 KiB records under 40
// namespaces each, twice the cluster's budget. The budgets are counted
// across the cluster: no address holds more than its budget in total, the
// whole stays within the global budget, a client registered before keeps
// its registrations, and a newcomer from another address registers at A
// at once and is discovered at B.
func TestClusterRendezvousFreeIdentities(t *testing.T) {
	const (
		global  = 1 << 20
		perAddr = 256 << 10
		perPeer = 64 << 10
	)
	rs := startPrivateRedis(t, "pw")
	start := func() *daemon {
		return startDaemon(t, append(testEnv(t.TempDir()), "DUSK_REDIS_URL="+rs.url(),
			fmt.Sprintf("DUSK_RENDEZVOUS_MAX_BYTES=%d", global),
			fmt.Sprintf("DUSK_RENDEZVOUS_MAX_BYTES_PER_ADDR=%d", perAddr),
			fmt.Sprintf("DUSK_RENDEZVOUS_MAX_BYTES_PER_PEER=%d", perPeer)))
	}
	a, b := start(), start()
	relays := []*daemon{a, b}

	early := newClient(t)
	connectTo(t, early, b)
	earlyRec := sealOwnRecord(t, early)
	earlyNS := []string{"dusk/peers", "dusk/peer/" + early.ID().String(), "dusk/community/com_0123456789abcdef"}
	for _, ns := range earlyNS {
		if r, err := rdvCall(ctx10(t), early, b.peerID, rdvRegister(ns, earlyRec)); err != nil || r.GetRegisterResponse().GetStatus() != pb.Message_OK {
			t.Fatalf("early client: register %s: %v %v", ns, r, err)
		}
	}

	const (
		addrs      = 8
		idsPerAddr = 6
		nsPerID    = 40
		prefix     = "flood/"
	)
	addrOf := map[peer.ID]string{}
	var wg sync.WaitGroup
	var okN, refusedN, errN atomic.Int64
	for ai := range addrs {
		ip := fmt.Sprintf("127.0.0.%d", ai+2)
		ids := make([]host.Host, idsPerAddr)
		recs := make([][]byte, idsPerAddr)
		for i := range ids {
			ids[i] = rdvClientFrom(t, ip)
			recs[i] = sealBigRecord(t, ids[i], 4000)
			addrOf[ids[i].ID()] = ip
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i, c := range ids {
				d := relays[(ai+i)%2]
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := c.Connect(ctx, peer.AddrInfo{ID: d.peerID, Addrs: d.addrs})
				cancel()
				if err != nil {
					errN.Add(1)
					continue
				}
				for k := range nsPerID {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					r, err := rdvCall(ctx, c, d.peerID, rdvRegister(fmt.Sprintf("%s%02d", prefix, k), recs[i]))
					cancel()
					switch {
					case err != nil:
						errN.Add(1)
					case r.GetRegisterResponse().GetStatus() == pb.Message_OK:
						okN.Add(1)
					default:
						refusedN.Add(1)
					}
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("flood through two relays: %d OK, %d refused, %d errors", okN.Load(), refusedN.Load(), errN.Load())
	if errN.Load() != 0 {
		t.Errorf("%d stream errors during the flood", errN.Load())
	}
	observer := newClient(t)
	connectTo(t, observer, a)
	heldBy := map[string]int{}
	heldTotal := 0
	for k := range nsPerID {
		for p, n := range rdvHeld(t, observer, a, fmt.Sprintf("%s%02d", prefix, k)) {
			heldBy[addrOf[p]] += n
			heldTotal += n
		}
	}
	const perReg = 4000 + len(prefix) + 2 + 256
	t.Logf("held after the flood: %d registrations (~%d KiB) %v", heldTotal, heldTotal*perReg>>10, heldBy)
	for ip, n := range heldBy {
		if n*perReg > perAddr+4096 || ip == "" {
			t.Errorf("source %q holds %d registrations (~%d KiB) across the relays > its budget of %d KiB", ip, n, n*perReg>>10, perAddr>>10)
		}
	}
	if heldTotal*perReg > global || heldTotal == 0 {
		t.Errorf("the flood holds ~%d KiB; global budget %d KiB", heldTotal*perReg>>10, global>>10)
	}
	for _, ns := range earlyNS {
		if got := rdvHeld(t, observer, a, ns)[early.ID()]; got != 1 {
			t.Errorf("early client's registration under %s gone after the flood", ns)
		}
	}
	late := rdvClientFrom(t, "127.0.0.50")
	connectTo(t, late, a)
	lateRec := sealOwnRecord(t, late)
	for _, ns := range []string{"dusk/peers", "dusk/community/com_0123456789abcdef"} {
		r, err := rdvCall(ctx10(t), late, a.peerID, rdvRegister(ns, lateRec))
		if err != nil || r.GetRegisterResponse().GetStatus() != pb.Message_OK {
			t.Fatalf("newcomer after the flood: register %s at A: %v %v", ns, r, err)
		}
	}
	connectTo(t, observer, b)
	if held := rdvHeld(t, observer, b, "dusk/community/com_0123456789abcdef"); held[late.ID()] != 1 || held[early.ID()] != 1 {
		t.Fatalf("discover at B: %v, want both honest clients", held)
	}
	evicted := false
	for _, d := range relays {
		evicted = evicted || d.hasLog(`"msg":"registration evicted"`)
		for _, name := range []string{"rendezvous", "reservations", "redis"} {
			if lv := d.logLevels(name); lv["info"]+lv["warn"]+lv["error"] > 0 {
				t.Errorf("%s logged %v during the flood; want debug only", name, lv)
			}
		}
	}
	if !evicted {
		t.Error("no eviction logged; the flood should have filled the cluster's budget")
	}
}
