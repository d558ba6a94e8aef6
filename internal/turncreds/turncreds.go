// Package turncreds serves /dusk/turn-credentials/1.0.0: a connected peer
// asks for time-limited TURN REST credentials for the relay's TURN server.
package turncreds

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/config"
	"github.com/duskchat/dusk-relay/internal/reqresp"
	"github.com/duskchat/dusk-relay/internal/turnauth"
)

// Protocol is the libp2p protocol ID.
const Protocol protocol.ID = "/dusk/turn-credentials/1.0.0"

// Request is TurnCredentialRequest of the Rust relay.
type Request struct {
	PeerID string `cbor:"peer_id"`
}

// Response is TurnCredentialResponse; field order is the wire order.
type Response struct {
	Username string   `cbor:"username"`
	Password string   `cbor:"password"`
	TTL      uint64   `cbor:"ttl"`
	URIs     []string `cbor:"uris"`
}

// MaxRequestSize caps a request on the wire: {peer_id} with a peer ID of
// at most ~100 characters encodes to well under 200 bytes.
const MaxRequestSize = 1 << 10

// ErrOtherPeer: the request names a peer other than the stream's.
var ErrOtherPeer = errors.New("turncreds: request names another peer")

// Service issues credentials.
type Service struct {
	cfg    config.TURN
	secret []byte
	log    *zap.Logger
	uris   []string
	now    func() time.Time

	issued  prometheus.Counter
	refused prometheus.Counter
}

// New builds the service. secret must be the one the TURN server verifies
// with (turnauth.LoadOrCreateSecret, called once by the daemon). reg may be
// nil; a registration conflict is logged, not fatal (metrics are optional).
func New(cfg config.TURN, secret []byte, log *zap.Logger, reg prometheus.Registerer) *Service {
	host := cfg.CredentialHost()
	s := &Service{
		cfg:    cfg,
		secret: secret,
		log:    log,
		now:    time.Now,
		uris: []string{
			"turn:" + net.JoinHostPort(host, strconv.Itoa(int(cfg.UDPPort))),
			"turn:" + net.JoinHostPort(host, strconv.Itoa(int(cfg.TCPPort))) + "?transport=tcp",
		},
		issued: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "dusk", Subsystem: "turn", Name: "credentials_issued_total",
			Help: "TURN credentials handed out over /dusk/turn-credentials/1.0.0.",
		}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "dusk", Subsystem: "turn", Name: "credentials_refused_total",
			Help: "Credential requests closed without an answer (bad request, other peer, TURN disabled).",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{s.issued, s.refused} {
			if err := reg.Register(c); err != nil {
				log.Warn("turncreds metrics not registered", zap.Error(err))
			}
		}
	}
	return s
}

// URIs are the TURN URIs put in every response.
func (s *Service) URIs() []string { return append([]string(nil), s.uris...) }

// Attach registers the protocol handler on h. It is registered even when
// TURN is disabled, so such requests are closed without an answer rather
// than failing protocol negotiation (docs/PROTOCOLS.md,
// "/dusk/turn-credentials/1.0.0").
func (s *Service) Attach(ctx context.Context, h host.Host) {
	reqresp.Serve(ctx, h, Protocol, s.log, s.Handle, reqresp.WithMaxRequestSize(MaxRequestSize))
}

// Handle answers one request from the authenticated peer remote.
//
// The username always carries remote, never a peer ID typed by the client
// (the Rust relay signed whatever it was sent). An empty peer_id is answered
// for remote: it names no other peer, so nothing is impersonated. A peer_id
// naming a different peer, or one that does not parse, gets no answer.
func (s *Service) Handle(_ context.Context, remote peer.ID, raw []byte) ([]byte, error) {
	if !s.cfg.Enabled {
		s.refused.Inc()
		s.log.Debug("credential request while TURN is disabled", zap.Stringer("peer", remote))
		return nil, reqresp.ErrNoAnswer
	}
	var req Request
	if err := reqresp.Unmarshal(raw, &req); err != nil {
		s.refused.Inc()
		return nil, fmt.Errorf("decode TurnCredentialRequest: %w", err)
	}
	if req.PeerID != "" {
		asked, err := peer.Decode(req.PeerID)
		if err != nil || asked != remote {
			s.refused.Inc()
			s.log.Debug("credential request for another peer refused",
				zap.Stringer("peer", remote), zap.String("requested", truncate(req.PeerID, 80)))
			return nil, reqresp.ErrNoAnswer
		}
	}
	id := remote.String()
	username, password := turnauth.Issue(s.secret, id, s.now(), s.cfg.CredentialTTL)
	out, err := reqresp.Marshal(Response{
		Username: username,
		Password: password,
		TTL:      uint64(s.cfg.CredentialTTL / time.Second),
		URIs:     s.uris,
	})
	if err != nil {
		return nil, fmt.Errorf("encode TurnCredentialResponse: %w", err)
	}
	s.issued.Inc()
	// Debug: any peer may ask as often as it likes, so an info line per
	// credential would let it fill the log (the counter keeps the tally).
	s.log.Debug("credential issued", zap.Stringer("peer", remote), zap.String("username", username))
	return out, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
