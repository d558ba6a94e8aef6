package mesh

import (
	"encoding/binary"
	"io"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/duskchat/dusk-relay/internal/config"
)

const sinkProto = "/dusk/test/sink/1.0.0"

// sink reads a stream to its end and answers with the byte count.
func sink(s network.Stream) {
	defer s.Close()
	n, _ := io.Copy(io.Discard, s)
	_ = binary.Write(s, binary.BigEndian, n)
}

// benchPair is one initiator on relay A and two targets: local reserved at
// A (a same-relay circuit, the baseline) and remote reserved at B (a mesh
// circuit through A and B). Circuits are unlimited so the transfer is not cut.
type benchPair struct {
	a             *relay
	init          host.Host
	local, remote host.Host
}

func newBenchPair(b *testing.B) *benchPair {
	loc := &memLocator{at: map[peer.ID]peer.ID{}}
	rs := cluster(b, 2, loc, func(_ int, c *config.Relay) {
		c.CircuitBytes, c.CircuitDuration = 0, 0
		c.MaxCircuits, c.MaxCircuitsPerPeer = 1<<20, 1<<20
	}, nil)
	p := &benchPair{a: rs[0], init: newClient(b), local: newClient(b), remote: newClient(b)}
	for _, h := range []host.Host{p.local, p.remote} {
		h.SetStreamHandler(sinkProto, sink)
	}
	reserveAt(b, p.local, rs[0])
	reserveAt(b, p.remote, rs[1])
	loc.set(p.remote.ID(), rs[1].id)
	if err := p.init.Connect(ctxT(b, 10*time.Second), rs[0].info()); err != nil {
		b.Fatal(err)
	}
	return p
}

func (p *benchPair) connect(b *testing.B, target host.Host) time.Duration {
	start := time.Now()
	ai := peer.AddrInfo{ID: target.ID(), Addrs: []ma.Multiaddr{p.a.circuitTo(target.ID())}}
	if err := p.init.Connect(ctxT(b, 30*time.Second), ai); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

func (p *benchPair) disconnect(b *testing.B, target host.Host) {
	if err := p.init.Network().ClosePeer(target.ID()); err != nil {
		b.Fatal(err)
	}
}

// send pushes size bytes to target over the open circuit and waits for
// its count.
func (p *benchPair) send(b *testing.B, target host.Host, buf []byte, size int) time.Duration {
	start := time.Now()
	s, err := p.init.NewStream(network.WithAllowLimitedConn(ctxT(b, 30*time.Second), "bench"), target.ID(), sinkProto)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(2 * time.Minute))
	for sent := 0; sent < size; sent += len(buf) {
		if _, err := s.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	if err := s.CloseWrite(); err != nil {
		b.Fatal(err)
	}
	var got int64
	if err := binary.Read(s, binary.BigEndian, &got); err != nil || got != int64(size) {
		b.Fatalf("sink counted %d of %d bytes: %v", got, size, err)
	}
	return time.Since(start)
}

// BenchmarkMeshSetup: connecting through relay A to a peer reserved at B
// (mesh: HOP CONNECT, mesh stream, STOP, then noise + yamux end to end)
// against a peer reserved at A, alternated in the same run.
func BenchmarkMeshSetup(b *testing.B) {
	p := newBenchPair(b)
	var local, remote time.Duration
	for b.Loop() {
		local += p.connect(b, p.local)
		p.disconnect(b, p.local)
		remote += p.connect(b, p.remote)
		p.disconnect(b, p.remote)
	}
	b.ReportMetric(float64(local.Microseconds())/float64(b.N)/1000, "local-ms/op")
	b.ReportMetric(float64(remote.Microseconds())/float64(b.N)/1000, "mesh-ms/op")
	b.ReportMetric(float64(remote)/float64(local), "mesh/local-time")
}

// BenchmarkMeshThroughput: 16 MiB one way over an open circuit, mesh
// against same-relay, alternated in the same run.
func BenchmarkMeshThroughput(b *testing.B) {
	const size = 16 << 20
	p := newBenchPair(b)
	p.connect(b, p.local)
	p.connect(b, p.remote)
	buf := make([]byte, 64<<10)
	var local, remote time.Duration
	for b.Loop() {
		local += p.send(b, p.local, buf, size)
		remote += p.send(b, p.remote, buf, size)
	}
	mb := float64(size) / (1 << 20) * float64(b.N)
	b.ReportMetric(mb/local.Seconds(), "local-MiB/s")
	b.ReportMetric(mb/remote.Seconds(), "mesh-MiB/s")
	b.ReportMetric(local.Seconds()/remote.Seconds(), "mesh/local-throughput")
}
