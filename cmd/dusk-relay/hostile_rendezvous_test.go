package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/record"
	pb "github.com/waku-org/go-libp2p-rendezvous/pb"
)

// rdvClientFrom is a libp2p client whose connections to the daemon come
// from localIP (loopback accepts all of 127.0.0.0/8): the only listener of
// the host is on localIP, and the TCP transport dials from its listen
// address.
func rdvClientFrom(t *testing.T, localIP string) host.Host {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/"+localIP+"/tcp/0"), libp2p.DisableRelay(),
		libp2p.ResourceManager(&network.NullResourceManager{}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// rdvHeld discovers ns and returns how many registrations each peer holds there.
func rdvHeld(t *testing.T, c host.Host, d *daemon, ns string) map[peer.ID]int {
	t.Helper()
	out := map[peer.ID]int{}
	var cookie []byte
	for page := 0; page < 100; page++ {
		req := rdvDiscover(ns)
		req.Discover.Cookie = cookie
		r, err := rdvCall(ctx10(t), c, d.peerID, req)
		if err != nil || r.GetDiscoverResponse().GetStatus() != pb.Message_OK {
			t.Fatalf("discover %s: %v %v", ns, r, err)
		}
		regs := r.GetDiscoverResponse().GetRegistrations()
		if len(regs) == 0 {
			return out
		}
		for _, reg := range regs {
			_, rec, err := record.ConsumeEnvelope(reg.GetSignedPeerRecord(), peer.PeerRecordEnvelopeDomain)
			if err != nil {
				t.Fatalf("discover %s: bad record: %v", ns, err)
			}
			out[rec.(*peer.PeerRecord).PeerID]++
		}
		cookie = r.GetDiscoverResponse().GetCookie()
	}
	t.Fatalf("discover %s: more than 100 pages", ns)
	return nil
}

// logLevels counts the daemon's log records of logger name by level.
func (d *daemon) logLevels(name string) map[string]int {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[string]int{}
	for _, l := range d.stderr {
		var rec map[string]any
		if json.Unmarshal([]byte(l), &rec) == nil && rec["logger"] == name {
			lvl, _ := rec["level"].(string)
			out[lvl]++
		}
	}
	return out
}

// TestHostileRendezvousFreeIdentities: 48 fresh identities from 8 source
// addresses (127.0.0.2-9) register 4 KiB records under as many namespaces
// as they are allowed, enough to fill the daemon's budget twice over. Each
// address holds at most its own budget, the total stays within the global
// one, a client registered before the attack keeps its registrations, and
// a client arriving from another address afterwards registers and
// discovers at once. Nothing about it is logged at info.
//
// Before: no per-address or per-peer byte budget (1000 registrations of
// 8 KiB per identity) and a full table answered E_UNAVAILABLE to every
// newcomer; every new registration was an info line.
func TestHostileRendezvousFreeIdentities(t *testing.T) {
	const (
		global  = 1 << 20
		perAddr = 256 << 10
		perPeer = 64 << 10
	)
	env := append(testEnv(t.TempDir()),
		fmt.Sprintf("DUSK_RENDEZVOUS_MAX_BYTES=%d", global),
		fmt.Sprintf("DUSK_RENDEZVOUS_MAX_BYTES_PER_ADDR=%d", perAddr),
		fmt.Sprintf("DUSK_RENDEZVOUS_MAX_BYTES_PER_PEER=%d", perPeer),
	)
	d := startDaemon(t, env)

	// An honest client, registered the way the Dusk app does, before the attack.
	early := newClient(t)
	connectTo(t, early, d)
	earlyRec := sealOwnRecord(t, early)
	earlyNS := []string{"dusk/peers", "dusk/peer/" + early.ID().String(), "dusk/community/com_0123456789abcdef"}
	for _, ns := range earlyNS {
		if r, err := rdvCall(ctx10(t), early, d.peerID, rdvRegister(ns, earlyRec)); err != nil || r.GetRegisterResponse().GetStatus() != pb.Message_OK {
			t.Fatalf("early client: register %s: %v %v", ns, r, err)
		}
	}

	const (
		addrs       = 8
		idsPerAddr  = 6
		nsPerID     = 40 // 40 × ~4.3 KiB: more than the per-peer budget
		floodPrefix = "flood/"
	)
	type result struct{ ok, refused, errs int }
	var mu sync.Mutex
	byStatus := map[string]int{}
	addrOf := map[peer.ID]string{}
	results := make([]result, addrs)
	var wg sync.WaitGroup
	start := time.Now()
	for a := 0; a < addrs; a++ {
		ip := fmt.Sprintf("127.0.0.%d", a+2)
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
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := c.Connect(ctx, peer.AddrInfo{ID: d.peerID, Addrs: d.addrs})
				cancel()
				if err != nil {
					results[a].errs++
					continue
				}
				for k := 0; k < nsPerID; k++ {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					r, err := rdvCall(ctx, c, d.peerID, rdvRegister(fmt.Sprintf("%s%02d", floodPrefix, k), recs[i]))
					cancel()
					switch {
					case err != nil:
						results[a].errs++
					case r.GetRegisterResponse().GetStatus() == pb.Message_OK:
						results[a].ok++
					default:
						results[a].refused++
						mu.Lock()
						byStatus[r.GetRegisterResponse().GetStatus().String()]++
						mu.Unlock()
					}
				}
			}
		}()
	}
	wg.Wait()
	total := result{}
	for _, r := range results {
		total.ok, total.refused, total.errs = total.ok+r.ok, total.refused+r.refused, total.errs+r.errs
	}
	t.Logf("flood: %d identities from %d addresses, %d registrations of %d-byte records in %v: %d OK, %d refused %v, %d errors",
		addrs*idsPerAddr, addrs, addrs*idsPerAddr*nsPerID, 4000, time.Since(start).Round(time.Millisecond),
		total.ok, total.refused, byStatus, total.errs)
	if total.errs != 0 {
		t.Errorf("%d stream errors during the flood", total.errs)
	}

	// What the attack holds now, by source address.
	observer := newClient(t)
	connectTo(t, observer, d)
	heldBy := map[string]int{}
	heldTotal := 0
	for k := 0; k < nsPerID; k++ {
		for p, n := range rdvHeld(t, observer, d, fmt.Sprintf("%s%02d", floodPrefix, k)) {
			heldBy[addrOf[p]] += n
			heldTotal += n
		}
	}
	// Each registration counts its record, namespace and 256 bytes of
	// overhead: ~4.3 KiB.
	const perReg = 4000 + len(floodPrefix) + 2 + 256
	t.Logf("held after the flood: %d registrations (~%d KiB) %v; budget %d KiB, %d KiB per address",
		heldTotal, heldTotal*perReg>>10, heldBy, global>>10, perAddr>>10)
	for ip, n := range heldBy {
		if n*perReg > perAddr+4096 || ip == "" {
			t.Errorf("source %q holds %d registrations (~%d KiB) > its budget of %d KiB", ip, n, n*perReg>>10, perAddr>>10)
		}
	}
	if heldTotal*perReg > global {
		t.Errorf("the flood holds ~%d KiB > the global budget of %d KiB", heldTotal*perReg>>10, global>>10)
	}

	// The client registered before the attack was not evicted.
	for _, ns := range earlyNS {
		if got := rdvHeld(t, observer, d, ns)[early.ID()]; got != 1 {
			t.Errorf("early client's registration under %s gone after the flood", ns)
		}
	}

	// A newcomer from another address, in ten communities, registers at
	// once (the full budget evicts from the largest holders) and is
	// discovered.
	late := rdvClientFrom(t, "127.0.0.50")
	connectTo(t, late, d)
	lateRec := sealOwnRecord(t, late)
	lateNS := []string{"dusk/peers", "dusk/peer/" + late.ID().String(), "dusk/community/com_0123456789abcdef"}
	for i := 1; i < 10; i++ {
		lateNS = append(lateNS, fmt.Sprintf("dusk/community/com_%016x", i))
	}
	for _, ns := range lateNS {
		r, err := rdvCall(ctx10(t), late, d.peerID, rdvRegister(ns, lateRec))
		if err != nil || r.GetRegisterResponse().GetStatus() != pb.Message_OK {
			t.Fatalf("newcomer after the flood: register %s: %v %v", ns, r, err)
		}
	}
	held := rdvHeld(t, late, d, "dusk/community/com_0123456789abcdef")
	if held[late.ID()] != 1 || held[early.ID()] != 1 {
		t.Fatalf("newcomer's discover of its community: %v, want both honest clients", held)
	}
	// The flood filled the global budget: registrations were evicted, and
	// the daemon keyed them by the attackers' real source addresses.
	if !d.hasLog(`"msg":"registration evicted"`) || !d.hasLog(`"source":"127.0.0.`) {
		t.Errorf("no eviction by source address logged; the flood should have filled the global budget")
	}

	// No rendezvous info/warn line per request.
	if lv := d.logLevels("rendezvous"); lv["info"]+lv["warn"]+lv["error"] > 0 {
		t.Errorf("rendezvous logged %v during the flood; want debug only", lv)
	}
	assertServing(t, d)
}

