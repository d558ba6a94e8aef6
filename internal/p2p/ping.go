package p2p

import (
	"errors"
	"io"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
)

// pingIdle is how long an inbound ping stream may wait for its next ping.
// rust-libp2p clients ping every 15 s on one stream they keep (timeout
// 20 s), and the Rust relay echoes for as long as they do; go-libp2p's
// own handler closes a stream after 10 s without a ping and any stream
// after 30 s, so every Rust client's ping would fail and reopen a stream.
const pingIdle = time.Minute

// pingHandler echoes 32-byte pings for as long as the client sends them
// at least every idle. One goroutine per stream (go-libp2p's takes two).
func pingHandler(idle time.Duration) network.StreamHandler {
	return func(s network.Stream) {
		if err := s.Scope().SetService(ping.ServiceName); err != nil {
			_ = s.Reset()
			return
		}
		if err := s.Scope().ReserveMemory(ping.PingSize, network.ReservationPriorityAlways); err != nil {
			_ = s.Reset()
			return
		}
		defer s.Scope().ReleaseMemory(ping.PingSize)
		var buf [ping.PingSize]byte
		for {
			_ = s.SetReadDeadline(time.Now().Add(idle))
			if _, err := io.ReadFull(s, buf[:]); err != nil {
				if errors.Is(err, io.EOF) {
					_ = s.Close() // the client is done pinging
				} else {
					_ = s.Reset() // idle, short ping or broken stream
				}
				return
			}
			_ = s.SetWriteDeadline(time.Now().Add(idle))
			if _, err := s.Write(buf[:]); err != nil {
				_ = s.Reset()
				return
			}
		}
	}
}
