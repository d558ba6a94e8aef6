// Package app is the composition root: it builds every capability from the
// Config, starts them in dependency order and stops them in reverse.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/config"
	"github.com/duskchat/dusk-relay/internal/directory"
	"github.com/duskchat/dusk-relay/internal/federation"
	"github.com/duskchat/dusk-relay/internal/gif"
	"github.com/duskchat/dusk-relay/internal/identity"
	"github.com/duskchat/dusk-relay/internal/mesh"
	"github.com/duskchat/dusk-relay/internal/metrics"
	"github.com/duskchat/dusk-relay/internal/p2p"
	"github.com/duskchat/dusk-relay/internal/rendezvous"
	"github.com/duskchat/dusk-relay/internal/reservations"
	"github.com/duskchat/dusk-relay/internal/turn"
	"github.com/duskchat/dusk-relay/internal/turnauth"
	"github.com/duskchat/dusk-relay/internal/turncreds"
)

// ShutdownTimeout bounds the whole stop sequence: the process exits within
// 5 s of SIGTERM (orchestrators kill after their grace period).
const ShutdownTimeout = 4 * time.Second

// stopper is one started capability, stopped in reverse start order.
type stopper struct {
	name string
	stop func(ctx context.Context) error
}

// Run starts the daemon and blocks until ctx is cancelled, then shuts down.
// It writes the relay address lines to stdout once listening.
func Run(ctx context.Context, cfg *config.Config, log *zap.Logger, stdout io.Writer, version string) (err error) {
	var stops []stopper
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ShutdownTimeout)
		defer cancel()
		for i := len(stops) - 1; i >= 0; i-- {
			if serr := stopWithin(sctx, stops[i].stop); serr != nil {
				log.Warn("stop "+stops[i].name, zap.Error(serr))
			} else {
				log.Debug("stopped " + stops[i].name)
			}
		}
		log.Info("dusk-relay stopped")
	}()
	onStop := func(name string, fn func(ctx context.Context) error) {
		stops = append(stops, stopper{name: name, stop: fn})
	}
	closer := func(fn func() error) func(context.Context) error {
		return func(context.Context) error { return fn() }
	}

	logStartup(log, cfg, version)

	var reg prometheus.Registerer
	var ops *metrics.Server
	if cfg.MetricsEnabled() {
		registry := metrics.NewRegistry()
		reg = registry
		ops, err = metrics.New(cfg.MetricsAddr, registry, log.Named("metrics"))
		if err != nil {
			return err
		}
		onStop("metrics", ops.Close)
		log.Info("metrics listening", zap.Stringer("addr", ops.Addr()))
	}

	key, err := identity.LoadOrCreate(cfg.DataDir, log.Named("identity"))
	if err != nil {
		return fmt.Errorf("identity: %w", err)
	}

	// Redis (DUSK_REDIS_URL): rendezvous registrations and reservation
	// records shared by the relays of a cluster. Closed last, after the
	// host and the recorder (stops run in reverse).
	rdb, err := openRedis(cfg, log)
	if err != nil {
		return err
	}
	var rsvRec *reservations.Recorder
	if rdb != nil {
		onStop("redis", closer(rdb.Close))
		rsvRec = reservations.New(rdb, redisKeyPrefix, log.Named("reservations"))
		onStop("reservation records", closer(rsvRec.Close))
	}

	opts := p2p.Options{Version: version, PublicHost: cfg.PublicHost}
	if !cfg.PublicIPGuessed {
		opts.PublicIP = cfg.PublicIP
	}
	if meshEnabled(cfg) {
		opts.ClusterProtocols = []protocol.ID{mesh.ProtocolID}
	}
	// Built without listening: Listen comes after every handler below.
	node, err := p2p.New(ctx, cfg.Relay, opts, key, log.Named("p2p"), reg)
	if err != nil {
		return fmt.Errorf("libp2p host: %w", err)
	}
	onStop("libp2p host", closer(node.Close))
	h := node.Host()
	if rsvRec != nil {
		node.SetReservationHook(rsvRec)
		rsvRec.Start(h.ID(), node.AnnouncedAddrs)
	}
	// A CONNECT for a peer reserved at another relay of the cluster goes
	// through the circuit mesh; stopped before the host (reverse order).
	if m, err := startMesh(cfg, node, rsvRec, log.Named("mesh"), reg); err != nil {
		return err
	} else if m != nil {
		onStop("circuit mesh", closer(m.Close))
	}
	if ops != nil {
		ops.AddCheck("libp2p", func() error {
			if len(h.Network().ListenAddresses()) == 0 {
				return errors.New("not listening")
			}
			return nil
		})
	}

	if cfg.TURN.Enabled {
		secret, err := turnauth.LoadOrCreateSecret(cfg.DataDir, cfg.Secret, log.Named("turn"))
		if err != nil {
			return fmt.Errorf("turn secret: %w", err)
		}
		if cfg.PublicIPGuessed {
			log.Warn("DUSK_TURN_PUBLIC_IP not set; TURN relayed addresses use a guessed IP",
				zap.String("ip", cfg.PublicIP))
		}
		ts, err := turn.New(cfg.TURN, secret, log.Named("turn"), reg)
		if err != nil {
			return fmt.Errorf("turn: %w", err)
		}
		onStop("turn", closer(ts.Close))
		if ops != nil {
			ops.AddCheck("turn", ts.Ready)
		}
		// Port 0 (tests) means "any": advertise the ports actually bound.
		credCfg := cfg.TURN
		credCfg.UDPPort = uint16(ts.UDPAddr().Port)
		credCfg.TCPPort = uint16(ts.TCPAddr().Port)
		turncreds.New(credCfg, secret, log.Named("turncreds"), reg).Attach(ctx, h)
	} else {
		log.Info("TURN server disabled (DUSK_TURN_ENABLED=false)")
		// Still registered: requests are closed without an answer instead
		// of failing as "protocol not supported" (docs/PROTOCOLS.md,
		// turn-credentials).
		turncreds.New(cfg.TURN, nil, log.Named("turncreds"), reg).Attach(ctx, h)
	}

	store, err := openDirectory(ctx, cfg, log.Named("directory"))
	if err != nil {
		return err // the store's errors already name the directory
	}
	onStop("directory", closer(store.Close))
	if ops != nil {
		ops.AddCheck("directory ("+store.Engine()+")", func() error {
			pctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			return store.Ping(pctx)
		})
	}
	directory.NewService(store, cfg.Directory, log.Named("directory"), reg).Attach(ctx, h)
	// Stop taking requests before the store closes under them.
	onStop("directory handler", func(context.Context) error {
		h.RemoveStreamHandler(directory.ProtocolID)
		return nil
	})

	gifs := gif.New(cfg.Gif, log.Named("gif"), reg)
	onStop("gif", closer(gifs.Close))
	gifs.Attach(ctx, h)

	// The clients' topics are forwarded by default: two clients that reach
	// each other only through this relay sync over it, as with the Rust relay.
	fed, err := federation.New(ctx, h, cfg.Relay, log.Named("federation"), reg,
		federation.WithRelayTopics(cfg.GossipClientTopics...), federation.WithClientRate(cfg.GossipClientBPS))
	if err != nil {
		return fmt.Errorf("federation: %w", err)
	}
	onStop("federation", closer(fed.Close))

	rdvOpts := []rendezvous.Option{
		rendezvous.WithMaxBytes(int(cfg.Rendezvous.MaxBytes)),
		rendezvous.WithOnRegister(func(p peer.ID, ns string, ttl time.Duration) {
			fed.Publish(p, ns, ttl)
		}),
	}
	if rdb != nil {
		rdvOpts = append(rdvOpts, rendezvous.WithRedis(rdb, redisKeyPrefix))
	}
	rdv := rendezvous.New(cfg.Rendezvous, log.Named("rendezvous"), reg, rdvOpts...)
	onStop("rendezvous", closer(rdv.Close))
	if ops != nil && rdb != nil {
		ops.AddCheck("rendezvous ("+rdv.Engine()+")", func() error {
			pctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			return rdv.Ping(pctx)
		})
	}
	rdv.Attach(h)

	// Every handler is attached and the directory is open: only now take
	// connections, so no client is told "protocol not supported".
	if err := node.Listen(ctx); err != nil {
		return fmt.Errorf("libp2p host: %w", err)
	}
	printAddresses(stdout, node, h.ID())
	if ops != nil {
		ops.SetStarted(true)
	}
	log.Info("dusk-relay ready", zap.Stringer("peer_id", h.ID()))

	<-ctx.Done()
	log.Info("shutting down", zap.NamedError("reason", context.Cause(ctx)))
	if ops != nil {
		ops.SetStarted(false)
	}
	return nil
}

