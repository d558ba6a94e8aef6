package turn

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
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

// slotConn is an accepted connection as admit sees it: only its remote
// address matters to the slot accounting.
type slotConn struct {
	net.Conn // nil: any other method is a test bug
	remote   *net.TCPAddr
	closed   bool
}

func (c *slotConn) RemoteAddr() net.Addr             { return c.remote }
func (c *slotConn) Close() error                     { c.closed = true; return nil }
func (c *slotConn) SetReadDeadline(time.Time) error  { return nil }
func (c *slotConn) SetWriteDeadline(time.Time) error { return nil }

// FuzzTCPSlots drives the slot accounting (admit, eviction, allocation
// changes, close) with an arbitrary sequence of events and checks after
// each one that the counts match the connections, the caps hold, only
// connections without an allocation are evicted, and a newcomer is
// refused only when its prefix is at a cap or every slot holds an
// allocation.
func FuzzTCPSlots(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 2, 0x10, 0, 0x21, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{0, 0x10, 1, 0x11, 2, 0x12, 3, 0x13, 0, 0x20, 0, 0})
	// The pool full and its oldest connection the newcomer's prefix's only one.
	f.Add([]byte{0, 0, 0, 1, 0, 1, 0, 2, 0, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		lim := tcpLimits{maxConns: 6, maxPerIP: 3, maxUnauth: 4, maxUnauthIP: 2}
		l := newTCPListener(nil, nil, lim)
		var live []*tcpConn
		port := 1000
		for i := 0; i+1 < len(ops); i += 2 {
			op, arg := ops[i]%4, int(ops[i+1])
			switch op {
			case 0: // connect from one of 4 addresses
				port++
				c := &slotConn{remote: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+arg%4)), Port: port}}
				pfx := ipKey(c.remote)
				l.mu.Lock()
				pc := l.perIP[pfx]
				atCap := pc != nil && (pc.all >= l.lim.maxPerIP || pc.unauth >= l.lim.maxUnauthIP)
				full := len(l.conns) >= l.lim.maxConns || l.nUnauth >= l.lim.maxUnauth
				canEvict := l.unauthHead != nil
				oldest := l.unauthHead
				l.mu.Unlock()
				tc := l.admit(c)
				if (tc == nil) != (atCap || (full && !canEvict)) {
					t.Fatalf("op %d: admitted %v, prefix at cap %v, full %v, evictable %v", i, tc != nil, atCap, full, canEvict)
				}
				if tc != nil {
					live = append(live, tc)
					if full && !oldest.Conn.(*slotConn).closed {
						t.Fatalf("op %d: pool full but the oldest connection without allocation not closed", i)
					}
				}
			case 1, 2: // allocation created / deleted on a connection
				if len(live) == 0 {
					continue
				}
				c := live[arg%len(live)]
				delta := 1
				if op == 2 {
					delta = -1
				}
				l.allocationChanged(c.Conn.RemoteAddr(), delta)
			case 3: // the client goes away
				if len(live) == 0 {
					continue
				}
				_ = live[arg%len(live)].Close()
			}
			// Evicted and closed connections leave the live list.
			kept := live[:0]
			for _, c := range live {
				if !c.Conn.(*slotConn).closed {
					kept = append(kept, c)
				} else if c.allocs > 0 && !c.removed {
					t.Fatalf("op %d: connection closed but still counted", i)
				}
			}
			live = kept
			checkSlots(t, l, live)
		}
	})
}

func checkSlots(t *testing.T, l *tcpListener, live []*tcpConn) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.conns) != len(live) {
		t.Fatalf("%d connections counted, %d open", len(l.conns), len(live))
	}
	want := map[netip.Prefix]prefixConns{}
	unauth := 0
	for _, c := range live {
		if _, ok := l.conns[c]; !ok || c.removed {
			t.Fatalf("open connection %v not counted", c.ap)
		}
		pc := want[c.prefix]
		pc.all++
		if c.allocs == 0 {
			pc.unauth++
			unauth++
			if !c.listed {
				t.Fatalf("connection without allocation %v not in the eviction list", c.ap)
			}
		} else if c.listed {
			t.Fatalf("connection with allocation %v in the eviction list", c.ap)
		}
		want[c.prefix] = pc
	}
	if l.nUnauth != unauth {
		t.Fatalf("nUnauth %d, want %d", l.nUnauth, unauth)
	}
	n := 0
	for c := l.unauthHead; c != nil; c = c.next {
		if n++; n > len(live) {
			t.Fatal("eviction list longer than the connections")
		}
	}
	if n != unauth {
		t.Fatalf("eviction list of %d, want %d", n, unauth)
	}
	if len(l.perIP) != len(want) {
		t.Fatalf("%d prefixes counted, want %d", len(l.perIP), len(want))
	}
	for p, w := range want {
		got := l.perIP[p]
		if got == nil || *got != w {
			t.Fatalf("prefix %v counted %+v, want %+v", p, got, w)
		}
		if w.all > l.lim.maxPerIP {
			t.Fatalf("prefix %v holds %d, cap %d", p, w.all, l.lim.maxPerIP)
		}
	}
	if len(live) > l.lim.maxConns {
		t.Fatalf("%d connections, cap %d", len(live), l.lim.maxConns)
	}
}
