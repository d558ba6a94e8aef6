// Package rendezvous serves /rendezvous/1.0.0 for rust-libp2p 0.54
// (libp2p-rendezvous 0.15) clients, over the wire types of
// github.com/waku-org/go-libp2p-rendezvous/pb.
//
// Waku's own RendezvousService is not used: it resets streams after
// answering, omits or hashes cookies, and accepts inputs Rust rejects. This
// handler answers the way the Rust server does:
//
//   - one request per stream, varint-delimited protobuf of at most
//     MaxRequestSize (5 KiB), answered then closed gracefully (Close,
//     never Reset); UNREGISTER gets no answer;
//   - DiscoverResponse OK always carries a cookie in Rust's format (8-byte
//     big-endian id, then the namespace unless discovering every namespace)
//     and every registration carries ns, signedPeerRecord and ttl (the
//     remaining lifetime in seconds); RegisterResponse OK carries ttl;
//   - a discover response is kept under Rust's 1 MiB frame cap: it may hold
//     fewer registrations than the limit, and the cookie continues after it.
//
// Limits: namespace 1-255 bytes of UTF-8; TTL in [MinTTL, MaxTTL] (absent =
// 2 h, clamped into that range); signed peer records up to MaxRecordSize,
// Ed25519-signed, for the sending peer; "dusk/peer/<id>" only for the
// sender's own id. Each peer may hold at most DefaultMaxPerPeer live
// registrations and DefaultMaxPeerBytes (E_NOT_AUTHORIZED beyond, as waku
// does). Each source address (IPv4) or /56 (IPv6) may hold
// DefaultMaxSourceBytes, the server DefaultMaxRegistrations and
// DefaultMaxBytes; a full budget evicts the oldest registration of its
// largest holder, and only a sender that is itself the largest holder gets
// E_UNAVAILABLE. Discover without a namespace gets E_NOT_AUTHORIZED unless
// enabled (config.Rendezvous.DiscoverAll).
package rendezvous

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-msgio/pbio"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	pb "github.com/waku-org/go-libp2p-rendezvous/pb"
	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/config"
)

// Protocol is the rendezvous protocol ID.
const Protocol = protocol.ID("/rendezvous/1.0.0")

// PeerNamespacePrefix starts the namespace a Dusk client registers under
// with its own peer ID, "dusk/peer/<id>".
const PeerNamespacePrefix = "dusk/peer/"

const (
	// DefaultTTL applies when a Register carries no TTL (rust-libp2p DEFAULT_TTL).
	DefaultTTL = 2 * time.Hour
	// MaxMessageSize is the cap every response stays under (rust-libp2p's
	// codec limit).
	MaxMessageSize = 1 << 20
	// MaxRequestSize is the largest request read: a REGISTER (namespace
	// up to 255 bytes, record up to MaxRecordSize, TTL, framing) is the
	// largest a client sends, so nobody needs a stream to buffer 1 MiB.
	MaxRequestSize = MaxRecordSize + 1024
	// StreamTimeout bounds reading the request and writing the answer.
	StreamTimeout = 15 * time.Second
	// DefaultMaxPerPeer caps live registrations per peer (one per
	// namespace). A Dusk client registers "dusk/peers", "dusk/peer/<own
	// id>" and "dusk/community/<id>" per community it is in; the app sets
	// no limit on communities, so this leaves room for ~250.
	DefaultMaxPerPeer = 256
	// DefaultMaxPeerBytes caps what one peer's registrations count against
	// the byte budget: 256 registrations of ~750-byte records, or ~55 of
	// MaxRecordSize. A Dusk client re-sends the same small record under
	// every namespace, so it stays far below.
	DefaultMaxPeerBytes = 256 << 10
	// DefaultMaxSourceBytes caps the registrations made from one source
	// address (IPv4) or /56 (IPv6): 1/32 of DefaultMaxBytes, so at least 32
	// addresses are needed to fill the server, and even then newcomers
	// evict the largest holders instead of being refused.
	DefaultMaxSourceBytes = 4 << 20
	// DefaultMaxRegistrations caps live registrations in total.
	DefaultMaxRegistrations = 1_000_000
	// DefaultMaxBytes caps the memory held by live registrations (records,
	// namespaces and a per-entry overhead estimate). Without it the other
	// caps allow 1,000,000 records of up to MaxRecordSize each, and
	// identities cost nothing. Typical Dusk records (under 1 KiB) give
	// ~100,000 registrations in this budget.
	DefaultMaxBytes = 128 << 20
	// DefaultSweepInterval is how often expired registrations are dropped;
	// reads skip expired ones in between.
	DefaultSweepInterval = time.Minute

	// responseBudget leaves room for the DiscoverResponse envelope
	// (type, status, cookie of at most 263 bytes) under MaxMessageSize.
	responseBudget = MaxMessageSize - 1024
	sweepBatch     = 4096
	// opTimeout bounds one store operation: with Redis unreachable a
	// request gets E_UNAVAILABLE instead of waiting for the stream timeout.
	opTimeout = 3 * time.Second
)

