package mesh

import (
	"errors"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	pbv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/pb"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/util"
)

// FuzzMeshStream drives arbitrary bytes through a real mesh stream between
// two member relays: every request is answered with a status or closed
// within the request deadline, never a crash or a hang, and the exit relay
// gives back every slot afterwards.
func FuzzMeshStream(f *testing.F) {
	for _, seed := range [][]byte{
		{},
		{0x05, 0xff, 0xff, 0xff, 0xff, 0xff},
		{0xff, 0xff, 0xff, 0xff, 0x0f},
		{0x02, 0x08, 0x02},
		{0x02, 0x08, 0x01, 0x02, 0x08, 0x00}, // CONNECT without peers
	} {
		f.Add(seed)
	}
	rs := cluster(f, 2, &memLocator{at: map[peer.ID]peer.ID{}}, nil, nil)
	a, b := rs[0], rs[1]
	f.Fuzz(func(t *testing.T, payload []byte) {
		s, err := a.node.Host().NewStream(ctxT(t, 10*time.Second), b.id, ProtocolID)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		_ = s.SetDeadline(time.Now().Add(requestTimeout + 5*time.Second))
		_, _ = s.Write(payload)
		_ = s.CloseWrite()
		rd := util.NewDelimitedReader(s, maxMessage)
		defer rd.Close()
		var resp pbv2.HopMessage
		// An answer or a closed/reset stream are both fine; a deadline is a hang.
		if err := rd.ReadMsg(&resp); err != nil && isTimeout(err) {
			t.Fatalf("mesh stream with %d bytes: no answer before the deadline: %v", len(payload), err)
		}
		if resp.GetStatus() == pbv2.Status_OK {
			t.Fatalf("mesh stream with %d bytes answered OK without a reservation", len(payload))
		}
		eventually(t, "slots given back", func() bool { return b.node.Circuits() == 0 && counted(b.mesh) == 0 })
	})
}

func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}
