package directory

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	ma "github.com/multiformats/go-multiaddr"
)

const (
	// MaxDisplayName is the display-name limit in Unicode code points.
	MaxDisplayName = 64
	// MaxRelayAddr caps relay_addr in bytes. A circuit address
	// (/dns/…/tcp/…/p2p/<relay>/p2p-circuit) is ~150 bytes; 512 leaves room
	// without letting a peer store arbitrary blobs.
	MaxRelayAddr = 512
	// SearchLimit is the most results one Search returns (Rust: LIMIT 20).
	SearchLimit = 20
)

// Typed validation errors. All display-name errors map to the same wire
// text, the only one the Rust relay ever sent for a bad name.
var (
	ErrDisplayNameEmpty   = errors.New("display_name is empty")
	ErrDisplayNameTooLong = errors.New("display_name is longer than 64 characters")
	ErrDisplayNameInvalid = errors.New("display_name contains control characters")
	ErrRelayAddrInvalid   = errors.New("invalid relay_addr")
)

// Wire error texts.
const (
	wireErrDisplayName = "display_name must be 1-64 characters"
	wireErrRelayAddr   = "invalid relay_addr"
	wireErrRateLimited = "rate limited"
	wireErrInternal    = "internal error"
)

// NormalizeDisplayName trims white space (Unicode, like Rust's str::trim)
// and validates the result: 1-64 code points, no control characters.
func NormalizeDisplayName(name string) (string, error) {
	name = strings.TrimFunc(name, unicode.IsSpace)
	if name == "" {
		return "", ErrDisplayNameEmpty
	}
	if !utf8.ValidString(name) {
		return "", ErrDisplayNameInvalid
	}
	if utf8.RuneCountInString(name) > MaxDisplayName {
		return "", ErrDisplayNameTooLong
	}
	for _, r := range name {
		if unicode.IsControl(r) {
			return "", ErrDisplayNameInvalid
		}
	}
	return name, nil
}

// ValidateRelayAddr accepts "" or a parseable multiaddr of at most
// MaxRelayAddr bytes.
func ValidateRelayAddr(addr string) error {
	if addr == "" {
		return nil
	}
	if len(addr) > MaxRelayAddr {
		return fmt.Errorf("%w: %d bytes (max %d)", ErrRelayAddrInvalid, len(addr), MaxRelayAddr)
	}
	if _, err := ma.NewMultiaddr(addr); err != nil {
		return fmt.Errorf("%w: %w", ErrRelayAddrInvalid, err)
	}
	return nil
}

// normalizeQuery trims a search query the same way names are trimmed.
func normalizeQuery(q string) string { return strings.TrimFunc(q, unicode.IsSpace) }
