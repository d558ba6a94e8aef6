package main

// Abuse suite: a real daemon (the test binary re-executed, see main_test.go)
// on loopback is fed bad input and floods; afterwards a fresh, well-behaved
// client must still get correct answers. Hold times and memory are
// measured and logged (t.Logf), never asserted: the machine is shared.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
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
	"github.com/libp2p/go-libp2p/core/record"
	"github.com/libp2p/go-msgio/pbio"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/pion/logging"
	"github.com/pion/stun/v3"
	"github.com/pion/turn/v4"
	pb "github.com/waku-org/go-libp2p-rendezvous/pb"

	"github.com/duskchat/dusk-relay/internal/directory"
	"github.com/duskchat/dusk-relay/internal/gif"
	"github.com/duskchat/dusk-relay/internal/reqresp"
	"github.com/duskchat/dusk-relay/internal/turnauth"
	"github.com/duskchat/dusk-relay/internal/turncreds"
)

const (
	protoDirectory  = protocol.ID("/dusk/directory/1.0.0")
	protoTurnCreds  = protocol.ID("/dusk/turn-credentials/1.0.0")
	protoGif        = protocol.ID("/dusk/gif/1.0.0")
	protoRendezvous = protocol.ID("/rendezvous/1.0.0")
)

// --- daemon helpers -------------------------------------------------------

// logField returns a string field of the first JSON log line whose msg is msg.
func (d *daemon) logField(msg, field string) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, l := range d.stderr {
		var rec map[string]any
		if json.Unmarshal([]byte(l), &rec) == nil && rec["msg"] == msg {
			if s, ok := rec[field].(string); ok {
				return s
			}
		}
	}
	return ""
}

// rssKB is the daemon's resident set size (VmRSS) in KiB.
func (d *daemon) rssKB(t *testing.T) int {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", d.cmd.Process.Pid))
	if err != nil {
		t.Logf("VmRSS unavailable: %v", err)
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			return n
		}
	}
	return 0
}

// memWatch samples the daemon's VmRSS every 50 ms until stopped.
type memWatch struct {
	before, peak int
	stop         chan struct{}
	done         chan struct{}
}

func watchMem(t *testing.T, d *daemon) *memWatch {
	w := &memWatch{before: d.rssKB(t), stop: make(chan struct{}), done: make(chan struct{})}
	w.peak = w.before
	go func() {
		defer close(w.done)
		tk := time.NewTicker(50 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-tk.C:
				if r := d.rssKB(t); r > w.peak {
					w.peak = r
				}
			}
		}
	}()
	return w
}

// report stops sampling and logs before/peak/after in MiB.
func (w *memWatch) report(t *testing.T, d *daemon, what string) {
	close(w.stop)
	<-w.done
	after := d.rssKB(t)
	t.Logf("memory %s: VmRSS before %.1f MiB, peak %.1f MiB, after %.1f MiB",
		what, float64(w.before)/1024, float64(w.peak)/1024, float64(after)/1024)
}

