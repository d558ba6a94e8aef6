package config

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	ma "github.com/multiformats/go-multiaddr"
)

// MultiaddrList is a comma-separated list of multiaddrs.
type MultiaddrList []ma.Multiaddr

// Decode implements envconfig.Decoder.
func (l *MultiaddrList) Decode(v string) error {
	*l = nil
	for _, s := range splitList(v) {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return fmt.Errorf("bad multiaddr %q: %w", s, err)
		}
		if err := checkHostnames(a); err != nil {
			return fmt.Errorf("bad multiaddr %q: %w", s, err)
		}
		*l = append(*l, a)
	}
	return nil
}

// checkHostnames rejects DNS components that are not host names.
// go-multiaddr takes any text there ("/dns4/relay.example.org /tcp/4001"
// parses, with a trailing space in the name), and such an address would
// be announced to every client, which cannot resolve it.
func checkHostnames(a ma.Multiaddr) error {
	var bad error
	ma.ForEach(a, func(c ma.Component) bool {
		switch c.Code() {
		case ma.P_DNS, ma.P_DNS4, ma.P_DNS6, ma.P_DNSADDR, ma.P_SNI:
			if !validHostname(c.Value()) {
				bad = fmt.Errorf("invalid host name %q in /%s", c.Value(), c.Protocol().Name)
				return false
			}
		}
		return true
	})
	return bad
}

// validHostname: 1-253 bytes of dot-separated labels of 1-63 ASCII
// letters, digits, '-' or '_' (a trailing dot is allowed).
func validHostname(h string) bool {
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// PrefixList is a comma-separated list of CIDRs (a bare IP means /32 or /128).
type PrefixList []netip.Prefix

// Decode implements envconfig.Decoder.
func (l *PrefixList) Decode(v string) error {
	*l = nil
	for _, s := range splitList(v) {
		if !strings.Contains(s, "/") {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return fmt.Errorf("bad CIDR %q: %w", s, err)
			}
			*l = append(*l, netip.PrefixFrom(a, a.BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return fmt.Errorf("bad CIDR %q: %w", s, err)
		}
		*l = append(*l, p.Masked())
	}
	return nil
}

// TopicList is a comma-separated list of gossipsub topics; "off" (or an
// empty value) means none.
type TopicList []string

// maxTopics and maxTopicLen bound DUSK_GOSSIP_CLIENT_TOPICS: every topic
// is tracked for every subscribed peer, and Dusk uses two.
const (
	maxTopics   = 16
	maxTopicLen = 256
)

// Decode implements envconfig.Decoder.
func (l *TopicList) Decode(v string) error {
	*l = nil
	if strings.EqualFold(strings.TrimSpace(v), "off") {
		return nil
	}
	for _, s := range splitList(v) {
		if len(s) > maxTopicLen {
			return fmt.Errorf("topic longer than %d bytes", maxTopicLen)
		}
		for i := 0; i < len(s); i++ {
			if s[i] <= ' ' || s[i] >= 0x7f {
				return fmt.Errorf("topic %q: only printable ASCII without spaces", s)
			}
		}
		if !slices.Contains(*l, s) {
			*l = append(*l, s)
		}
	}
	if len(*l) > maxTopics {
		return fmt.Errorf("more than %d topics", maxTopics)
	}
	return nil
}

// Switch is on unless set to false or 0 (the Rust relay's rule).
type Switch bool

// Decode implements envconfig.Decoder.
func (s *Switch) Decode(v string) error {
	v = strings.TrimSpace(strings.ToLower(v))
	*s = Switch(v != "false" && v != "0")
	return nil
}

// Flag is on only when set to true or 1 (the Rust relay's KLIPY_TEST_KEY rule).
type Flag bool

// Decode implements envconfig.Decoder.
func (f *Flag) Decode(v string) error {
	v = strings.TrimSpace(strings.ToLower(v))
	*f = Flag(v == "true" || v == "1")
	return nil
}

func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}
