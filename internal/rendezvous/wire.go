package rendezvous

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"unicode/utf8"

	crypto_pb "github.com/libp2p/go-libp2p/core/crypto/pb"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/record"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/duskchat/dusk-relay/internal/netkey"
)

// MaxNamespace is the longest namespace in bytes (rust-libp2p MAX_NAMESPACE).
const MaxNamespace = 255

// MaxRecordSize caps a signed peer record. A Dusk client's record (Ed25519
// key, its relay circuit addresses and a few direct ones) is ~450 bytes
// with 8 addresses (TestDuskRecordFitsMaxRecordSize); 4 KiB leaves room
// for ~60 addresses and keeps a peer from parking large records under
// every namespace.
const MaxRecordSize = 4 << 10

var (
	errBadCookie = errors.New("rendezvous: malformed cookie")
	errBadRecord = errors.New("rendezvous: invalid signed peer record")
)

// validNamespace: 1-255 bytes of UTF-8. Rust decodes ns as a String, so a
// non-UTF-8 namespace would make every discover response carrying it
// undecodable for Rust clients.
func validNamespace(ns string) bool {
	return len(ns) >= 1 && len(ns) <= MaxNamespace && utf8.ValidString(ns)
}

// encodeCookie writes rust-libp2p's cookie format: 8-byte big-endian id
// followed by the namespace bytes (nothing for "all namespaces").
func encodeCookie(id uint64, ns string) []byte {
	b := make([]byte, 8, 8+len(ns))
	binary.BigEndian.PutUint64(b, id)
	return append(b, ns...)
}

// decodeCookie parses rust-libp2p's cookie format; ns is "" for an
// all-namespaces cookie.
func decodeCookie(b []byte) (id uint64, ns string, err error) {
	if len(b) < 8 {
		return 0, "", fmt.Errorf("%w: %d bytes", errBadCookie, len(b))
	}
	ns = string(b[8:])
	if len(ns) > MaxNamespace || !utf8.ValidString(ns) {
		return 0, "", fmt.Errorf("%w: bad namespace", errBadCookie)
	}
	return binary.BigEndian.Uint64(b[:8]), ns, nil
}

// rustMultiaddrCodes are the protocol codes rust multiaddr 0.18.2 (the one
// rust-libp2p 0.54 uses) can parse. Rust clients decode every record of a
// discover response and fail the whole response on one bad record, so a
// record with an address Rust cannot parse would hide its whole namespace.
var rustMultiaddrCodes = map[int]bool{
	33: true, 53: true, 54: true, 55: true, 56: true, 480: true, 443: true,
	4: true, 41: true, 276: true, 275: true, 280: true, 466: true, 479: true,
	777: true, 444: true, 445: true, 421: true, 290: true, 460: true,
	461: true, 132: true, 6: true, 448: true, 454: true, 273: true,
	301: true, 400: true, 302: true, 465: true, 477: true, 4770: true,
	478: true, 4780: true, 42: true, 43: true, 446: true, 447: true,
	449: true, 277: true, 281: true,
}

// parseRecord checks a signed peer record the way a Rust client will when
// it reads it back: a valid envelope over a libp2p peer record, signed by
// an Ed25519 key (rust-libp2p 0.54 builds of Dusk enable no other key
// type, and one undecodable record fails the whole discover response),
// whose peer ID is the signing key's, with addresses Rust can parse.
func parseRecord(b []byte) (peer.ID, error) {
	if len(b) == 0 {
		return "", fmt.Errorf("%w: missing", errBadRecord)
	}
	if len(b) > MaxRecordSize {
		return "", fmt.Errorf("%w: %d bytes > %d", errBadRecord, len(b), MaxRecordSize)
	}
	env, rec, err := record.ConsumeEnvelope(b, peer.PeerRecordEnvelopeDomain)
	if err != nil {
		return "", fmt.Errorf("%w: %w", errBadRecord, err)
	}
	pr, ok := rec.(*peer.PeerRecord)
	if !ok {
		return "", fmt.Errorf("%w: not a peer record", errBadRecord)
	}
	if env.PublicKey.Type() != crypto_pb.KeyType_Ed25519 {
		return "", fmt.Errorf("%w: %s key, want Ed25519", errBadRecord, env.PublicKey.Type())
	}
	if !pr.PeerID.MatchesPublicKey(env.PublicKey) {
		return "", fmt.Errorf("%w: peer ID does not match signing key", errBadRecord)
	}
	for _, a := range pr.Addrs {
		bad := 0
		ma.ForEach(a, func(c ma.Component) bool {
			if !rustMultiaddrCodes[c.Code()] {
				bad = c.Code()
				return false
			}
			return true
		})
		if bad != 0 {
			return "", fmt.Errorf("%w: address %s uses protocol %d unknown to rust clients", errBadRecord, a, bad)
		}
	}
	return pr.PeerID, nil
}

// sourcePrefix is the budget key of a connection's remote address
// (netkey.Prefix: IPv4 address, IPv6 /56). Addresses without an IP share
// the zero prefix; 127.0.0.1 and ::1 are budgeted like any address.
func sourcePrefix(a ma.Multiaddr) netip.Prefix {
	p, _ := netkey.FromMultiaddr(a)
	return p
}