// newUnlimitedClient is a client without a resource manager, so only the
// daemon's limits decide how many streams it may hold.
func newUnlimitedClient(t *testing.T) host.Host {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay(),
		libp2p.ResourceManager(&network.NullResourceManager{}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func connectTo(t *testing.T, c host.Host, d *daemon) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Connect(ctx, peer.AddrInfo{ID: d.peerID, Addrs: d.addrs}); err != nil {
		t.Fatalf("connect to daemon: %v", err)
	}
}

func ctx10(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// --- well-behaved client ---------------------------------------------------

// sealOwnRecord is the signed peer record a rendezvous client sends.
func sealOwnRecord(t *testing.T, h host.Host) []byte {
	t.Helper()
	return sealRecord(t, h, h.Addrs(), uint64(time.Now().UnixNano()))
}

// sealRecord signs h's peer record with these addresses.
func sealRecord(t *testing.T, h host.Host, addrs []ma.Multiaddr, seq uint64) []byte {
	t.Helper()
	env, err := record.Seal(&peer.PeerRecord{PeerID: h.ID(), Addrs: addrs, Seq: seq}, h.Peerstore().PrivKey(h.ID()))
	if err != nil {
		t.Fatal(err)
	}
	b, err := env.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rdvCall sends one rendezvous request and reads one answer.
func rdvCall(ctx context.Context, c host.Host, server peer.ID, req *pb.Message) (*pb.Message, error) {
	s, err := c.NewStream(ctx, server, protoRendezvous)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	if err := pbio.NewDelimitedWriter(s).WriteMsg(req); err != nil {
		_ = s.Reset()
		return nil, err
	}
	_ = s.CloseWrite()
	var resp pb.Message
	if err := pbio.NewDelimitedReader(s, 1<<20).ReadMsg(&resp); err != nil {
		_ = s.Reset()
		return nil, err
	}
	return &resp, nil
}

func rdvRegister(ns string, rec []byte) *pb.Message {
	return &pb.Message{Type: pb.Message_REGISTER.Enum(), Register: &pb.Message_Register{Ns: &ns, SignedPeerRecord: rec}}
}

func rdvDiscover(ns string) *pb.Message {
	return &pb.Message{Type: pb.Message_DISCOVER.Enum(), Discover: &pb.Message_Discover{Ns: &ns}}
}

// assertServing checks, from a brand-new client, that every protocol of
// the daemon answers correctly.
func assertServing(t *testing.T, d *daemon) {
	t.Helper()
	c := newClient(t)
	connectTo(t, c, d)
	ctx := ctx10(t)

	var creds turncreds.Response
	if err := reqresp.CallCBOR(ctx, c, d.peerID, protoTurnCreds, turncreds.Request{PeerID: c.ID().String()}, &creds); err != nil {
		t.Fatalf("valid client: turn credentials: %v", err)
	}
	if !strings.HasSuffix(creds.Username, ":"+c.ID().String()) || creds.Password == "" || len(creds.URIs) != 2 {
		t.Fatalf("valid client: credentials %+v", creds)
	}

	name := "valid " + c.ID().String()[len(c.ID().String())-6:]
	var resp directory.Response
	if err := reqresp.CallCBOR(ctx, c, d.peerID, protoDirectory, directory.Request{Kind: directory.RequestRegister, DisplayName: name}, &resp); err != nil || resp.Kind != directory.ResponseOk {
		t.Fatalf("valid client: directory register: %+v %v", resp, err)
	}
	if err := reqresp.CallCBOR(ctx, c, d.peerID, protoDirectory, directory.Request{Kind: directory.RequestSearch, Query: c.ID().String()}, &resp); err != nil ||
		resp.Kind != directory.ResponseResults || len(resp.Results) != 1 || resp.Results[0].DisplayName != name {
		t.Fatalf("valid client: directory search: %+v %v", resp, err)
	}

	var g gif.GifResponse
	if err := reqresp.CallCBOR(ctx, c, d.peerID, protoGif, gif.GifRequest{Kind: "trending", Limit: 5}, &g); err != nil || g.Results == nil {
		t.Fatalf("valid client: gif: %+v %v", g, err)
	}

	ns := "dusk/peer/" + c.ID().String()
	r, err := rdvCall(ctx, c, d.peerID, rdvRegister(ns, sealOwnRecord(t, c)))
	if err != nil || r.GetRegisterResponse().GetStatus() != pb.Message_OK {
		t.Fatalf("valid client: rendezvous register: %v %v", r, err)
	}
	r, err = rdvCall(ctx, c, d.peerID, rdvDiscover(ns))
	if err != nil || r.GetDiscoverResponse().GetStatus() != pb.Message_OK || len(r.GetDiscoverResponse().GetRegistrations()) != 1 {
		t.Fatalf("valid client: rendezvous discover: %v %v", r, err)
	}
}

// --- bad streams -------------------------------------------------------------

// streamEnd is how and when the daemon ended a bad stream.
type streamEnd struct {
	answer []byte
	err    error // nil: graceful close (EOF); else reset/timeout
	held   time.Duration
}

func (e streamEnd) String() string {
	how := "closed (EOF)"
	if e.err != nil {
		how = "reset: " + e.err.Error()
	}
	return fmt.Sprintf("%s after %v, %d answer bytes", how, e.held.Round(time.Millisecond), len(e.answer))
}

// badStream opens a stream, writes payload (in a goroutine: the daemon may
// stop reading), half-closes unless keepOpen, and reads until the daemon
// ends the stream. held counts from the end of the client's part (the last
// byte written, or the open for an empty stream) to the daemon's end.
func badStream(c host.Host, d *daemon, proto protocol.ID, payload []byte, keepOpen bool, limit time.Duration) (streamEnd, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := c.NewStream(ctx, d.peerID, proto)
	if err != nil {
		return streamEnd{}, fmt.Errorf("open %s: %w", proto, err)
	}
	defer s.Reset()
	_ = s.SetDeadline(time.Now().Add(limit))
	var wrote atomic.Int64
	wrote.Store(time.Now().UnixNano())
	go func() {
		if len(payload) > 0 {
			_, _ = s.Write(payload)
			wrote.Store(time.Now().UnixNano())
		}
		if !keepOpen {
			_ = s.CloseWrite()
		}
	}()
	ans, err := io.ReadAll(io.LimitReader(s, 1<<20))
	end := streamEnd{answer: ans, err: err, held: time.Since(time.Unix(0, wrote.Load()))}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return end, fmt.Errorf("%s: daemon still held the stream after %v", proto, limit)
	}
	return end, nil
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// TestAbuseBadStreams sends garbage, truncated CBOR, 2 MiB requests, silent
// streams and streams that never half-close to every protocol. No bad
// stream gets an answer, every one is ended by the daemon (a stream that
// never finishes its request is cut at the 15 s read deadline), and a
// valid client is served afterwards.
func TestAbuseBadStreams(t *testing.T) {
	t.Parallel() // mostly waiting for the 15 s read deadline
	d := startDaemon(t, testEnv(t.TempDir()))
	c := newClient(t)
	connectTo(t, c, d)
	mem := watchMem(t, d)

	dirReq, _ := reqresp.Marshal(directory.Request{Kind: directory.RequestRegister, DisplayName: "alice"})
	credReq, _ := reqresp.Marshal(turncreds.Request{PeerID: c.ID().String()})
	gifReq, _ := reqresp.Marshal(gif.GifRequest{Kind: "search", Query: "cat", Limit: 10})
	var rdvBuf bytes.Buffer
	_ = pbio.NewDelimitedWriter(&rdvBuf).WriteMsg(rdvDiscover("dusk/peers"))
	rdvReq := rdvBuf.Bytes()
	valid := map[protocol.ID][]byte{protoDirectory: dirReq, protoTurnCreds: credReq, protoGif: gifReq, protoRendezvous: rdvReq}
	oversize := bytes.Repeat([]byte{0x61}, 2<<20)
	// A rendezvous length prefix announcing more than 1 MiB.
	rdvHuge := append([]byte{0x80, 0x80, 0xc0, 0x00}, oversize...)

	type kase struct {
		name     string
		proto    protocol.ID
		payload  []byte
		keepOpen bool
	}
	var cases []kase
	for _, p := range []protocol.ID{protoDirectory, protoTurnCreds, protoGif, protoRendezvous} {
		big := oversize
		if p == protoRendezvous {
			big = rdvHuge
		}
		cases = append(cases,
			kase{"garbage", p, randomBytes(64), false},
			kase{"truncated", p, valid[p][:len(valid[p])-1], false},
			kase{"2MiB", p, big, false},
			kase{"empty", p, nil, false},
			kase{"silent-never-closed", p, nil, true},
			kase{"truncated-never-closed", p, valid[p][:len(valid[p])-1], true},
		)
		if p != protoRendezvous { // rendezvous answers a complete message without waiting for EOF
			cases = append(cases, kase{"complete-never-closed", p, valid[p], true})
		}
	}

	var wg sync.WaitGroup
	results := make([]streamEnd, len(cases))
	errs := make([]error, len(cases))
	for i, k := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = badStream(c, d, k.proto, k.payload, k.keepOpen, 40*time.Second)
		}()
	}
	// While the slow ones are held, the daemon serves others.
	assertServing(t, d)
	wg.Wait()
	mem.report(t, d, "during bad streams")
	for i, k := range cases {
		if errs[i] != nil {
			t.Errorf("%s %s: %v", k.proto, k.name, errs[i])
			continue
		}
		t.Logf("%-30s %-24s %s", k.proto, k.name, results[i])
		if len(results[i].answer) > 0 {
			t.Errorf("%s %s: answered a bad request with %x", k.proto, k.name, results[i].answer)
		}
	}
	assertServing(t, d)
}

// TestAbuse500Streams: one peer opens 500 streams at once on one protocol
// and holds them. The resource manager caps what one peer may hold; the
// rest are refused. Other peers, and the same peer once it lets go, are
// served.
func TestAbuse500Streams(t *testing.T) {
	t.Parallel() // mostly waiting for the 15 s read deadline
	d := startDaemon(t, testEnv(t.TempDir()))
	c := newUnlimitedClient(t)
	connectTo(t, c, d)
	mem := watchMem(t, d)

	const n = 500
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		streams []network.Stream
		opened  atomic.Int32
		refused atomic.Int32
		errText sync.Map
	)
	start := time.Now()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			s, err := c.NewStream(ctx, d.peerID, protoDirectory)
			if err != nil {
				refused.Add(1)
				errText.Store(err.Error(), true)
				return
			}
			// Force negotiation to finish: the daemon only counts the
			// stream against the protocol once it is negotiated.
			_ = s.SetDeadline(time.Now().Add(30 * time.Second))
			if _, err := s.Write([]byte{0xa1}); err != nil {
				refused.Add(1)
				errText.Store(err.Error(), true)
				_ = s.Reset()
				return
			}
			opened.Add(1)
			mu.Lock()
			streams = append(streams, s)
			mu.Unlock()
		}()
	}
	wg.Wait()
	t.Logf("500 streams from one peer: %d opened, %d refused in %v", opened.Load(), refused.Load(), time.Since(start).Round(time.Millisecond))
	errText.Range(func(k, _ any) bool { t.Logf("  refusal: %v", k); return true })

	// Another peer is served while those are held.
	assertServing(t, d)

	// How the daemon ends them: refused at once (resource manager) or
	// held until the read deadline (a request that never completes).
	type end struct {
		held time.Duration
		err  error
	}
	ends := make(chan end, len(streams))
	for _, s := range streams {
		go func() {
			_, err := io.Copy(io.Discard, s)
			ends <- end{time.Since(start), err}
		}()
	}
	var early, late int
	var maxHeld time.Duration
	for range streams {
		select {
		case e := <-ends:
			maxHeld = max(maxHeld, e.held)
			if e.held < 5*time.Second {
				early++
			} else {
				late++
			}
		case <-time.After(40 * time.Second):
			t.Fatalf("daemon still holds streams 40 s after they were opened")
		}
	}
	t.Logf("daemon ended %d streams at once (refused) and held %d until its read deadline; last ended %v after the flood",
		early, late, maxHeld.Round(time.Millisecond))
	if early == 0 {
		t.Errorf("daemon held all %d streams of one peer: no per-peer stream cap", len(streams))
	}
	for _, s := range streams {
		_ = s.Reset()
	}
	mem.report(t, d, "500 streams")

	// The flooding peer itself is served again.
	var resp directory.Response
	if err := reqresp.CallCBOR(ctx10(t), c, d.peerID, protoDirectory, directory.Request{Kind: directory.RequestSearch, Query: "x"}, &resp); err != nil || resp.Kind != directory.ResponseResults {
		t.Fatalf("flooding peer after the flood: %+v %v", resp, err)
	}
}

