package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	ma "github.com/multiformats/go-multiaddr"
)

// FuzzMultiaddrList: Decode never panics; every address it accepts prints
// to text that parses back to the same address and has host names only
// where a host name belongs (regression seed: "/dns/0 /", a DNS name with
// a trailing space, used to be accepted).
func FuzzMultiaddrList(f *testing.F) {
	for _, s := range []string{
		"", ",", "/ip4/1.2.3.4/tcp/4001", "/dns4/relay.example.org/tcp/4001, /ip6/::1/tcp/1",
		"/ip4/1.2.3.4/tcp", "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN",
		"/p2p-circuit", "/unix/tmp/x", "/ip6zone/x/ip6/fe80::1", "/dns/a/tcp/1/ws", "/ipcidr/33",
		"/garlic64/aaaa", "/onion3/vww6ybal4bd7szmgncyruucpgfkqahzddi37ktceo3ah7ngmcopnpyyd:1234",
		"/certhash/uEiD", "/http-path/%2F", "/sni/x", "/memory/1",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		var l MultiaddrList
		if err := l.Decode(v); err != nil {
			return
		}
		for _, a := range l {
			if a == nil || len(a) == 0 {
				t.Fatalf("empty multiaddr from %q", v)
			}
			// Each address prints to text that parses back to it.
			back, err := ma.NewMultiaddr(a.String())
			if err != nil || !back.Equal(a) {
				t.Fatalf("%q: %s does not round-trip (%v)", v, a, err)
			}
			if err := checkHostnames(back); err != nil {
				t.Fatalf("%q: accepted %s: %v", v, a, err)
			}
		}
	})
}

// FuzzPrefixList: Decode never panics; every prefix it returns is valid
// and masked, a bare address is a host prefix, and the printed list
// decodes to the same prefixes.
func FuzzPrefixList(f *testing.F) {
	for _, s := range []string{
		"", "127.0.0.0/8", "10.1.2.3", "::1", "::ffff:10.0.0.0/104", "fe80::1%eth0", "fe80::/10, 1.2.3.4/32",
		"127.0.0.0/99", "1.2.3.4/-1", "1.2.3.4/", "/8", "01.2.3.4/8", "::ffff:1.2.3.4", ",,,",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		var l PrefixList
		if err := l.Decode(v); err != nil {
			return
		}
		parts := make([]string, len(l))
		for i, p := range l {
			if !p.IsValid() || p != p.Masked() {
				t.Fatalf("%q: prefix %v not valid and masked", v, p)
			}
			parts[i] = p.String()
		}
		var again PrefixList
		if err := again.Decode(strings.Join(parts, ",")); err != nil || !reflect.DeepEqual(again, l) {
			t.Fatalf("%q -> %v -> %v (%v)", v, l, again, err)
		}
	})
}

// fuzzEnv clears every configuration variable for one fuzz input and
// restores the whole process environment afterwards (a fuzzed .env file
// may set any variable).
func fuzzEnv(t *testing.T) {
	before := os.Environ()
	for _, n := range append(Names(), "RUST_LOG", "XDG_DATA_HOME") {
		t.Setenv(n, "")
	}
	t.Setenv("DUSK_TURN_PUBLIC_IP", "203.0.113.7") // skip the interface scan
	t.Cleanup(func() {
		keep := map[string]bool{}
		for _, kv := range before {
			keep[strings.SplitN(kv, "=", 2)[0]] = true
		}
		for _, kv := range os.Environ() {
			if n := strings.SplitN(kv, "=", 2)[0]; !keep[n] {
				_ = os.Unsetenv(n)
			}
		}
	})
}

// checkLoad: Load gives a valid Config or an ErrInvalid error that names
// a variable; never a panic.
func checkLoad(t *testing.T, input string) {
	c, err := Load()
	if err != nil {
		if !errors.Is(err, ErrInvalid) {
			t.Fatalf("%q: error is not ErrInvalid: %v", input, err)
		}
		named := false
		for _, n := range append(Names(), ".env") {
			named = named || strings.Contains(err.Error(), n)
		}
		if !named {
			t.Fatalf("%q: error names no variable: %v", input, err)
		}
		return
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("%q: Load returned a Config that fails Validate: %v", input, err)
	}
}

// FuzzLoad sets one configuration variable to a fuzzed value.
func FuzzLoad(f *testing.F) {
	f.Chdir(f.TempDir()) // no stray .env
	names := Names()
	for i, v := range []string{"x", "0", "-1", "99999999999999999999", "1h", "-1h", "/ip4/1.2.3.4/tcp",
		"127.0.0.0/99", "off", "json", "trace", "1e3", "0x10", " 5 ", "\t", "65536", "1023", "::1", "http://x"} {
		for j := range names {
			if (i+j)%5 == 0 {
				f.Add(uint8(j), v)
			}
		}
	}
	f.Fuzz(func(t *testing.T, idx uint8, value string) {
		if strings.ContainsRune(value, 0) {
			return // the OS cannot hold it
		}
		fuzzEnv(t)
		name := names[int(idx)%len(names)]
		t.Setenv(name, value)
		checkLoad(t, name+"="+value)
	})
}

// FuzzDotEnv writes a fuzzed .env file and loads it.
func FuzzDotEnv(f *testing.F) {
	dir := f.TempDir()
	f.Chdir(dir)
	for _, s := range []string{
		"DUSK_RELAY_PORT=4002\n", "DUSK_RELAY_PORT=\"x\"\n", "export DUSK_LOG_FORMAT=json # c\n",
		"DUSK_TURN_SECRET='a b'\nDUSK_TURN_REALM=\"multi\nline\"\n", "=", "A", "\"", "X=${Y}", "X=\\",
		"DUSK_TURN_ALLOW_PEERS=10.0.0.0/8,::1\n", "DUSK_RELAY_EXTERNAL_ADDR=/ip4/1.2.3.4/tcp/1\r\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, content string) {
		fuzzEnv(t)
		if err := os.WriteFile(filepath.Join(dir, ".env"), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		checkLoad(t, content)
	})
}

func TestMultiaddrHostnames(t *testing.T) {
	for v, ok := range map[string]bool{
		"/dns4/relay.example.org/tcp/4001":                  true,
		"/dns/relay.example.org./tcp/4001":                  true,
		"/dnsaddr/_dnsaddr.example.org":                     true,
		"/dns4/relay.example.org /tcp/4001":                 false,
		"/dns/0 /":                                          false,
		"/dns6/a..b/tcp/1":                                  false,
		"/dns4/" + strings.Repeat("a", 64) + ".org/tcp/1":   false,
		"/dns4/ünïcode.example/tcp/1":                       false,
		"/ip4/1.2.3.4/tcp/1/tls/sni/relay.example.org/ws":   true,
		"/ip4/1.2.3.4/tcp/1/tls/sni/relay example.org/ws":   false,
		"/ip4/203.0.113.7/tcp/4001, /dns4/ok.example/tcp/1": true,
		"/ip4/203.0.113.7/tcp/4001, /dns4/bad\tname/tcp/1":  false,
	} {
		var l MultiaddrList
		if err := l.Decode(v); (err == nil) != ok {
			t.Errorf("Decode(%q) = %v, want ok=%v", v, err, ok)
		}
	}
}
