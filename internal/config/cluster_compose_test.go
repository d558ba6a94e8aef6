package config_test

import (
	"crypto/rand"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"go.yaml.in/yaml/v3"
)

// clusterRelays are the relay services of docker-compose.cluster.yml.
var clusterRelays = []string{"relay-a", "relay-b", "relay-c"}

// clusterEnvBlock is the .env block DOCKER.md ("Running a cluster") tells
// operators to add once they know the peer IDs: the lines setting
// DUSK_PEER_RELAYS_*, with <A>, <B>, <C> for the IDs.
func clusterEnvBlock(t *testing.T) map[string]string {
	t.Helper()
	doc := readRepoFile(t, "DOCKER.md")
	out := map[string]string{}
	for _, line := range strings.Split(doc, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if ok && strings.HasPrefix(k, "DUSK_PEER_RELAYS_") {
			out[k] = v
		}
	}
	if len(out) != len(clusterRelays) {
		t.Fatalf("DOCKER.md: found %d DUSK_PEER_RELAYS_* lines (%v), want %d", len(out), keys(out), len(clusterRelays))
	}
	return out
}

// TestClusterCompose: docker-compose.cluster.yml runs three relays, each
// accepted by config.Load, each with its own ports, volume and metrics
// port, all on the same PostgreSQL, Redis and TURN secret; with the .env
// block of DOCKER.md every relay lists every other (a full mesh: federation
// and the circuit mesh need it) by its compose DNS name, the port it
// listens on and its peer ID, and never itself. Before the IDs are known
// (first start) every relay starts standalone.
func TestClusterCompose(t *testing.T) {
	var cf composeFile
	if err := yaml.Unmarshal([]byte(readRepoFile(t, "docker-compose.cluster.yml")), &cf); err != nil {
		t.Fatalf("docker-compose.cluster.yml: %v", err)
	}
	for _, name := range append(slices.Clone(clusterRelays), "postgres", "redis") {
		if _, ok := cf.Services[name]; !ok {
			t.Fatalf("docker-compose.cluster.yml: no service %s (services: %v)", name, keys(cf.Services))
		}
	}
	ids := map[string]peer.ID{}
	host := map[string]string{
		"DUSK_TURN_PUBLIC_IP": "203.0.113.7", "DUSK_TURN_SECRET": "0123456789abcdef0123",
		"DUSK_POSTGRES_PASSWORD": "pgpass0123", "DUSK_REDIS_PASSWORD": "redispass0123",
	}
	block := clusterEnvBlock(t)
	for i, name := range clusterRelays {
		_, pub, err := crypto.GenerateEd25519Key(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if ids[name], err = peer.IDFromPublicKey(pub); err != nil {
			t.Fatal(err)
		}
		letter := string(rune('A' + i))
		if _, ok := block["DUSK_PEER_RELAYS_"+letter]; !ok {
			t.Fatalf("DOCKER.md has no DUSK_PEER_RELAYS_%s line", letter)
		}
	}
	placeholder := regexp.MustCompile(`<([ABC])>`)
	withIDs := maps(host)
	for k, v := range block {
		withIDs[k] = placeholder.ReplaceAllStringFunc(v, func(m string) string {
			return ids["relay-"+strings.ToLower(m[1:2])].String()
		})
	}

	// First start: no peer relays, every relay standalone.
	for _, name := range clusterRelays {
		run, err := cf.Services[name].resolve(host)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if c := loadWith(t, name+" environment", run.env); len(c.PeerRelays) != 0 {
			t.Fatalf("%s at first start lists peer relays %v", name, c.PeerRelays)
		}
	}

	ports := map[string]string{} // published host port -> service
	volumes := map[string]string{}
	listen := map[string]int{} // relay -> libp2p port
	type member struct {
		svc  string
		port int
		id   string
	}
	peersOf := map[string][]member{}
	var secret, dirURL, redisURL string
	for i, name := range clusterRelays {
		svc := cf.Services[name]
		checkKnownVars(t, name+" environment", svc.Environment)
		run, err := svc.resolve(withIDs)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		c := loadWith(t, name+" environment", run.env)
		listen[name] = int(c.Port)
		if i == 0 {
			secret, dirURL, redisURL = c.Secret, c.DirectoryURL, c.RedisURL
		} else if c.Secret != secret || c.DirectoryURL != dirURL || c.RedisURL != redisURL {
			t.Errorf("%s: TURN secret, DUSK_DIRECTORY_URL or DUSK_REDIS_URL differ from relay-a's: the cluster shares them", name)
		}
		for _, u := range []struct{ raw, svc string }{{c.DirectoryURL, "postgres"}, {c.RedisURL, "redis"}} {
			pu, err := url.Parse(u.raw)
			if err != nil || pu.Hostname() != u.svc {
				t.Errorf("%s: engine URL host %q, want the %s service", name, pu.Hostname(), u.svc)
			}
		}
		checkRelayRange(t, name, c)
		// Published ports: exactly what this relay listens on, numbers kept,
		// metrics on host loopback only, no host port shared with another service.
		metricsPort, _ := metricsPortBeyondLoopback(t, c)
		var got []string
		for _, p := range run.ports {
			got = append(got, p.container.String())
			if p.container.proto == "tcp" && p.container.lo == metricsPort && p.container.hi == metricsPort {
				if a, err := netip.ParseAddr(p.hostIP); err != nil || !a.IsLoopback() {
					t.Errorf("%s publishes metrics on %q; want 127.0.0.1", name, p.hostIP)
				}
			} else if p.host != p.container {
				t.Errorf("%s publishes host %v -> container %v; relay ports must keep their numbers", name, p.host, p.container)
			}
			for port := p.host.lo; port <= p.host.hi; port++ {
				k := p.host.proto + "/" + p.hostIP + "/" + strconv.Itoa(port)
				if other, dup := ports[k]; dup {
					t.Fatalf("host port %s published by %s and %s", k, other, name)
				}
				ports[k] = name
			}
		}
		slices.Sort(got)
		if want := wantPorts(t, c); !slices.Equal(got, want) {
			t.Errorf("%s publishes %v, want %v", name, got, want)
		}
		for _, v := range svc.Volumes {
			src, dst, _ := strings.Cut(v, ":")
			if dst == "/data" {
				if _, ok := cf.Volumes[src]; !ok {
					t.Errorf("%s: volume %s not declared", name, src)
				}
				if other, dup := volumes[src]; dup {
					t.Errorf("%s and %s share the data volume %s (one keypair = one peer ID per relay)", other, name, src)
				}
				volumes[src] = name
			}
		}
		for _, a := range c.PeerRelays {
			info, err := peer.AddrInfoFromP2pAddr(a)
			if err != nil {
				t.Fatalf("%s: peer relay %s: %v", name, a, err)
			}
			host, err := info.Addrs[0].ValueForProtocol(ma.P_DNS4)
			port, err2 := info.Addrs[0].ValueForProtocol(ma.P_TCP)
			if err != nil || err2 != nil {
				t.Fatalf("%s: peer relay %s: want /dns4/<service>/tcp/<port>/p2p/<id>", name, a)
			}
			peersOf[name] = append(peersOf[name], member{svc: host, port: atoi(t, port), id: info.ID.String()})
		}
	}
	if len(volumes) != len(clusterRelays) {
		t.Errorf("data volumes %v: want one per relay", volumes)
	}
	for _, name := range clusterRelays {
		var want []member
		for _, other := range clusterRelays {
			if other != name {
				want = append(want, member{svc: other, port: listen[other], id: ids[other].String()})
			}
		}
		got := slices.Clone(peersOf[name])
		slices.SortFunc(got, func(a, b member) int { return strings.Compare(a.svc, b.svc) })
		if !slices.Equal(got, want) {
			t.Errorf("%s: DUSK_PEER_RELAYS = %+v, want every other relay %+v", name, got, want)
		}
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("not a port: %q", s)
	}
	return n
}