// Option configures a Server.
type Option func(*Server)

// WithOnRegister sets a hook called after every successful registration
// (new or refreshed) with the registering peer, namespace and granted TTL.
// It runs synchronously on the stream's goroutine after the store lock is
// released and before the answer is written: the callee must not block
// (hand off to a channel or goroutine), or it delays the client's answer.
// It may still be called while Close is waiting for in-flight streams.
func WithOnRegister(fn func(p peer.ID, ns string, ttl time.Duration)) Option {
	return func(s *Server) { s.onRegister = fn }
}

// WithClock replaces time.Now for expiry (tests).
func WithClock(now func() time.Time) Option {
	return func(s *Server) { s.now = now }
}

// WithMaxPerPeer overrides DefaultMaxPerPeer.
func WithMaxPerPeer(n int) Option {
	return func(s *Server) { s.lim.maxPerPeer = n }
}

// WithMaxRegistrations overrides DefaultMaxRegistrations.
func WithMaxRegistrations(n int) Option {
	return func(s *Server) { s.lim.maxTotal = n }
}

// WithMaxBytes overrides DefaultMaxBytes (0 = unlimited).
func WithMaxBytes(n int) Option {
	return func(s *Server) { s.lim.maxBytes = n }
}

// WithMaxPeerBytes overrides DefaultMaxPeerBytes (0 = unlimited).
func WithMaxPeerBytes(n int) Option {
	return func(s *Server) { s.lim.maxPeerBytes = n }
}

// WithMaxSourceBytes overrides DefaultMaxSourceBytes (0 = unlimited).
func WithMaxSourceBytes(n int) Option {
	return func(s *Server) { s.lim.maxSrcBytes = n }
}

// WithStreamTimeout overrides StreamTimeout (tests).
func WithStreamTimeout(d time.Duration) Option {
	return func(s *Server) { s.timeout = d }
}

// WithRedis keeps the registrations in Redis, shared by every relay using
// the same Redis and key prefix, instead of in memory. The budgets then
// count across the cluster. The Server does not close rdb.
func WithRedis(rdb redis.UniversalClient, keyPrefix string) Option {
	return func(s *Server) { s.rdb, s.rdbPrefix = rdb, keyPrefix }
}

// WithSweepInterval overrides DefaultSweepInterval.
func WithSweepInterval(d time.Duration) Option {
	return func(s *Server) { s.sweepEvery = d }
}

// Server is the rendezvous point. Create with New, serve with Attach.
type Server struct {
	cfg        config.Rendezvous
	log        *zap.Logger
	now        func() time.Time
	onRegister func(peer.ID, string, time.Duration)
	lim        limits
	sweepEvery time.Duration
	timeout    time.Duration
	m          metrics

	mu    sync.Mutex // guards store
	store *store     // the in-memory table, nil with Redis
	be    backend

	rdb       redis.UniversalClient
	rdbPrefix string

	life     sync.Mutex // guards host, closed, active and Add on handlers
	host     host.Host
	closed   bool
	active   map[network.Stream]struct{} // streams being handled
	handlers sync.WaitGroup
	stop     chan struct{}
	sweeper  sync.WaitGroup
	once     sync.Once
}