// TestAbuseConnectionLoop: one peer reconnects in a loop, and many
// identities connect from the same address and stay. Then a new client is
// served.
func TestAbuseConnectionLoop(t *testing.T) {
	d := startDaemon(t, testEnv(t.TempDir()))
	mem := watchMem(t, d)

	c := newClient(t)
	loops, idents := 100, 40
	if testing.Short() {
		loops, idents = 30, 10
	}
	failed := 0
	start := time.Now()
	for i := 0; i < loops; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := c.Connect(ctx, peer.AddrInfo{ID: d.peerID, Addrs: d.addrs})
		cancel()
		if err != nil {
			failed++
		}
		_ = c.Network().ClosePeer(d.peerID)
		c.Peerstore().RemovePeer(d.peerID)
	}
	t.Logf("reconnect loop: %d connections by one peer in %v, %d failed", loops, time.Since(start).Round(time.Millisecond), failed)

	ok := 0
	for i := 0; i < idents; i++ {
		h := newClient(t)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if h.Connect(ctx, peer.AddrInfo{ID: d.peerID, Addrs: d.addrs}) == nil {
			ok++
		}
		cancel()
	}
	t.Logf("%d identities from 127.0.0.1: %d connected and held", idents, ok)
	mem.report(t, d, "connection loop")
	assertServing(t, d)
}

