package turn

import (
	"testing"

	"github.com/duskchat/dusk-relay/internal/config"
)

// Test helpers for the external test package (e2e_test.go).

func TestingConfig() config.TURN { return testConfig() }

func DialTURN(t testing.TB, network, addr, user, pass string) *client {
	return dialAddr(t, network, addr, user, pass)
}

func RelayBetween(t *testing.T, a, b *client, n int) { relayBetween(t, a, b, n) }

func TURNCode(err error) int { return turnCode(err) }
