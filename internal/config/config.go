// Package config holds the one Config struct of the daemon, filled from the
// environment by envconfig and validated once at start.
package config

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/joho/godotenv"
	"github.com/kelseyhightower/envconfig"
	ma "github.com/multiformats/go-multiaddr"
)

// federationTopic is the relays' own gossip topic (only peer relays may
// publish there), never a forwarded client topic.
const federationTopic = "dusk/relay/federation"

// ErrInvalid marks configuration errors; main exits 2 on it.
var ErrInvalid = errors.New("invalid configuration")

// Error names the offending variable.
type Error struct {
	Var   string
	Value string
	Err   error
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s=%q: %v", e.Var, e.Value, e.Err)
}

func (e *Error) Unwrap() []error { return []error{ErrInvalid, e.Err} }

// Config is the whole daemon configuration. Sections are embedded so that
// envconfig sees the full variable names (no prefix fallbacks) while each
// capability receives only its own section.
type Config struct {
	Log
	Relay
	Rendezvous
	TURN
	Gif
	Directory
	Metrics
}

// Log configures logging.
type Log struct {
	LogLevel  string `envconfig:"DUSK_LOG_LEVEL" desc:"log level: error, warn, info, debug, trace (RUST_LOG accepted as fallback; default info)"`
	LogFormat string `envconfig:"DUSK_LOG_FORMAT" default:"console" desc:"log format: console or json"`
	// DataDir holds the keypair, turn_secret and directory.sqlite3.
	DataDir string `envconfig:"DUSK_DATA_DIR" desc:"data directory (default $XDG_DATA_HOME/dusk-relay, else ~/.local/share/dusk-relay, else .)"`
}

// Relay configures the libp2p host and circuit relay v2 service.
type Relay struct {
	Port                   uint16        `envconfig:"DUSK_RELAY_PORT" default:"4001" desc:"libp2p TCP port (listens on 0.0.0.0 and ::)"`
	ListenAddrs            MultiaddrList `envconfig:"DUSK_RELAY_LISTEN_ADDRS" desc:"comma list of listen multiaddrs; overrides DUSK_RELAY_PORT (e.g. /ip4/127.0.0.1/tcp/4001)"`
	ExternalAddrs          MultiaddrList `envconfig:"DUSK_RELAY_EXTERNAL_ADDR" desc:"comma list of multiaddrs to announce (e.g. /dns4/relay.example.org/tcp/4001)"`
	MaxConns               int           `envconfig:"DUSK_MAX_CONNECTIONS" default:"10000" desc:"max established connections"`
	PeerRelays             MultiaddrList `envconfig:"DUSK_PEER_RELAYS" desc:"comma list of the cluster's other relays (multiaddrs with /p2p/): federation, and the circuit mesh with DUSK_REDIS_URL; every relay lists every other"`
	GossipClientTopics     TopicList     `envconfig:"DUSK_GOSSIP_CLIENT_TOPICS" default:"dusk/directory,dusk/sync" desc:"comma list of client gossipsub topics the relay subscribes and forwards (empty or off: none)"`
	GossipClientBPS        int64         `envconfig:"DUSK_GOSSIP_CLIENT_BYTES_PER_SEC" default:"262144" desc:"client-topic bytes/s forwarded per sender address (IPv4 /32, IPv6 /56), 32 s burst, a message counting at least 1 KiB; excess not forwarded (0: no limit)"`
	MaxConnsPerIP          int           `envconfig:"DUSK_MAX_CONNECTIONS_PER_IP" default:"64" desc:"max libp2p connections per IPv4 address or IPv6 /56 (4x that per /48); 127.0.0.1 and ::1 are exempt"`
	IdleConnTimeout        time.Duration `envconfig:"DUSK_IDLE_CONNECTION_TIMEOUT" default:"5m" desc:"close an inbound libp2p connection after this long without a stream while its peer holds no reservation (0 = never)"`
	MaxReservations        int           `envconfig:"DUSK_RELAY_MAX_RESERVATIONS" desc:"relay v2: max reservations in total (default: DUSK_MAX_CONNECTIONS; the Rust relay used 128)"`
	MaxReservationsPerPeer int           `envconfig:"DUSK_RELAY_MAX_RESERVATIONS_PER_PEER" default:"4" desc:"relay v2: max reservations per peer"`
	MaxCircuits            int           `envconfig:"DUSK_RELAY_MAX_CIRCUITS" desc:"relay v2: max relayed circuits in total (default: DUSK_MAX_CONNECTIONS / 8, at least 16; the Rust relay used 16)"`
	MaxCircuitsPerPeer     int           `envconfig:"DUSK_RELAY_MAX_CIRCUITS_PER_PEER" default:"4" desc:"relay v2: max circuits per peer"`
	CircuitDuration        time.Duration `envconfig:"DUSK_RELAY_CIRCUIT_DURATION" default:"2m" desc:"relay v2: max circuit duration (0 = unlimited)"`
	CircuitBytes           int64         `envconfig:"DUSK_RELAY_CIRCUIT_BYTES" default:"131072" desc:"relay v2: max bytes relayed per circuit direction (0 = unlimited)"`
	ReservationTTL         time.Duration `envconfig:"DUSK_RELAY_RESERVATION_TTL" default:"1h" desc:"relay v2: reservation lifetime"`
}