// TestAbuseRendezvousFlood: one peer registers 256 namespaces. The
// per-peer cap (DUSK_RENDEZVOUS_MAX_PER_PEER, 256) holds, the next one is
// refused, and another peer registers and discovers normally.
func TestAbuseRendezvousFlood(t *testing.T) {
	d := startDaemon(t, testEnv(t.TempDir()))
	c := newClient(t)
	connectTo(t, c, d)
	rec := sealOwnRecord(t, c)
	mem := watchMem(t, d)

	const n = 256
	var okN, refusedN, errN atomic.Int32
	jobs := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				r, err := rdvCall(ctx, c, d.peerID, rdvRegister(fmt.Sprintf("dusk/community/com_%016x", i), rec))
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
		}()
	}
	for i := 0; i < n; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	t.Logf("rendezvous flood: %d namespaces from one peer in %v: %d OK, %d refused, %d stream errors",
		n, time.Since(start).Round(time.Millisecond), okN.Load(), refusedN.Load(), errN.Load())
	if okN.Load() != n || errN.Load() != 0 {
		t.Errorf("flood within the per-peer cap: %d OK, %d errors, want %d OK", okN.Load(), errN.Load(), n)
	}
	r, err := rdvCall(ctx10(t), c, d.peerID, rdvRegister("dusk/one-too-many", rec))
	if err != nil || r.GetRegisterResponse().GetStatus() == pb.Message_OK {
		t.Errorf("registration %d of one peer: %v %v, want a refusal", n+1, r, err)
	} else {
		t.Logf("registration %d of one peer: %v", n+1, r.GetRegisterResponse().GetStatus())
	}
	mem.report(t, d, "rendezvous flood")

	// The same from a second peer with records near the 4 KiB cap: what a
	// flood costs in memory per identity (the per-peer byte cap stops it).
	if testing.Short() {
		assertServing(t, d)
		return
	}
	big := newClient(t)
	connectTo(t, big, d)
	bigRec := sealBigRecord(t, big, 4000)
	mem = watchMem(t, d)
	okN.Store(0)
	jobs = make(chan int)
	start = time.Now()
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				r, err := rdvCall(ctx, big, d.peerID, rdvRegister(fmt.Sprintf("dusk/community/com_%016x", i), bigRec))
				cancel()
				if err == nil && r.GetRegisterResponse().GetStatus() == pb.Message_OK {
					okN.Add(1)
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	t.Logf("rendezvous flood with %d-byte records: %d of %d accepted in %v", len(bigRec), okN.Load(), n, time.Since(start).Round(time.Millisecond))
	mem.report(t, d, fmt.Sprintf("rendezvous flood, %d × %d-byte records", n, len(bigRec)))
	assertServing(t, d)
}