// New builds a Server. reg may be nil (metrics not registered).
func New(cfg config.Rendezvous, log *zap.Logger, reg prometheus.Registerer, opts ...Option) *Server {
	if log == nil {
		log = zap.NewNop()
	}
	s := &Server{
		cfg: cfg,
		log: log,
		now: time.Now,
		lim: limits{
			maxPerPeer:   DefaultMaxPerPeer,
			maxTotal:     DefaultMaxRegistrations,
			maxBytes:     DefaultMaxBytes,
			maxPeerBytes: DefaultMaxPeerBytes,
			maxSrcBytes:  DefaultMaxSourceBytes,
		},
		sweepEvery: DefaultSweepInterval,
		timeout:    StreamTimeout,
		stop:       make(chan struct{}),
		active:     make(map[network.Stream]struct{}),
	}
	// The configured budgets apply unless an option overrides them.
	if cfg.MaxPerPeer > 0 {
		s.lim.maxPerPeer = cfg.MaxPerPeer
	}
	if cfg.MaxBytes > 0 {
		s.lim.maxBytes = int(cfg.MaxBytes)
	}
	if cfg.MaxBytesPerPeer > 0 {
		s.lim.maxPeerBytes = int(cfg.MaxBytesPerPeer)
	}
	if cfg.MaxBytesPerAddr > 0 {
		s.lim.maxSrcBytes = int(cfg.MaxBytesPerAddr)
	}
	for _, o := range opts {
		o(s)
	}
	s.lim.maxBytes = max(s.lim.maxBytes, 0)
	s.lim.maxPeerBytes = max(s.lim.maxPeerBytes, 0)
	s.lim.maxSrcBytes = max(s.lim.maxSrcBytes, 0)
	// A per-address budget above the total means the total: an operator
	// who lowers only DUSK_RENDEZVOUS_MAX_BYTES keeps a valid setup.
	if s.lim.maxBytes > 0 && s.lim.maxSrcBytes > s.lim.maxBytes {
		s.lim.maxSrcBytes = s.lim.maxBytes
	}
	if s.cfg.MaxDiscover < 1 {
		s.cfg.MaxDiscover = 1000
	}
	if s.cfg.MinTTL <= 0 {
		s.cfg.MinTTL = DefaultTTL
	}
	if s.cfg.MaxTTL < s.cfg.MinTTL {
		s.cfg.MaxTTL = s.cfg.MinTTL
	}
	// Ids start at the wall clock in nanoseconds so they keep growing
	// across restarts: a cookie kept by a client from a previous run then
	// points before every registration of this run and yields them all.
	first := uint64(0)
	if n := s.now().UnixNano(); n > 0 {
		first = uint64(n)
	}
	if s.rdb != nil {
		s.be = newRedisBackend(s.rdb, s.rdbPrefix, s.lim, s.cfg.MaxTTL)
	} else {
		s.store = newStore(first, s.lim)
		s.be = memBackend{mu: &s.mu, st: s.store}
	}
	s.m = newMetrics(reg, s.Registrations, s.StoredBytes, log)
	return s
}

// Attach installs the stream handler on h and starts the expiry sweeper.
// Call it once.
func (s *Server) Attach(h host.Host) {
	s.life.Lock()
	defer s.life.Unlock()
	if s.closed || s.host != nil {
		return
	}
	s.host = h
	h.SetStreamHandler(Protocol, s.handle)
	s.sweeper.Add(1)
	go s.sweepLoop()
}

// Close removes the stream handler, stops the sweeper, cuts short the
// reads of in-flight streams (a client that never finishes its request
// would otherwise hold shutdown for StreamTimeout) and waits for their
// handlers, which may still write an answer already computed. It does not
// close the host. Safe to call more than once.
func (s *Server) Close() error {
	s.once.Do(func() {
		s.life.Lock()
		s.closed = true
		h := s.host
		for str := range s.active {
			_ = str.SetReadDeadline(time.Now())
		}
		s.life.Unlock()
		if h != nil {
			h.RemoveStreamHandler(Protocol)
		}
		close(s.stop)
		s.sweeper.Wait()
		s.handlers.Wait()
	})
	return nil
}

