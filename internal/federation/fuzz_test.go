package federation

import (
	"context"
	"testing"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	pubsubpb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/peer"
	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/testutil"
)

// FuzzGossip feeds arbitrary message bodies from another relay to the
// gossip validator. Properties: no panic; a message is accepted only if it
// decodes with every field present and names its signing author as
// source_relay; what decodes re-encodes to JSON that decodes to the same
// value.
func FuzzGossip(f *testing.F) {
	_, author := testutil.FixedKey(3)
	_, self := testutil.FixedKey(4)
	for _, s := range []string{
		`{"peer_id":"12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN","namespace":"dusk/peers","ttl":7200,"source_relay":"` + author.String() + `"}`,
		`{"peer_id":"a","namespace":"b","ttl":1,"source_relay":"` + self.String() + `"}`,
		`{"peer_id":"a","namespace":"b","ttl":-1,"source_relay":"x"}`,
		`{"peer_id":"a","namespace":"b","ttl":18446744073709551616,"source_relay":"x"}`,
		`{"peer_id":null,"namespace":"b","ttl":1,"source_relay":"x"}`,
		`{"peer_id":"a","namespace":"b","source_relay":"x"}`,
		`{"peer_id":"a","peer_id":"b","namespace":"\u0000","ttl":1e2,"source_relay":"x","extra":[1,{}]}`,
		`[]`, `null`, ``, `{`, "\xff",
	} {
		f.Add([]byte(s))
	}
	fed := &Federation{self: self, log: zap.NewNop(), m: newMetrics(nil, zap.NewNop()),
		members: map[peer.ID]struct{}{author: {}}}
	from := []byte(author)

	f.Fuzz(func(t *testing.T, data []byte) {
		g, derr := decode(data)
		res := fed.validate(context.Background(), author, &pubsub.Message{Message: &pubsubpb.Message{Data: data, From: from}})
		if res == pubsub.ValidationAccept {
			if derr != nil {
				t.Fatalf("accepted undecodable gossip %q: %v", data, derr)
			}
			if g.SourceRelay != author.String() {
				t.Fatalf("accepted gossip from %s claiming source_relay %q", author, g.SourceRelay)
			}
		}
		if derr != nil {
			return
		}
		enc, err := encode(g)
		if err != nil {
			t.Fatalf("encode %+v: %v", g, err)
		}
		if again, err := decode(enc); err != nil || again != g {
			t.Fatalf("round trip %+v -> %s -> %+v (%v)", g, enc, again, err)
		}
	})
}
