//go:build !linux

package turn

import (
	"net"
	"net/netip"

	"golang.org/x/net/ipv4"
)

// batchReader reads datagrams in batches through x/net (one per call where
// the system has no recvmmsg). Used by one goroutine only.
type batchReader struct {
	pc          *ipv4.PacketConn
	msgs        []ipv4.Message
	bases       [][]byte
	headroom    int
	next, count int
}

func newBatchReader(uc *net.UDPConn, n, size, headroom int) (*batchReader, error) {
	r := &batchReader{pc: ipv4.NewPacketConn(uc), msgs: make([]ipv4.Message, n), bases: make([][]byte, n), headroom: headroom}
	buf := make([]byte, n*(headroom+size))
	for i := range r.msgs {
		r.bases[i] = buf[i*(headroom+size) : (i+1)*(headroom+size)]
		r.msgs[i].Buffers = [][]byte{r.bases[i][headroom:]}
	}
	return r, nil
}

// read visits datagrams until visit keeps one, which it returns, or the
// socket fails. release runs before the reader reuses its buffers or may
// block: it must send whatever visit queued from them.
func (r *batchReader) read(visit visitFunc, release func()) (data, framed []byte, from netip.AddrPort, err error) {
	for {
		if r.next >= r.count {
			release()
			n, err := r.pc.ReadBatch(r.msgs, 0)
			if err != nil {
				return nil, nil, netip.AddrPort{}, err
			}
			r.next, r.count = 0, n
		}
		m := &r.msgs[r.next]
		i := r.next
		r.next++
		if ua, ok := m.Addr.(*net.UDPAddr); ok {
			ap := ua.AddrPort()
			from = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		}
		data, framed = m.Buffers[0][:m.N], r.bases[i][:r.headroom+m.N]
		if visit(data, framed, from) {
			return data, framed, from, nil
		}
	}
}
