package turn

import (
	"net"
	"net/netip"

	"golang.org/x/net/ipv4"
)

// Syscalls were 94 % of the server's CPU once the channel fast path left
// pion out (dusk-bench turn, pprof), so the sockets that carry relayed
// packets read with recvmmsg and the fast path sends with sendmmsg: under
// load one syscall moves many datagrams. x/net picks recvmmsg/sendmmsg on
// Linux and falls back to one datagram per call elsewhere.

// How many datagrams one read or send moves at most.
const (
	listenerBatch = 32 // a listener socket carries many clients
	relayBatch    = 8  // a relay socket carries one allocation; its buffers live as long as it does
)

// batchReader hands out datagrams one by one from batched reads. Used by
// one goroutine only (pion's reader of the socket).
type batchReader struct {
	pc          *ipv4.PacketConn
	msgs        []ipv4.Message
	bases       [][]byte // each message's buffer including the headroom
	headroom    int
	next, count int
}

// newBatchReader reads up to n datagrams of up to size bytes each, into
// buffers with headroom bytes free in front.
func newBatchReader(uc *net.UDPConn, n, size, headroom int) *batchReader {
	r := &batchReader{pc: ipv4.NewPacketConn(uc), msgs: make([]ipv4.Message, n), bases: make([][]byte, n), headroom: headroom}
	buf := make([]byte, n*(headroom+size))
	for i := range r.msgs {
		r.bases[i] = buf[i*(headroom+size) : (i+1)*(headroom+size)]
		r.msgs[i].Buffers = [][]byte{r.bases[i][headroom:]}
	}
	return r
}

// buffered reports whether a datagram is ready without a syscall.
func (r *batchReader) buffered() bool { return r.next < r.count }

// read returns the next datagram and its sender (IPv4 unmapped); framed is
// the same datagram with the reader's headroom in front. Both stay valid
// until the read after the batch is used up.
func (r *batchReader) read() (data, framed []byte, from netip.AddrPort, err error) {
	if r.next >= r.count {
		n, err := r.pc.ReadBatch(r.msgs, 0)
		if err != nil {
			return nil, nil, netip.AddrPort{}, err
		}
		r.next, r.count = 0, n
	}
	m := &r.msgs[r.next]
	r.next++
	if ua, ok := m.Addr.(*net.UDPAddr); ok {
		ap := ua.AddrPort()
		from = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return m.Buffers[0][:m.N], r.bases[r.next-1][:r.headroom+m.N], from, nil
}

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
		n, err := w.to.WriteBatch(msgs, 0)
		if n > 0 && w.countTo != nil {
			for _, m := range msgs[:n] {
				w.countTo.countToPeer(len(m.Buffers[0]))
			}
		}
		if err != nil && n <= 0 {
			n = 1 // skip the datagram that failed
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
