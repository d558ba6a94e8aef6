package turn

import (
	"encoding/binary"
	"net"
	"net/netip"
	"sync"

	"golang.org/x/net/ipv4"
)

// ChannelData of bound UDP channels is relayed here, inside our socket
// wrappers, instead of by pion: pion parses every datagram, looks the
// allocation up under locks and allocates per packet, which kept relayed
// packets/s below coturn's (measured with dusk-bench turn). Everything else
// (STUN, Send and Data indications, TCP clients) still goes through pion,
// and pion's channel callbacks keep the table exact: a channel is here
// only while pion has it bound, and the packets take the same rules as
// pion's path (relayConn.ownHostDenied is the own-host guard of both;
// pion checked the peer filter when it granted the channel's permission).

// chanKey names a channel the way pion's data path finds it: all UDP
// listeners share one local address, so the client address and the
// channel number pick out the allocation's 5-tuple.
type chanKey struct {
	client netip.AddrPort
	number uint16
}

// boundChan is one bound channel of a UDP allocation.
type boundChan struct {
	key       chanKey
	peer      netip.AddrPort
	peerUDP   *net.UDPAddr // the same two addresses made once, for sendmmsg
	clientUDP *net.UDPAddr
	relay     *relayConn
	perm      *permEntry       // the peer's permission: channel data flows only while it lives
	out       *ipv4.PacketConn // a TURN listener socket: they all share the address clients talk to
	outUDP    *net.UDPConn     // the same socket
}

// chanTable finds bound channels by client and number without locks on the
// packet path; channels change rarely next to the packets they carry.
type chanTable struct{ m sync.Map } // chanKey -> *boundChan

func (t *chanTable) lookup(client netip.AddrPort, number uint16) *boundChan {
	v, ok := t.m.Load(chanKey{client, number})
	if !ok {
		return nil
	}
	return v.(*boundChan)
}

// unmappedAddrPort turns a *net.UDPAddr into the form the packet path
// compares (IPv4 unmapped).
func unmappedAddrPort(a net.Addr) (netip.AddrPort, bool) {
	ua, ok := a.(*net.UDPAddr)
	if !ok {
		return netip.AddrPort{}, false
	}
	ap := ua.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
}

// onChannelCreated is pion's callback after a ChannelBind took effect.
func (s *Server) onChannelCreated(src, _ net.Addr, protocol, _, _ string, relay, peer net.Addr, number uint16) {
	if protocol != "UDP" || len(s.udp) == 0 {
		return
	}
	client, ok1 := unmappedAddrPort(src)
	p, ok2 := unmappedAddrPort(peer)
	r, ok3 := unmappedAddrPort(relay)
	out := s.udp[0].pc4
	outUDP, ok4 := s.udp[0].PacketConn.(*net.UDPConn)
	if !ok1 || !ok2 || !ok3 || !ok4 || out == nil {
		return // pion's own path still relays it
	}
	rc := s.relays.byPort(r.Port())
	if rc == nil || rc.udp == nil {
		return
	}
	rc.addChan(&boundChan{
		key: chanKey{client, number}, peer: p, relay: rc, out: out, outUDP: outUDP,
		peerUDP: net.UDPAddrFromAddrPort(p), clientUDP: net.UDPAddrFromAddrPort(client),
	})
}

// onChannelDeleted is pion's callback when a channel binding expired.
func (s *Server) onChannelDeleted(src, _ net.Addr, protocol, _, _ string, relay, peer net.Addr, number uint16) {
	if protocol != "UDP" {
		return
	}
	client, ok1 := unmappedAddrPort(src)
	p, ok2 := unmappedAddrPort(peer)
	r, ok3 := unmappedAddrPort(relay)
	if !ok1 || !ok2 || !ok3 {
		return
	}
	if rc := s.relays.byPort(r.Port()); rc != nil {
		rc.removeChan(chanKey{client, number}, p)
	}
}

// addChan publishes bc in the server's table and in this relay's peer map
// (for the peer -> client direction). A closed relay takes no channels.
func (c *relayConn) addChan(bc *boundChan) {
	c.chanMu.Lock()
	defer c.chanMu.Unlock()
	if c.chansClosed {
		return
	}
	bc.perm = c.perms.ref(bc.peer.Addr(), c.s.clock.now())
	if old := c.byPeerLocked()[bc.peer]; old != nil {
		c.perms.unref(old.peer.Addr(), old.perm, c.s.clock.now())
	}
	m := make(map[netip.AddrPort]*boundChan, len(c.byPeerLocked())+1)
	for k, v := range c.byPeerLocked() {
		m[k] = v
	}
	m[bc.peer] = bc
	c.byPeer.Store(&m)
	c.s.chans.m.Store(bc.key, bc)
}

func (c *relayConn) removeChan(key chanKey, peer netip.AddrPort) {
	c.chanMu.Lock()
	defer c.chanMu.Unlock()
	old := c.byPeerLocked()
	bc := old[peer]
	if bc == nil || bc.key != key {
		return
	}
	m := make(map[netip.AddrPort]*boundChan, len(old))
	for k, v := range old {
		if k != peer {
			m[k] = v
		}
	}
	c.byPeer.Store(&m)
	c.s.chans.m.CompareAndDelete(key, bc)
	c.perms.unref(peer.Addr(), bc.perm, c.s.clock.now())
}

// dropChans forgets every channel of this relay; called once, on Close.
func (c *relayConn) dropChans() {
	c.chanMu.Lock()
	defer c.chanMu.Unlock()
	c.chansClosed = true
	for _, bc := range c.byPeerLocked() {
		c.s.chans.m.CompareAndDelete(bc.key, bc)
	}
	c.byPeer.Store(nil)
}

func (c *relayConn) byPeerLocked() map[netip.AddrPort]*boundChan {
	if m := c.byPeer.Load(); m != nil {
		return *m
	}
	return nil
}

// channelData splits a ChannelData message (RFC 8656 §12.4) into channel
// number and payload; ok is false for anything else (STUN, garbage, a
// length past the datagram).
func channelData(p []byte) (number uint16, payload []byte, ok bool) {
	if len(p) < 4 || p[0]&0xC0 != 0x40 { // numbers 0x4000-0x7FFF
		return 0, nil, false
	}
	l := int(binary.BigEndian.Uint16(p[2:4]))
	if 4+l > len(p) {
		return 0, nil, false
	}
	return binary.BigEndian.Uint16(p[0:2]), p[4 : 4+l], true
}