// Rendezvous bounds the rendezvous server.
type Rendezvous struct {
	MinTTL      time.Duration `envconfig:"DUSK_RENDEZVOUS_MIN_TTL" default:"2h" desc:"rendezvous: min registration TTL"`
	MaxTTL      time.Duration `envconfig:"DUSK_RENDEZVOUS_MAX_TTL" default:"72h" desc:"rendezvous: max registration TTL"`
	MaxDiscover int           `envconfig:"DUSK_RENDEZVOUS_MAX_DISCOVER" default:"1000" desc:"rendezvous: max registrations per discover response"`
	MaxBytes    int64         `envconfig:"DUSK_RENDEZVOUS_MAX_BYTES" default:"134217728" desc:"rendezvous: memory budget for live registrations in bytes (when full, the largest holder's oldest registrations are evicted)"`
	// Per-peer and per-address budgets: identities are free, addresses
	// are not, so no handful of addresses can take the whole budget.
	MaxPerPeer      int   `envconfig:"DUSK_RENDEZVOUS_MAX_PER_PEER" default:"256" desc:"rendezvous: max live registrations per peer (a Dusk client uses 2 + one per community)"`
	MaxBytesPerPeer int64 `envconfig:"DUSK_RENDEZVOUS_MAX_BYTES_PER_PEER" default:"262144" desc:"rendezvous: max bytes of live registrations per peer"`
	MaxBytesPerAddr int64 `envconfig:"DUSK_RENDEZVOUS_MAX_BYTES_PER_ADDR" default:"4194304" desc:"rendezvous: max bytes of live registrations per source address (IPv4) or /56 (IPv6)"`
	DiscoverAll     bool  `envconfig:"DUSK_RENDEZVOUS_DISCOVER_ALL" default:"false" desc:"rendezvous: answer discover requests without a namespace (every registration to anyone; Dusk clients never need it)"`
	// RedisURL puts the rendezvous registrations and the reservation
	// records in Redis, shared by the relays of a cluster.
	RedisURL string `envconfig:"DUSK_REDIS_URL" desc:"rendezvous registrations and reservation records in Redis, shared by a cluster's relays: redis://[user:password@]host:6379[/db] or rediss://; a Redis Cluster: redis://host1:6379?addr=host2:6379 (unset: in memory)"`
}

// minTURNBPS is the smallest DUSK_TURN_MAX_BPS accepted: an Opus voice
// stream with its RTP/SRTP overhead needs ~8 KB/s.
const minTURNBPS = 8000

// MinTURNSecret is the shortest DUSK_TURN_SECRET accepted, in bytes: the
// HMAC key of every TURN credential, so it must not be guessable.
const MinTURNSecret = 16