// StoredBytes returns what live registrations count against the byte
// budget (see DefaultMaxBytes); -1 when the store cannot be reached.
func (s *Server) StoredBytes() int {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	_, b, err := s.be.stats(ctx, s.now())
	if err != nil {
		return -1
	}
	return b
}

// Registrations returns the number of live (unexpired) registrations
// (of the whole cluster with Redis); -1 when the store cannot be reached.
func (s *Server) Registrations() int {
	s.sweep()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	n, _, err := s.be.stats(ctx, s.now())
	if err != nil {
		return -1
	}
	return n
}

// Engine names where registrations live: "memory" or "redis".
func (s *Server) Engine() string { return s.be.engine() }

// Ping reports whether the registration store answers (for /readyz).
func (s *Server) Ping(ctx context.Context) error { return s.be.ping(ctx) }

func (s *Server) sweepLoop() {
	defer s.sweeper.Done()
	t := time.NewTicker(s.sweepEvery)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.sweep()
		}
	}
}

// sweep drops expired registrations.
func (s *Server) sweep() {
	ctx, cancel := context.WithTimeout(context.Background(), 4*opTimeout)
	defer cancel()
	n, err := s.be.expire(ctx, s.now())
	if err != nil {
		s.log.Debug("sweep expired registrations", zap.Error(err))
	}
	if n > 0 {
		s.log.Debug("registrations expired", zap.Int("count", n))
	}
}

func (s *Server) handle(str network.Stream) {
	s.life.Lock()
	if s.closed {
		s.life.Unlock()
		_ = str.Reset()
		return
	}
	s.handlers.Add(1)
	// The deadline is set under the lock so that Close, which shortens it,
	// cannot be overridden by it.
	_ = str.SetDeadline(time.Now().Add(s.timeout))
	s.active[str] = struct{}{}
	s.life.Unlock()
	defer func() {
		s.life.Lock()
		delete(s.active, str)
		s.life.Unlock()
		s.handlers.Done()
	}()

	remote := str.Conn().RemotePeer()
	src := sourcePrefix(str.Conn().RemoteMultiaddr())

	var req pb.Message
	if err := pbio.NewDelimitedReader(str, MaxRequestSize).ReadMsg(&req); err != nil {
		s.bad(str, remote, "read request", err)
		return
	}
	if req.Type == nil {
		s.bad(str, remote, "request without type", nil)
		return
	}

	var resp *pb.Message
	switch req.GetType() {
	case pb.Message_REGISTER:
		if req.Register == nil {
			s.bad(str, remote, "REGISTER without body", nil)
			return
		}
		resp = &pb.Message{
			Type:             pb.Message_REGISTER_RESPONSE.Enum(),
			RegisterResponse: s.register(remote, src, req.Register),
		}
	case pb.Message_UNREGISTER:
		if req.Unregister == nil {
			s.bad(str, remote, "UNREGISTER without body", nil)
			return
		}
		s.unregister(remote, req.Unregister.GetNs())
		_ = str.Close()
		return
	case pb.Message_DISCOVER:
		if req.Discover == nil {
			s.bad(str, remote, "DISCOVER without body", nil)
			return
		}
		resp = &pb.Message{
			Type:             pb.Message_DISCOVER_RESPONSE.Enum(),
			DiscoverResponse: s.discover(remote, req.Discover),
		}
	default:
		s.bad(str, remote, "unexpected message type "+req.GetType().String(), nil)
		return
	}

	if err := pbio.NewDelimitedWriter(str).WriteMsg(resp); err != nil {
		s.log.Debug("write response", zap.Stringer("peer", remote), zap.Error(err))
		_ = str.Reset()
		return
	}
	if err := str.Close(); err != nil {
		s.log.Debug("close stream", zap.Stringer("peer", remote), zap.Error(err))
	}
}