// sealBigRecord signs a record padded with addresses to at most size
// bytes (binary search on the address count: sealing is not free).
func sealBigRecord(t *testing.T, h host.Host, size int) []byte {
	t.Helper()
	seal := func(n int) []byte {
		addrs := make([]ma.Multiaddr, n)
		for i := range addrs {
			addrs[i] = ma.StringCast(fmt.Sprintf("/ip4/198.51.%d.%d/tcp/%d", (i/250)%250, i%250+1, 1024+i))
		}
		return sealRecord(t, h, addrs, 1)
	}
	lo, hi := 0, size // lo fits; hi does not (an address costs > 1 byte)
	for hi-lo > 1 {
		if mid := (lo + hi) / 2; len(seal(mid)) <= size {
			lo = mid
		} else {
			hi = mid
		}
	}
	return seal(lo)
}

// --- TURN ------------------------------------------------------------------

// turnAddrs finds the TURN listeners (ports are 0 in testEnv) in the log.
func turnAddrs(t *testing.T, d *daemon) (udp, tcp string) {
	t.Helper()
	udp, tcp = d.logField("TURN server listening", "udp"), d.logField("TURN server listening", "tcp")
	if udp == "" || tcp == "" {
		t.Fatalf("no TURN listener addresses in the log\n%s", d.logs())
	}
	return udp, tcp
}

func quietPion() logging.LoggerFactory {
	lf := logging.NewDefaultLoggerFactory()
	lf.DefaultLogLevel = logging.LogLevelDisabled
	return lf
}

