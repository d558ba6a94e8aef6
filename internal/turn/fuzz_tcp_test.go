package turn

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/pion/turn/v4"
	"go.uber.org/zap"
)

// tcpFuzzSeeds: the two packets that killed the process, frames pion's
// STUNConn would cut differently, and ordinary traffic.
func tcpFuzzSeeds() [][]byte {
	binding := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint).Raw
	allocate := stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest),
		stun.RawAttribute{Type: stun.AttrRequestedTransport, Value: []byte{17, 0, 0, 0}}).Raw
	cookieChan := make([]byte, 20)
	cookieChan[0] = 0x40
	binary.BigEndian.PutUint16(cookieChan[2:4], 16)
	binary.BigEndian.PutUint32(cookieChan[4:8], stunCookie)
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	return [][]byte{
		killerChannelData,
		killerSTUNHeader,
		cat(binding, killerChannelData),
		cat(binding, killerSTUNHeader, binding),
		binding,
		cat(binding, allocate, binding),
		cat([]byte{0x40, 0x00, 0x00, 0x00}, binding),                // 4-byte ChannelData, then STUN
		cat([]byte{0x40, 0x00, 0x00, 0x00}, cookieChan),             // cookie right behind a tiny frame
		cat(cookieChan, binding),                                    // payload starting with the cookie
		cat([]byte{0x40, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5}, binding), // padding missing
		[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		{0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03},
		{0x00, 0x01, 0xFF, 0xFF, 0x21, 0x12, 0xA4, 0x42},
		{0x7F, 0xFF, 0xFF, 0xFF},
		{},
	}
}

// FuzzTCPStream drives arbitrary byte streams through a real TCP listener
// of the server: the connection is half-closed after the bytes, and the
// server must close it within 5 s (no hang, no spin); it must then still
// answer a Binding on a fresh connection. Before TURN TCP was framed here,
// the first two seeds crashed the process (stack overflow).
func FuzzTCPStream(f *testing.F) {
	for _, s := range tcpFuzzSeeds() {
		f.Add(s)
	}
	// The slot caps are not under test here: each input is one connection
	// from 127.0.0.1, closed before the next.
	s, err := newServer(testConfig(), testSecret, zap.NewNop(), nil, tcpLimits{maxConns: 4096, maxPerIP: 4096, maxUnauth: 4096, maxUnauthIP: 4096})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = s.Close() })
	addr := s.TCPAddr().String()
	// The client half-closes first, so its end of each connection stays in
	// TIME_WAIT for a minute (thousands while fuzzing): from addresses of
	// its own (32 in turn, so their ports last), those do not take ports
	// other tests bind on 127.0.0.1.
	var n uint8

	f.Fuzz(func(t *testing.T, stream []byte) {
		if len(stream) > 1<<16 {
			stream = stream[:1<<16]
		}
		n++
		dialer := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 100+n%32)}}
		c, err := dialer.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer abort(c)
		// The server may close first (bad frame): a failed write is fine.
		_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		_, _ = c.Write(stream)
		_ = c.(*net.TCPConn).CloseWrite()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil && isTimeout(err) {
			t.Fatalf("server kept a half-closed connection open for 5 s after %x", stream)
		}
		if err := bindingOverTCP(addr); err != nil {
			t.Fatalf("after %x: %v", stream, err)
		}
	})
}

// FuzzTCPFraming checks the contract between our framing and pion's
// STUNConn, which re-cuts what tcpConn.Read hands it: every frame we hand
// on, delivered one per read as tcpConn.Read does, comes out of pion's
// STUNConn as exactly that frame, and STUNConn never returns an empty
// frame. Whatever we cut, pion never sees a length that could wrap.
func FuzzTCPFraming(f *testing.F) {
	for _, s := range tcpFuzzSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, stream []byte) {
		var frames [][]byte
		for rest := stream; len(rest) > 0; {
			n, err := nextFrame(rest, tcpMaxFrame)
			if err != nil {
				if !errors.Is(err, errTCPFrame) {
					t.Fatalf("error %v does not wrap errTCPFrame", err)
				}
				break
			}
			if n == 0 {
				break
			}
			if n < 4 || n > tcpMaxFrame || n%4 != 0 {
				t.Fatalf("frame of %d bytes", n)
			}
			if handOn(rest[:n]) {
				frames = append(frames, rest[:n])
			}
			rest = rest[n:]
		}
		if len(frames) == 0 {
			return
		}
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		go func() {
			for _, fr := range frames {
				if _, err := a.Write(fr); err != nil {
					return
				}
			}
			_ = a.Close()
		}()
		pc := turn.NewSTUNConn(b)
		_ = b.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, tcpMaxFrame)
		for i, want := range frames {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				t.Fatalf("frame %d (%x): pion's STUNConn: %v", i, want, err)
			}
			if !bytes.Equal(buf[:n], want) {
				t.Fatalf("frame %d: pion cut %x, we cut %x", i, buf[:n], want)
			}
		}
	})
}