// TURN configures the in-process TURN/STUN server and the credentials it accepts.
type TURN struct {
	Enabled        Switch        `envconfig:"DUSK_TURN_ENABLED" default:"true" desc:"TURN server on; only false or 0 disable"`
	PublicIP       string        `envconfig:"DUSK_TURN_PUBLIC_IP" desc:"relayed-address IP given to clients (default: first non-loopback IPv4, with a warning)"`
	PublicHost     string        `envconfig:"DUSK_TURN_PUBLIC_HOST" desc:"host in credential URIs (default DUSK_TURN_PUBLIC_IP, else relay.duskchat.app)"`
	Secret         string        `envconfig:"DUSK_TURN_SECRET" desc:"HMAC shared secret, at least 16 bytes (default: random, persisted to <data dir>/turn_secret)"`
	ListenIP       string        `envconfig:"DUSK_TURN_LISTEN_IP" default:"0.0.0.0" desc:"IP the TURN listeners bind to"`
	UDPPort        uint16        `envconfig:"DUSK_TURN_UDP_PORT" default:"3478" desc:"TURN/STUN UDP port"`
	TCPPort        uint16        `envconfig:"DUSK_TURN_TCP_PORT" default:"3478" desc:"TURN/STUN TCP port"`
	Realm          string        `envconfig:"DUSK_TURN_REALM" default:"duskchat.app" desc:"TURN realm"`
	PortRangeStart uint16        `envconfig:"DUSK_TURN_PORT_RANGE_START" default:"49152" desc:"first relay port (>= 1024)"`
	PortRangeEnd   uint16        `envconfig:"DUSK_TURN_PORT_RANGE_END" default:"65535" desc:"last relay port (>= start)"`
	MaxAllocations int           `envconfig:"DUSK_TURN_MAX_ALLOCATIONS" default:"1000" desc:"max TURN allocations in total"`
	MaxPerUser     int           `envconfig:"DUSK_TURN_MAX_PER_USER" default:"10" desc:"max TURN allocations per peer ID"`
	MaxPerIP       int           `envconfig:"DUSK_TURN_MAX_PER_IP" default:"40" desc:"max TURN allocations per client address prefix (/32 IPv4, /56 IPv6)"`
	MaxBPS         int           `envconfig:"DUSK_TURN_MAX_BPS" default:"1000000" desc:"max relayed bytes/s per TURN allocation in each direction (0: no limit)"`
	CredentialTTL  time.Duration `envconfig:"DUSK_TURN_CREDENTIAL_TTL" default:"24h" desc:"lifetime of issued TURN credentials"`
	AllowPeers     PrefixList    `envconfig:"DUSK_TURN_ALLOW_PEERS" desc:"comma list of CIDRs TURN may relay to despite the built-in deny list"`
	DenyPeers      PrefixList    `envconfig:"DUSK_TURN_DENY_PEERS" desc:"comma list of extra CIDRs TURN must not relay to"`
	UDPThreads     int           `envconfig:"DUSK_TURN_UDP_THREADS" desc:"UDP sockets on the TURN port with SO_REUSEPORT (default: number of CPUs)"`

	// PublicIPGuessed is set by Load when PublicIP was derived, so the
	// daemon can warn once at start.
	PublicIPGuessed bool `ignored:"true"`
}

// Gif configures the /dusk/gif/1.0.0 upstream.
type Gif struct {
	KlipyAPIKey                 string `envconfig:"KLIPY_API_KEY" desc:"Klipy API key (unset: gif searches return empty results)"`
	KlipyTestKey                Flag   `envconfig:"KLIPY_TEST_KEY" desc:"true or 1: test key, at most 100 upstream calls per 60 s"`
	GifAPIBase                  string `envconfig:"DUSK_GIF_API_BASE" default:"https://api.klipy.com/v2" desc:"Klipy API base URL"`
	GifCacheBytes               int64  `envconfig:"DUSK_GIF_CACHE_BYTES" default:"16777216" desc:"gif: result cache budget in bytes (oldest entries go first beyond it)"`
	GifUpstreamPerMinute        int    `envconfig:"DUSK_GIF_UPSTREAM_PER_MINUTE" default:"600" desc:"gif: Klipy calls (cache misses) allowed per minute in total (burst a tenth); KLIPY_TEST_KEY still caps at 100 per 60 s"`
	GifUpstreamPerPeerPerMinute int    `envconfig:"DUSK_GIF_UPSTREAM_PER_PEER_PER_MINUTE" default:"30" desc:"gif: Klipy calls one peer may cause per minute (burst the same; ten times that per source address, IPv4 /32 or IPv6 /56)"`
}

