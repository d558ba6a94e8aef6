package p2p

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"

	"github.com/libp2p/go-libp2p/core/protocol"
	circuitproto "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/proto"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

type protocolID = protocol.ID

const hopProto = circuitproto.ProtoIDv2Hop

// publicAddrs turns the operator's public IP / host into multiaddr prefixes
// (without /tcp/<port>, added once the port is known).
func publicAddrs(ip, host string) ([]ma.Multiaddr, error) {
	var out []ma.Multiaddr
	add := func(s string) error {
		if s == "" {
			return nil
		}
		var a ma.Multiaddr
		var err error
		if addr, perr := netip.ParseAddr(s); perr == nil {
			addr = addr.Unmap()
			if addr.Is4() {
				a, err = ma.NewMultiaddr("/ip4/" + addr.String())
			} else {
				a, err = ma.NewMultiaddr("/ip6/" + addr.String())
			}
		} else {
			a, err = ma.NewMultiaddr("/dns4/" + s)
		}
		if err != nil {
			return fmt.Errorf("p2p: public address %q: %w", s, err)
		}
		if !slices.ContainsFunc(out, a.Equal) {
			out = append(out, a)
		}
		return nil
	}
	if err := add(ip); err != nil {
		return nil, err
	}
	if err := add(host); err != nil {
		return nil, err
	}
	return out, nil
}

// announce is the host's address factory: DUSK_RELAY_EXTERNAL_ADDR alone
// when set; otherwise the operator's public IP/host on our port plus the
// listen addresses (unspecified ones expanded to interface addresses,
// loopback and private included, as go-libp2p passes them in).
func (n *Node) announce(in []ma.Multiaddr) []ma.Multiaddr {
	if len(n.cfg.ExternalAddrs) > 0 {
		return slices.Clone(n.cfg.ExternalAddrs)
	}
	out := make([]ma.Multiaddr, 0, len(n.public)+len(in))
	if port := n.listenPort.Load(); port != 0 {
		tcp := ma.StringCast("/tcp/" + strconv.FormatUint(uint64(port), 10))
		for _, p := range n.public {
			out = append(out, p.Encapsulate(tcp))
		}
	}
	return append(out, in...)
}

// reservable is the relay's reservation address filter. go-libp2p's default
// (manet.IsPublicAddr) drops loopback/private/DNS-less addresses and so
// leaves rust clients with an empty list on LAN or local setups; everything
// the address factory announces is meant to be handed out.
func reservable(a ma.Multiaddr) bool {
	if _, err := a.ValueForProtocol(ma.P_CIRCUIT); err == nil {
		return false
	}
	return !manet.IsIPUnspecified(a)
}

func tcpPort(a ma.Multiaddr) (int, error) {
	v, err := a.ValueForProtocol(ma.P_TCP)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(v)
}