// TestHostileRendezvousPrivacy: a stranger asks for every registration
// (discover without a namespace) and registers under an honest client's
// dusk/peer/<id>. The first gets E_NOT_AUTHORIZED and nothing else; the
// second is refused, so a friend discovering dusk/peer/<id> finds only
// the honest client.
//
// Before: discover without a namespace returned every registration (peer
// IDs, addresses, community ids) to anyone, and anyone could register
// under dusk/peer/<someone else's id>.
func TestHostileRendezvousPrivacy(t *testing.T) {
	d := startDaemon(t, testEnv(t.TempDir()))
	honest := newClient(t)
	connectTo(t, honest, d)
	rec := sealOwnRecord(t, honest)
	own := "dusk/peer/" + honest.ID().String()
	for _, ns := range []string{"dusk/peers", own, "dusk/community/com_00000000deadbeef"} {
		if r, err := rdvCall(ctx10(t), honest, d.peerID, rdvRegister(ns, rec)); err != nil || r.GetRegisterResponse().GetStatus() != pb.Message_OK {
			t.Fatalf("honest register %s: %v %v", ns, r, err)
		}
	}

	stranger := rdvClientFrom(t, "127.0.0.7")
	connectTo(t, stranger, d)
	all := &pb.Message{Type: pb.Message_DISCOVER.Enum(), Discover: &pb.Message_Discover{}}
	r, err := rdvCall(ctx10(t), stranger, d.peerID, all)
	if err != nil {
		t.Fatal(err)
	}
	if dr := r.GetDiscoverResponse(); dr.GetStatus() != pb.Message_E_NOT_AUTHORIZED || len(dr.GetRegistrations()) != 0 {
		t.Fatalf("discover without a namespace: %v %d registrations, want E_NOT_AUTHORIZED and none", dr.GetStatus(), len(dr.GetRegistrations()))
	}

	r, err = rdvCall(ctx10(t), stranger, d.peerID, rdvRegister(own, sealOwnRecord(t, stranger)))
	if err != nil || r.GetRegisterResponse().GetStatus() != pb.Message_E_NOT_AUTHORIZED {
		t.Fatalf("stranger registering under %s: %v %v, want E_NOT_AUTHORIZED", own, r, err)
	}
	// What a friend's client sees there: the honest client only.
	friend := newClient(t)
	connectTo(t, friend, d)
	if held := rdvHeld(t, friend, d, own); len(held) != 1 || held[honest.ID()] != 1 {
		t.Fatalf("friend discovering %s: %v, want only %s", own, held, honest.ID())
	}
	// The stranger's own namespace still works for it.
	if r, err := rdvCall(ctx10(t), stranger, d.peerID, rdvRegister("dusk/peer/"+stranger.ID().String(), sealOwnRecord(t, stranger))); err != nil ||
		r.GetRegisterResponse().GetStatus() != pb.Message_OK {
		t.Fatalf("stranger registering under its own id: %v %v", r, err)
	}
	if d.logLevels("rendezvous")["info"] > 0 {
		t.Errorf("rendezvous logged at info: %v", d.logLevels("rendezvous"))
	}
	assertServing(t, d)
}

