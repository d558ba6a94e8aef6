package config

import (
	"fmt"
	"net/netip"
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
		*l = append(*l, a)
	}
	return nil
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