// turnClient is a pion/turn UDP client on its own socket (one 5-tuple).
type turnClient struct {
	*turn.Client
	conn  net.PacketConn
	relay net.PacketConn
}

func dialTURN(t *testing.T, server, user, pass string) *turnClient {
	return dialTURNFrom(t, "127.0.0.1", server, user, pass)
}

// dialTURNFrom binds the client to localIP (another loopback address is
// another source to the server).
func dialTURNFrom(t *testing.T, localIP, server, user, pass string) *turnClient {
	t.Helper()
	pc, err := net.ListenPacket("udp4", net.JoinHostPort(localIP, "0"))
	if err != nil {
		t.Fatal(err)
	}
	cl, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr: server, TURNServerAddr: server, Username: user, Password: pass,
		Conn: pc, RTO: 200 * time.Millisecond, LoggerFactory: quietPion(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Listen(); err != nil {
		t.Fatal(err)
	}
	tc := &turnClient{Client: cl, conn: pc}
	t.Cleanup(func() {
		if tc.relay != nil {
			_ = tc.relay.Close()
		}
		cl.Close()
		_ = pc.Close()
	})
	return tc
}

func (c *turnClient) allocate() error {
	r, err := c.Allocate()
	if err == nil {
		c.relay = r
	}
	return err
}

func turnCode(err error) int {
	var te *stun.TurnError
	if errors.As(err, &te) {
		return int(te.ErrorCodeAttr.Code)
	}
	return 0
}

// fetchCreds gets TURN credentials over libp2p for a fresh identity.
func fetchCreds(t *testing.T, d *daemon) turncreds.Response {
	t.Helper()
	c := newClient(t)
	connectTo(t, c, d)
	var creds turncreds.Response
	if err := reqresp.CallCBOR(ctx10(t), c, d.peerID, protoTurnCreds, turncreds.Request{}, &creds); err != nil {
		t.Fatalf("credentials: %v", err)
	}
	return creds
}

// TestAbuseTURNFloods: allocation floods by one peer (per-peer quota),
// by many identities from one address (per-IP quota, below the global one), and
// a flood of requests with bad credentials (401 each, nothing kept). After
// each, a new peer allocates.
func TestAbuseTURNFloods(t *testing.T) {
	// Per-IP cap 20 below the global 40: one address cannot take them all.
	env := append(testEnv(t.TempDir()), "DUSK_TURN_MAX_PER_USER=5", "DUSK_TURN_MAX_PER_IP=20", "DUSK_TURN_MAX_ALLOCATIONS=40")
	d := startDaemon(t, env)
	udpAddr, _ := turnAddrs(t, d)
	secret, err := os.ReadFile(d.dataDir() + "/" + turnauth.SecretFile)
	if err != nil {
		t.Fatal(err)
	}
	key := bytes.TrimSpace(secret)

	// The well-behaved peer comes from another address than the floods.
	validAllocate := func(stage string) error {
		t.Helper()
		creds := fetchCreds(t, d)
		return dialTURNFrom(t, "127.0.0.2", udpAddr, creds.Username, creds.Password).allocate()
	}

	// 1. One peer, one address, 20 allocations (quota 5).
	mem := watchMem(t, d)
	creds := fetchCreds(t, d)
	codes := map[int]int{}
	for i := 0; i < 20; i++ {
		codes[turnCode(dialTURN(t, udpAddr, creds.Username, creds.Password).allocate())]++
	}
	t.Logf("allocation flood by one peer: results by STUN code (0 = allocated): %v", codes)
	if codes[0] != 5 || codes[486] != 15 {
		t.Errorf("per-peer quota: %v, want 5 allocated and 15 × 486", codes)
	}
	mem.report(t, d, "TURN allocation flood (one peer)")
	if err := validAllocate("one-peer flood"); err != nil {
		t.Fatalf("after a one-peer allocation flood, a new peer cannot allocate: %v", err)
	}

	// No one let in: an allocated client cannot open the relay towards
	// loopback, private, link-local or metadata addresses, in any spelling.
	pcreds := fetchCreds(t, d)
	pc0 := dialTURNFrom(t, "127.0.0.3", udpAddr, pcreds.Username, pcreds.Password)
	if err := pc0.allocate(); err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{"127.0.0.1", "10.0.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
		"::1", "64:ff9b::7f00:1", "2002:7f00:1::1", "fe80::1", "fd00::1"} {
		err := pc0.CreatePermission(&net.UDPAddr{IP: net.ParseIP(target), Port: 9})
		if err == nil {
			t.Errorf("TURN permission to %s granted", target)
			continue
		}
		t.Logf("permission to %-16s refused: %v", target, err)
	}
	// Control: a public address is permitted (CreatePermission sends
	// nothing to the peer, so no traffic leaves loopback).
	if err := pc0.CreatePermission(&net.UDPAddr{IP: net.ParseIP("8.8.8.8"), Port: 9}); err != nil {
		t.Errorf("permission to a public address refused: %v", err)
	}

	// 2. Many identities from one address. Identities cost an attacker one
	// libp2p handshake each; here they are minted from the secret directly.
	mem = watchMem(t, d)
	codes = map[int]int{}
	for i := 0; i < 12; i++ {
		id := fmt.Sprintf("12D3KooWFlood%039d", i)
		u, p := turnauth.Issue(key, id, time.Now(), time.Hour)
		for j := 0; j < 5; j++ {
			codes[turnCode(dialTURN(t, udpAddr, u, p).allocate())]++
		}
	}
	t.Logf("allocation flood by 12 identities from 127.0.0.1 (60 attempts, per-IP cap 20, global cap 40): %v", codes)
	mem.report(t, d, "TURN allocation flood (many identities)")
	// 127.0.0.1 still holds the 5 allocations of stage 1, so 15 more fit.
	if codes[0] != 15 || codes[486] != 45 {
		t.Errorf("per-IP quota: %v, want 15 allocated and 45 × 486", codes)
	}
	if err := validAllocate("many-identity flood"); err != nil {
		t.Fatalf("after a many-identity flood from 127.0.0.1, a peer from 127.0.0.2 cannot allocate: code %d (%v)", turnCode(err), err)
	}

	// 3. 401 flood: 3000 Allocate requests with wrong credentials from one socket.
	mem = watchMem(t, d)
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	raddr, _ := net.ResolveUDPAddr("udp4", udpAddr)
	u, _ := turnauth.Issue(key, "12D3KooWBadPass", time.Now(), time.Hour)
	var got401 atomic.Int32
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		buf := make([]byte, 1500)
		for {
			_ = pc.SetReadDeadline(time.Now().Add(2 * time.Second))
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			m := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
			var code stun.ErrorCodeAttribute
			if m.Decode() == nil && code.GetFrom(m) == nil && code.Code == stun.CodeUnauthorized {
				got401.Add(1)
			}
		}
	}()
	const floods = 3000
	start := time.Now()
	for i := 0; i < floods; i++ {
		msg := stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest),
			stun.RawAttribute{Type: stun.AttrRequestedTransport, Value: []byte{17, 0, 0, 0}},
			stun.NewUsername(u), stun.NewRealm("duskchat.app"), stun.NewNonce("nonce"),
			stun.NewLongTermIntegrity(u, "duskchat.app", "wrong password"), stun.Fingerprint)
		if _, err := pc.WriteTo(msg.Raw, raddr); err != nil {
			t.Fatal(err)
		}
		if i%100 == 99 {
			time.Sleep(5 * time.Millisecond) // stay under the loopback socket buffer
		}
	}
	<-readDone
	t.Logf("401 flood: %d bad Allocate requests from one socket in %v, %d answered 401",
		floods, time.Since(start).Round(time.Millisecond), got401.Load())
	if got401.Load() == 0 {
		t.Errorf("no 401 answers to bad credentials")
	}
	mem.report(t, d, "TURN 401 flood")
	t.Logf("auth failure log lines kept: %d", strings.Count(d.logs(), "TURN authentication failed"))
	// STUN binding (unauthenticated) still answers after the flood.
	cl := dialTURNFrom(t, "127.0.0.2", udpAddr, "", "")
	if _, err := cl.SendBindingRequest(); err != nil {
		t.Fatalf("STUN binding after the 401 flood: %v", err)
	}
}

// dataDir is the daemon's DUSK_DATA_DIR.
func (d *daemon) dataDir() string {
	for _, kv := range d.cmd.Env {
		if v, ok := strings.CutPrefix(kv, "DUSK_DATA_DIR="); ok {
			return v
		}
	}
	return ""
}