// TestHostileRendezvousDiscoverAllOptIn: DUSK_RENDEZVOUS_DISCOVER_ALL=true
// restores discover without a namespace for operators who want it.
func TestHostileRendezvousDiscoverAllOptIn(t *testing.T) {
	d := startDaemon(t, append(testEnv(t.TempDir()), "DUSK_RENDEZVOUS_DISCOVER_ALL=true"))
	c := newClient(t)
	connectTo(t, c, d)
	if r, err := rdvCall(ctx10(t), c, d.peerID, rdvRegister("dusk/peers", sealOwnRecord(t, c))); err != nil || r.GetRegisterResponse().GetStatus() != pb.Message_OK {
		t.Fatalf("register: %v %v", r, err)
	}
	if held := rdvHeld(t, c, d, ""); held[c.ID()] != 1 {
		t.Fatalf("discover all with DUSK_RENDEZVOUS_DISCOVER_ALL=true: %v", held)
	}
}

// TestHostileRendezvousBigRequests: 200 rendezvous streams each announce
// a 1 MiB request and send 100 bytes of it. Every one is reset at once (a
// real request is under 5 KiB), so none holds a buffer or a stream slot
// for the 15 s read timeout, and a client is still served.
//
// Before: each stream was read for up to 15 s into a buffer of the
// announced size (1 MiB accepted).
func TestHostileRendezvousBigRequests(t *testing.T) {
	d := startDaemon(t, testEnv(t.TempDir()))
	mem := watchMem(t, d)
	const clients, perClient = 4, 50
	var wg sync.WaitGroup
	var mu sync.Mutex
	var held []time.Duration
	var notReset int
	prefix := binary.AppendUvarint(nil, 1<<20)
	for i := 0; i < clients; i++ {
		c := newUnlimitedClient(t)
		connectTo(t, c, d)
		for j := 0; j < perClient; j++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				s, err := c.NewStream(ctx, d.peerID, protoRendezvous)
				if err != nil {
					mu.Lock()
					notReset++
					mu.Unlock()
					return
				}
				defer s.Close()
				start := time.Now()
				_ = s.SetDeadline(start.Add(5 * time.Second))
				_, _ = s.Write(append(prefix, make([]byte, 100)...))
				_, err = io.ReadAll(s)
				mu.Lock()
				defer mu.Unlock()
				if !errors.Is(err, network.ErrReset) {
					notReset++
					return
				}
				held = append(held, time.Since(start))
			}()
		}
	}
	wg.Wait()
	mem.report(t, d, fmt.Sprintf("%d rendezvous streams announcing 1 MiB", clients*perClient))
	slices.Sort(held)
	if notReset != 0 || len(held) != clients*perClient {
		t.Fatalf("%d of %d streams not reset within 5 s", clients*perClient-len(held), clients*perClient)
	}
	t.Logf("reset after p50 %v, max %v", held[len(held)/2].Round(time.Millisecond), held[len(held)-1].Round(time.Millisecond))
	if held[len(held)-1] > 2*time.Second {
		t.Errorf("a stream announcing 1 MiB was held %v", held[len(held)-1])
	}
	assertServing(t, d)
}