// Directory configures the profile directory.
type Directory struct {
	DirectoryRegisterPerMinute        int           `envconfig:"DUSK_DIRECTORY_REGISTER_PER_MINUTE" default:"30" desc:"directory: Register requests allowed per peer per minute (burst the same)"`
	DirectoryRegisterPerAddrPerMinute int           `envconfig:"DUSK_DIRECTORY_REGISTER_PER_ADDR_PER_MINUTE" default:"120" desc:"directory: profile writes allowed per source address (IPv4 /32, IPv6 /56) per minute (burst the same); unchanged refreshes are not writes"`
	DirectorySearchPerMinute          int           `envconfig:"DUSK_DIRECTORY_SEARCH_PER_MINUTE" default:"60" desc:"directory: Search requests allowed per peer per minute (burst the same; ten times that per source address)"`
	DirectoryMaxRows                  int64         `envconfig:"DUSK_DIRECTORY_MAX_ROWS" default:"1000000" desc:"directory: most profiles kept; beyond it the profiles seen longest ago are evicted"`
	DirectoryExpiry                   time.Duration `envconfig:"DUSK_DIRECTORY_EXPIRY" default:"720h" desc:"directory: profiles not refreshed for this long are deleted (clients refresh every 2 min while online)"`
	// DirectoryURL puts the directory in PostgreSQL, shared by the relays
	// of a cluster; unset, it is the SQLite file in the data dir.
	DirectoryURL string `envconfig:"DUSK_DIRECTORY_URL" desc:"directory in PostgreSQL, shared by a cluster's relays: postgres://user:password@host:5432/db (unset: SQLite file in the data dir)"`
}

// Metrics configures the HTTP operations endpoint.
type Metrics struct {
	MetricsAddr string `envconfig:"DUSK_METRICS_ADDR" default:"127.0.0.1:9464" desc:"HTTP listen address for /metrics, /healthz, /readyz (off disables)"`
}

// MetricsEnabled reports whether the HTTP endpoint should run.
func (m Metrics) MetricsEnabled() bool { return m.MetricsAddr != "off" }

