package turn

import (
	"net"
	"net/netip"

	"golang.org/x/net/ipv4"
)

// Syscalls were 94 % of the server's CPU once the channel fast path left
// pion out (dusk-bench turn, pprof), so the sockets that carry relayed
// packets read with recvmmsg (batch_linux.go; x/net elsewhere) and the fast
// path sends with sendmmsg (x/net): under load one syscall moves many
// datagrams.

// How many datagrams one read or send moves at most. Larger batches save
// syscalls but hold the batch's first datagram until the last is read,
// and a closed loop (a call's media both ways) stalls on that: listener
// batches of 8 relayed 4-10 % more packets/s than 32 at 1, 10 and 100
// allocations, 16 and 4 no better than 8 (dusk-bench turn -only ours,
// 3 alternated runs per size).
const (
	listenerBatch = 8 // a listener socket carries many clients
	relayBatch    = 8 // a relay socket carries one allocation; its buffers live as long as it does
)

// visitFunc sees each datagram a batchReader receives; it returns true to
// hand the datagram to read's caller (pion) and false when it dealt with it
// (relayed it on the fast path). data and framed (data with the reader's
// headroom in front) stay valid until the next read call.
type visitFunc func(data, framed []byte, from netip.AddrPort) (keep bool)

// batchWriter queues datagrams for one socket at a time and sends them
// with one sendmmsg. The queued bytes must stay valid until flush.
type batchWriter struct {
	to      *ipv4.PacketConn
	toUDP   *net.UDPConn // the same socket, for a batch of one
	countTo *relayConn   // counts what it sends to peers; nil for sends to clients
	msgs    []ipv4.Message
	bufs    [][]byte // one backing [1][]byte per message, reused
}

func newBatchWriter(n int) *batchWriter {
	return &batchWriter{msgs: make([]ipv4.Message, 0, n), bufs: make([][]byte, n)}
}

// add queues p for addr on socket to, first flushing what was queued for
// another socket (or when the batch is full).
func (w *batchWriter) add(to *ipv4.PacketConn, toUDP *net.UDPConn, countTo *relayConn, p []byte, addr *net.UDPAddr) {
	if w.to != to || len(w.msgs) == cap(w.msgs) {
		w.flush()
		w.to, w.toUDP, w.countTo = to, toUDP, countTo
	}
	i := len(w.msgs)
	w.bufs[i] = p
	w.msgs = append(w.msgs, ipv4.Message{Buffers: w.bufs[i : i+1], Addr: addr})
}

// flush sends what is queued. A datagram the kernel refuses is dropped, as
// a failed sendto would drop it; the rest still go out.
func (w *batchWriter) flush() {
	msgs := w.msgs
	if len(msgs) == 1 {
		// sendto skips x/net's message packing: with many allocations
		// at one packet each in flight, most batches are one datagram.
		if _, err := w.toUDP.WriteTo(msgs[0].Buffers[0], msgs[0].Addr); err == nil && w.countTo != nil {
			w.countTo.countToPeer(len(msgs[0].Buffers[0]))
		}
		msgs = nil
	}
	for len(msgs) > 0 {
		n, _ := w.to.WriteBatch(msgs, 0) // what failed is dropped below, as a failed sendto drops it
		if n > 0 && w.countTo != nil {
			for _, m := range msgs[:n] {
				w.countTo.countToPeer(len(m.Buffers[0]))
			}
		}
		if n <= 0 {
			n = 1 // skip the datagram that failed; every pass makes progress
		}
		msgs = msgs[n:]
	}
	for i := range w.msgs {
		w.msgs[i] = ipv4.Message{}
		w.bufs[i] = nil
	}
	w.msgs = w.msgs[:0]
	w.to, w.toUDP, w.countTo = nil, nil, nil
}
