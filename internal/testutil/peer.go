package testutil

import (
	"crypto/ed25519"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// FixedKey returns a deterministic Ed25519 identity derived from n, so fuzz
// corpora that embed a peer ID or a signed record stay valid across runs.
func FixedKey(n byte) (crypto.PrivKey, peer.ID) {
	seed := make([]byte, ed25519.SeedSize)
	for i := range seed {
		seed[i] = n
	}
	sk, err := crypto.UnmarshalEd25519PrivateKey(ed25519.NewKeyFromSeed(seed))
	if err != nil {
		panic(err)
	}
	id, err := peer.IDFromPrivateKey(sk)
	if err != nil {
		panic(err)
	}
	return sk, id
}