// bad resets a stream whose request could not be understood.
func (s *Server) bad(str network.Stream, remote peer.ID, what string, err error) {
	s.m.malformed.Inc()
	s.log.Debug("bad rendezvous request", zap.Stringer("peer", remote), zap.String("reason", what), zap.Error(err))
	_ = str.Reset()
}

func (s *Server) registerError(remote peer.ID, ns string, status pb.Message_ResponseStatus, err error) *pb.Message_RegisterResponse {
	s.m.errors.WithLabelValues(status.String()).Inc()
	s.log.Debug("registration rejected", zap.Stringer("peer", remote), zap.String("namespace", ns),
		zap.Stringer("status", status), zap.Error(err))
	text := err.Error()
	return &pb.Message_RegisterResponse{Status: status.Enum(), StatusText: &text}
}

func (s *Server) register(remote peer.ID, src netip.Prefix, r *pb.Message_Register) *pb.Message_RegisterResponse {
	ns := r.GetNs()
	if !validNamespace(ns) {
		return s.registerError(remote, ns, pb.Message_E_INVALID_NAMESPACE, errors.New("namespace must be 1-255 bytes of UTF-8"))
	}
	// A Dusk client registers "dusk/peer/<id>" only with its own peer ID
	// (friends discover it there); anyone else registering there would
	// answer DMs meant for that peer.
	if owner, ok := strings.CutPrefix(ns, PeerNamespacePrefix); ok && owner != remote.String() {
		return s.registerError(remote, ns, pb.Message_E_NOT_AUTHORIZED, errors.New("dusk/peer/<id> is reserved for peer <id>"))
	}
	recPeer, err := parseRecord(r.GetSignedPeerRecord())
	if err != nil {
		return s.registerError(remote, ns, pb.Message_E_INVALID_SIGNED_PEER_RECORD, err)
	}
	if recPeer != remote {
		return s.registerError(remote, ns, pb.Message_E_NOT_AUTHORIZED, errors.New("signed peer record is not for the sending peer"))
	}
	ttl, ok := s.ttl(r.Ttl)
	if !ok {
		return s.registerError(remote, ns, pb.Message_E_INVALID_TTL, errors.New("ttl out of range"))
	}

	now := s.now()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	replaced, evicted, err := s.be.add(ctx, remote, src, ns, r.GetSignedPeerRecord(), now.Add(ttl), now)
	cancel()
	s.m.evicted.Add(float64(len(evicted)))
	for _, e := range evicted {
		s.log.Debug("registration evicted", zap.Stringer("peer", e.peer), zap.String("namespace", e.ns),
			zap.Stringer("source", e.src), zap.Stringer("for", remote))
	}
	switch {
	case errors.Is(err, errPeerLimit), errors.Is(err, errPeerBytes):
		return s.registerError(remote, ns, pb.Message_E_NOT_AUTHORIZED, err)
	case err != nil:
		return s.registerError(remote, ns, pb.Message_E_UNAVAILABLE, err)
	}

	s.m.registers.Inc()
	// Debug: every registration is one request of a free identity, so an
	// info line here would let anyone multiply the log; the counters in
	// metrics.go say how many there are.
	s.log.Debug("peer registered", zap.Stringer("peer", remote), zap.String("namespace", ns),
		zap.Duration("ttl", ttl), zap.Bool("refresh", replaced))
	if s.onRegister != nil {
		s.onRegister(remote, ns, ttl)
	}
	secs := uint64(ttl / time.Second)
	return &pb.Message_RegisterResponse{Status: pb.Message_OK.Enum(), Ttl: &secs}
}

// ttl applies the defaults and bounds of a requested TTL (seconds).
func (s *Server) ttl(req *uint64) (time.Duration, bool) {
	if req == nil {
		// Absent means 2 h, kept inside the configured bounds so a relay
		// configured with MIN_TTL > 2h does not reject every default.
		return min(max(DefaultTTL, s.cfg.MinTTL), s.cfg.MaxTTL), true
	}
	secs := *req
	if secs > uint64(s.cfg.MaxTTL/time.Second) { // compare before converting: no overflow
		return 0, false
	}
	d := time.Duration(secs) * time.Second
	if d < s.cfg.MinTTL || d > s.cfg.MaxTTL {
		return 0, false
	}
	return d, true
}