// Load reads .env (if present in the working directory), then the process
// environment, applies defaults and validates.
func Load() (*Config, error) {
	dropEmpty()
	if err := godotenv.Load(); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: .env: %w", ErrInvalid, err)
	}
	dropEmpty()
	var c Config
	if err := envconfig.Process("", &c); err != nil {
		var pe *envconfig.ParseError
		if errors.As(err, &pe) {
			return nil, &Error{Var: pe.KeyName, Value: pe.Value, Err: unwrapParse(pe.Err)}
		}
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if c.LogLevel == "" {
		c.LogLevel = os.Getenv("RUST_LOG")
		if c.LogLevel == "" {
			c.LogLevel = "info"
		}
	}
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir()
	}
	if c.MaxReservations == 0 {
		// Every Dusk client reserves a slot: every connected client can be reachable.
		c.MaxReservations = c.MaxConns
	}
	if c.MaxCircuits == 0 {
		c.MaxCircuits = DefaultMaxCircuits(c.MaxConns)
	}
	if c.UDPThreads == 0 {
		c.UDPThreads = runtime.NumCPU()
	}
	if c.PublicIP == "" {
		c.PublicIP = guessPublicIP()
		c.PublicIPGuessed = true
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

func unwrapParse(err error) error {
	// strconv errors repeat the value; keep their reason only.
	var ne interface{ Unwrap() error }
	if errors.As(err, &ne) && ne.Unwrap() != nil {
		return ne.Unwrap()
	}
	return err
}

// Validate checks cross-field rules. Every error names its variable.
func (c *Config) Validate() error {
	bad := func(name, value, format string, a ...any) error {
		return &Error{Var: name, Value: value, Err: fmt.Errorf(format, a...)}
	}
	switch strings.ToLower(c.LogLevel) {
	case "error", "warn", "info", "debug", "trace":
	default:
		return bad("DUSK_LOG_LEVEL", c.LogLevel, "want error, warn, info, debug or trace")
	}
	if c.LogFormat != "console" && c.LogFormat != "json" {
		return bad("DUSK_LOG_FORMAT", c.LogFormat, "want console or json")
	}
	if c.MaxConns < 1 {
		return bad("DUSK_MAX_CONNECTIONS", fmt.Sprint(c.MaxConns), "must be >= 1")
	}
	for _, p := range c.PeerRelays {
		if _, err := p.ValueForProtocol(ma.P_P2P); err != nil {
			return bad("DUSK_PEER_RELAYS", p.String(), "peer relay address needs a /p2p/<peer id> component")
		}
	}
	if slices.Contains(c.GossipClientTopics, federationTopic) {
		return bad("DUSK_GOSSIP_CLIENT_TOPICS", federationTopic, "the federation topic is not a client topic")
	}
	// The 32 s burst must hold one 64 KiB message.
	if c.GossipClientBPS != 0 && c.GossipClientBPS < 2048 {
		return bad("DUSK_GOSSIP_CLIENT_BYTES_PER_SEC", fmt.Sprint(c.GossipClientBPS), "must be 0 (no limit) or >= 2048")
	}
	for name, v := range map[string]int{
		"DUSK_RELAY_MAX_RESERVATIONS":                 c.MaxReservations,
		"DUSK_MAX_CONNECTIONS_PER_IP":                 c.MaxConnsPerIP,
		"DUSK_RELAY_MAX_RESERVATIONS_PER_PEER":        c.MaxReservationsPerPeer,
		"DUSK_RELAY_MAX_CIRCUITS":                     c.MaxCircuits,
		"DUSK_RELAY_MAX_CIRCUITS_PER_PEER":            c.MaxCircuitsPerPeer,
		"DUSK_RENDEZVOUS_MAX_DISCOVER":                c.MaxDiscover,
		"DUSK_RENDEZVOUS_MAX_PER_PEER":                c.Rendezvous.MaxPerPeer,
		"DUSK_TURN_MAX_ALLOCATIONS":                   c.MaxAllocations,
		"DUSK_TURN_MAX_PER_USER":                      c.MaxPerUser,
		"DUSK_TURN_MAX_PER_IP":                        c.MaxPerIP,
		"DUSK_TURN_UDP_THREADS":                       c.UDPThreads,
		"DUSK_DIRECTORY_REGISTER_PER_MINUTE":          c.DirectoryRegisterPerMinute,
		"DUSK_DIRECTORY_REGISTER_PER_ADDR_PER_MINUTE": c.DirectoryRegisterPerAddrPerMinute,
		"DUSK_DIRECTORY_SEARCH_PER_MINUTE":            c.DirectorySearchPerMinute,
		"DUSK_GIF_UPSTREAM_PER_MINUTE":                c.GifUpstreamPerMinute,
		"DUSK_GIF_UPSTREAM_PER_PEER_PER_MINUTE":       c.GifUpstreamPerPeerPerMinute,
	} {
		if v < 1 {
			return bad(name, fmt.Sprint(v), "must be >= 1")
		}
	}
	if c.Rendezvous.MaxBytes < 1<<20 {
		return bad("DUSK_RENDEZVOUS_MAX_BYTES", fmt.Sprint(c.Rendezvous.MaxBytes), "must be >= 1048576")
	}
	// One registration of the largest record (4 KiB) must fit in every budget.
	if c.MaxBytesPerPeer < 16<<10 {
		return bad("DUSK_RENDEZVOUS_MAX_BYTES_PER_PEER", fmt.Sprint(c.MaxBytesPerPeer), "must be >= 16384")
	}
	// Above DUSK_RENDEZVOUS_MAX_BYTES it is capped there (the server
	// does it), so lowering the total alone stays valid.
	if c.MaxBytesPerAddr < c.MaxBytesPerPeer {
		return bad("DUSK_RENDEZVOUS_MAX_BYTES_PER_ADDR", fmt.Sprint(c.MaxBytesPerAddr),
			"must be >= DUSK_RENDEZVOUS_MAX_BYTES_PER_PEER (%d)", c.MaxBytesPerPeer)
	}
	if c.CircuitDuration < 0 {
		return bad("DUSK_RELAY_CIRCUIT_DURATION", c.CircuitDuration.String(), "must not be negative")
	}
	if c.CircuitBytes < 0 {
		return bad("DUSK_RELAY_CIRCUIT_BYTES", fmt.Sprint(c.CircuitBytes), "must not be negative")
	}
	if c.IdleConnTimeout < 0 {
		return bad("DUSK_IDLE_CONNECTION_TIMEOUT", c.IdleConnTimeout.String(), "must not be negative")
	}
	if c.ReservationTTL <= 0 {
		return bad("DUSK_RELAY_RESERVATION_TTL", c.ReservationTTL.String(), "must be positive")
	}
	if c.MinTTL <= 0 {
		return bad("DUSK_RENDEZVOUS_MIN_TTL", c.MinTTL.String(), "must be positive")
	}
	if c.MaxTTL < c.MinTTL {
		return bad("DUSK_RENDEZVOUS_MAX_TTL", c.MaxTTL.String(), "must be >= DUSK_RENDEZVOUS_MIN_TTL")
	}
	if ip, err := netip.ParseAddr(c.PublicIP); err != nil {
		return bad("DUSK_TURN_PUBLIC_IP", c.PublicIP, "not an IP address")
	} else if bool(c.TURN.Enabled) && !ip.Unmap().Is4() {
		// pion/turn opens IPv4 relay sockets only.
		return bad("DUSK_TURN_PUBLIC_IP", c.PublicIP, "must be an IPv4 address while TURN is enabled")
	}
	// Only while TURN is on: the secret is used by nothing else. Its
	// value is never echoed (Error prints Value), only its length.
	if bool(c.TURN.Enabled) && c.Secret != "" && len(c.Secret) < MinTURNSecret {
		return bad("DUSK_TURN_SECRET", fmt.Sprintf("<%d bytes>", len(c.Secret)),
			"must be at least %d bytes (e.g. openssl rand -hex 32): anyone could guess a shorter one and mint TURN credentials", MinTURNSecret)
	}
	if _, err := netip.ParseAddr(c.ListenIP); err != nil {
		return bad("DUSK_TURN_LISTEN_IP", c.ListenIP, "not an IP address")
	}
	if c.PortRangeStart < 1024 {
		return bad("DUSK_TURN_PORT_RANGE_START", fmt.Sprint(c.PortRangeStart), "must be >= 1024")
	}
	if c.PortRangeEnd < c.PortRangeStart {
		return bad("DUSK_TURN_PORT_RANGE_END", fmt.Sprint(c.PortRangeEnd), "must be >= DUSK_TURN_PORT_RANGE_START")
	}
	if c.CredentialTTL < time.Second {
		return bad("DUSK_TURN_CREDENTIAL_TTL", c.CredentialTTL.String(), "must be >= 1s")
	}
	if c.MaxBPS != 0 && c.MaxBPS < minTURNBPS {
		// Below a voice call's rate the limit only breaks calls.
		return bad("DUSK_TURN_MAX_BPS", fmt.Sprint(c.MaxBPS), "must be 0 (no limit) or >= %d", minTURNBPS)
	}
	if c.Realm == "" {
		return bad("DUSK_TURN_REALM", c.Realm, "must not be empty")
	}
	if !strings.HasPrefix(c.GifAPIBase, "http://") && !strings.HasPrefix(c.GifAPIBase, "https://") {
		return bad("DUSK_GIF_API_BASE", c.GifAPIBase, "want an http(s) URL")
	}
	if c.GifCacheBytes < 64<<10 {
		return bad("DUSK_GIF_CACHE_BYTES", fmt.Sprint(c.GifCacheBytes), "must be >= 65536")
	}
	if c.DirectoryMaxRows < 1 {
		return bad("DUSK_DIRECTORY_MAX_ROWS", fmt.Sprint(c.DirectoryMaxRows), "must be >= 1")
	}
	if c.DirectoryExpiry < time.Hour {
		// Must stay far above the clients' 2-minute refresh.
		return bad("DUSK_DIRECTORY_EXPIRY", c.DirectoryExpiry.String(), "must be >= 1h")
	}
	if err := validateEngineURL("DUSK_DIRECTORY_URL", c.DirectoryURL, "postgres", "postgresql"); err != nil {
		return err
	}
	if err := validateEngineURL("DUSK_REDIS_URL", c.RedisURL, "redis", "rediss"); err != nil {
		return err
	}
	if c.RedisURL != "" && c.DiscoverAll {
		// Ids are counted per namespace so that Redis Cluster can shard by
		// namespace: there is no order across namespaces to page in.
		return bad("DUSK_RENDEZVOUS_DISCOVER_ALL", "true", "not supported with DUSK_REDIS_URL")
	}
	if c.MetricsEnabled() {
		if _, _, err := net.SplitHostPort(c.MetricsAddr); err != nil {
			return bad("DUSK_METRICS_ADDR", c.MetricsAddr, "want host:port or off")
		}
	}
	return nil
}

// CredentialHost is the host put in TURN URIs.
func (t TURN) CredentialHost() string {
	if t.PublicHost != "" {
		return t.PublicHost
	}
	if t.PublicIP != "" && !t.PublicIPGuessed {
		return t.PublicIP
	}
	return "relay.duskchat.app"
}

// DefaultDataDir follows the Rust relay (directories::ProjectDirs data_dir)
// so an existing installation is found without configuration.
func DefaultDataDir() string {
	if x := os.Getenv("XDG_DATA_HOME"); x != "" && runtime.GOOS != "darwin" {
		return filepath.Join(x, "dusk-relay")
	}
	home, err := os.UserHomeDir()
	if err != nil || home == "" {
		return "."
	}
	if runtime.GOOS == "darwin" {
		return filepath.Join(home, "Library", "Application Support", "dusk-relay")
	}
	return filepath.Join(home, ".local", "share", "dusk-relay")
}

func guessPublicIP() string {
	addrs, err := net.InterfaceAddrs()
	if err == nil {
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
				return n.IP.String()
			}
		}
	}
	return "127.0.0.1"
}