// stopWithin runs stop but gives up when ctx ends, so one stuck Close
// cannot hold SIGTERM past ShutdownTimeout.
func stopWithin(ctx context.Context, stop func(context.Context) error) error {
	done := make(chan error, 1)
	go func() { done <- stop(ctx) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("gave up waiting: %w", ctx.Err())
	}
}

func printAddresses(w io.Writer, node *p2p.Node, id peer.ID) {
	// The IPv4 listener's port; with port 0 (tests) v6 gets another one.
	port := "0"
	for _, a := range node.ListenAddrs() {
		p, err := a.ValueForProtocol(ma.P_TCP)
		if err != nil {
			continue
		}
		if _, v4 := a.ValueForProtocol(ma.P_IP4); v4 == nil {
			port = p
			break
		}
		if port == "0" {
			port = p
		}
	}
	fmt.Fprintf(w, "relay address: /ip4/0.0.0.0/tcp/%s/p2p/%s\n", port, id)
	for _, a := range node.AnnouncedAddrs() {
		fmt.Fprintf(w, "announced address: %s/p2p/%s\n", a, id)
	}
}

// logStartup records the effective configuration; secrets are redacted.
func logStartup(log *zap.Logger, cfg *config.Config, version string) {
	secret := "generated (persisted in data dir)"
	if cfg.Secret != "" {
		secret = "set (redacted)"
	}
	klipy := "unset"
	if cfg.KlipyAPIKey != "" {
		klipy = "set (redacted)"
	}
	log.Info("dusk-relay starting",
		zap.String("version", version),
		zap.String("data_dir", cfg.DataDir),
		zap.Uint16("port", cfg.Port),
		zap.Int("max_connections", cfg.MaxConns),
		zap.Int("peer_relays", len(cfg.PeerRelays)),
		zap.Bool("turn_enabled", bool(cfg.TURN.Enabled)),
		zap.String("turn_public_ip", cfg.PublicIP),
		zap.String("turn_host", cfg.CredentialHost()),
		zap.Uint16("turn_udp_port", cfg.UDPPort),
		zap.Uint16("turn_tcp_port", cfg.TCPPort),
		zap.String("turn_secret", secret),
		zap.String("klipy_api_key", klipy),
		zap.String("metrics_addr", cfg.MetricsAddr),
		zap.String("directory", cfg.DirectoryEngine()),
		zap.String("directory_url", config.RedactURL(cfg.DirectoryURL)),
		zap.String("rendezvous", cfg.RendezvousEngine()),
		zap.String("redis_url", config.RedactURL(cfg.RedisURL)),
	)
}