func (s *Server) unregister(remote peer.ID, ns string) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	n, err := s.be.unregister(ctx, remote, ns)
	cancel()
	s.m.unregisters.Inc()
	s.log.Debug("peer unregistered", zap.Stringer("peer", remote), zap.String("namespace", ns), zap.Int("removed", n), zap.Error(err))
}

func (s *Server) discoverError(remote peer.ID, status pb.Message_ResponseStatus, err error) *pb.Message_DiscoverResponse {
	s.m.errors.WithLabelValues(status.String()).Inc()
	s.log.Debug("discover rejected", zap.Stringer("peer", remote), zap.Stringer("status", status), zap.Error(err))
	text := err.Error()
	return &pb.Message_DiscoverResponse{Status: status.Enum(), StatusText: &text}
}

func (s *Server) discover(remote peer.ID, d *pb.Message_Discover) *pb.Message_DiscoverResponse {
	ns := d.GetNs()
	if ns != "" && !validNamespace(ns) {
		return s.discoverError(remote, pb.Message_E_INVALID_NAMESPACE, errors.New("namespace must be 1-255 bytes of UTF-8"))
	}
	// Without a namespace, discover would hand every registration (peer
	// IDs, addresses, community ids) to anyone; Dusk clients always name
	// one. E_NOT_AUTHORIZED, not E_INVALID_NAMESPACE: the request is well
	// formed (the protocol allows no namespace), this relay's policy
	// refuses it, and rust-libp2p surfaces either as DiscoverFailed.
	if ns == "" && !s.cfg.DiscoverAll {
		return s.discoverError(remote, pb.Message_E_NOT_AUTHORIZED, errors.New("discover without a namespace is disabled on this relay"))
	}
	limit := s.cfg.MaxDiscover
	if l := d.GetLimit(); l > 0 && l < uint64(limit) {
		limit = int(l)
	}
	var after uint64
	if d.Cookie != nil {
		id, cns, err := decodeCookie(d.Cookie)
		if err != nil {
			return s.discoverError(remote, pb.Message_E_INVALID_COOKIE, err)
		}
		// Same rule as the Rust server: a namespace cookie only continues
		// the same namespace; an all-namespaces cookie is accepted anywhere.
		if cns != "" && cns != ns {
			return s.discoverError(remote, pb.Message_E_INVALID_COOKIE, errors.New("cookie is for another namespace"))
		}
		after = id
	}

	now := s.now()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	hits, err := s.be.discover(ctx, ns, after, limit, responseBudget, now)
	cancel()
	if err != nil {
		return s.discoverError(remote, pb.Message_E_UNAVAILABLE, err)
	}

	// Three allocations per page rather than three per registration.
	regs := make([]*pb.Message_Register, len(hits))
	bodies := make([]pb.Message_Register, len(hits))
	ttls := make([]uint64, len(hits))
	for i := range hits {
		h := &hits[i]
		// Remaining lifetime, rounded up so a live registration never says 0.
		ttls[i] = uint64((h.expires.Sub(now) + time.Second - 1) / time.Second)
		r := &bodies[i]
		r.Ns, r.SignedPeerRecord, r.Ttl = &h.ns, h.record, &ttls[i]
		regs[i] = r
	}
	// The cookie continues after the last registration returned; with
	// nothing returned, from where the request started.
	if len(hits) > 0 {
		after = hits[len(hits)-1].id
	}
	s.m.discovers.Inc()
	s.m.served.Add(float64(len(hits)))
	// Debug: clients re-discover every 120 s per namespace.
	s.log.Debug("served registrations", zap.Int("count", len(hits)), zap.Stringer("peer", remote), zap.String("namespace", ns))
	return &pb.Message_DiscoverResponse{
		Status:        pb.Message_OK.Enum(),
		Registrations: regs,
		Cookie:        encodeCookie(after, ns),
	}
}