// Names lists every variable of Config (envconfig names), in declaration order.
func Names() []string {
	var out []string
	walkFields(reflect.TypeOf(Config{}), func(f reflect.StructField) {
		out = append(out, f.Tag.Get("envconfig"))
	})
	return out
}

func walkFields(t reflect.Type, fn func(reflect.StructField)) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if f.Anonymous && f.Type.Kind() == reflect.Struct {
			walkFields(f.Type, fn)
			continue
		}
		if f.Tag.Get("envconfig") != "" {
			fn(f)
		}
	}
}

// dropEmpty unsets known variables whose value is empty: an empty value
// means "unset" (the Rust relay treated it as set, which broke defaults).
func dropEmpty() {
	for _, n := range append(Names(), "RUST_LOG") {
		if n == "DUSK_GOSSIP_CLIENT_TOPICS" {
			continue // empty is a value there: forward no client topic
		}
		if v, ok := os.LookupEnv(n); ok && strings.TrimSpace(v) == "" {
			_ = os.Unsetenv(n)
		}
	}
}

// PrintHelp writes every variable with its default and meaning.
func PrintHelp(w io.Writer) error {
	const format = `dusk-relay: Dusk relay daemon (libp2p circuit relay v2, rendezvous, TURN, directory, gif).

Usage:
  dusk-relay               run the relay
  dusk-relay healthcheck   exit 0 if /readyz answers OK on DUSK_METRICS_ADDR
  dusk-relay import-directory <directory.sqlite3>
                           copy a relay's directory file into the PostgreSQL
                           directory of DUSK_DIRECTORY_URL (safe to repeat)
  dusk-relay --version     print the version
  dusk-relay --help        this text

Configuration comes from the environment (a .env file in the working directory
is read first; real environment variables win; empty values count as unset):

VARIABLE	DEFAULT	MEANING
{{range .}}{{usage_key .}}	{{usage_default .}}	{{usage_description .}}
{{end}}`
	return envconfig.Usagef("", &Config{}, w, format)
}

// DefaultMaxCircuits is DUSK_RELAY_MAX_CIRCUITS when unset. The Rust
// relay's 16 refused circuits from 500 simulated clients (dusk-bench
// clients, 10 % of them in circuit pairs), so the cap follows the
// connections: one client in 8 holding a circuit, at least the Rust value.
func DefaultMaxCircuits(maxConns int) int { return max(16, maxConns/8) }
