// Package lightpeer is a libp2p client connection without a host: TCP,
// noise, yamux with its own identity, negotiated by go-libp2p's own
// upgrader. A go-libp2p host costs ~230 KiB and a dozen goroutines; the
// bench needs 10k-100k distinct identities, so each connection is just an
// upgraded TCP connection that answers identify (as Dusk's rust clients do)
// and can open streams.
package lightpeer

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/core/sec"
	"github.com/libp2p/go-libp2p/core/transport"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/net/upgrader"
	idpb "github.com/libp2p/go-libp2p/p2p/protocol/identify/pb"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	"github.com/libp2p/go-msgio/pbio"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
	mss "github.com/multiformats/go-multistream"
	"google.golang.org/protobuf/proto"
)

// Protocol IDs spoken by the light peer.
const (
	IdentifyID = "/ipfs/id/1.0.0"
	PingID     = "/ipfs/ping/1.0.0"
)

// ErrPing marks a ping whose echo did not match.
var ErrPing = errors.New("lightpeer: ping echo mismatch")

var muxers = []upgrader.StreamMuxer{{ID: yamux.ID, Muxer: yamux.DefaultTransport}}

// Conn is one upgraded connection with its own identity.
type Conn struct {
	Key    crypto.PrivKey
	ID     peer.ID
	Remote peer.ID
	cc     transport.CapableConn
	idMsg  *idpb.Identify
	wg     sync.WaitGroup
	// handlers serve inbound streams of extra protocols (read-only after Dial).
	handlers map[protocol.ID]Handler
}

// Handler serves one inbound stream of an extra protocol until it returns;
// the stream has no deadline. It must return once the connection closes.
type Handler func(s network.MuxedStream)

// Options configure DialWith.
type Options struct {
	// Local is the local address to dial from (nil: the kernel picks).
	Local ma.Multiaddr
	// Handlers serve the remote's streams of these protocols (e.g. a
	// gossipsub router's stream or a relay's circuit STOP); they are also
	// listed in our identify record, so the remote knows we speak them.
	Handlers map[protocol.ID]Handler
}

// NewKey returns a fresh Ed25519 identity.
func NewKey() (crypto.PrivKey, peer.ID, error) {
	k, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return nil, "", err
	}
	id, err := peer.IDFromPrivateKey(k)
	return k, id, err
}

// Dial connects to remote at addr as key (a fresh identity when nil).
func Dial(ctx context.Context, key crypto.PrivKey, addr ma.Multiaddr, remote peer.ID) (*Conn, error) {
	return DialFrom(ctx, key, nil, addr, remote)
}

// DialFrom is Dial from a chosen local address (e.g. /ip4/127.0.0.2/tcp/0,
// to stand for another client address on loopback); nil lets the kernel pick.
func DialFrom(ctx context.Context, key crypto.PrivKey, local, addr ma.Multiaddr, remote peer.ID) (*Conn, error) {
	return DialWith(ctx, key, addr, remote, Options{Local: local})
}

// DialWith is Dial with options.
func DialWith(ctx context.Context, key crypto.PrivKey, addr ma.Multiaddr, remote peer.ID, o Options) (*Conn, error) {
	local := o.Local
	if key == nil {
		var err error
		if key, _, err = NewKey(); err != nil {
			return nil, err
		}
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return nil, err
	}
	st, err := noise.New(noise.ID, key, muxers)
	if err != nil {
		return nil, fmt.Errorf("lightpeer: noise: %w", err)
	}
	u, err := upgrader.New([]sec.SecureTransport{st}, muxers, nil, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("lightpeer: upgrader: %w", err)
	}
	d := manet.Dialer{LocalAddr: local}
	raw, err := d.DialContext(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("lightpeer: dial: %w", err)
	}
	cc, err := u.Upgrade(ctx, nil, raw, network.DirOutbound, remote, &network.NullScope{})
	if err != nil {
		return nil, fmt.Errorf("lightpeer: upgrade: %w", err)
	}
	c := &Conn{Key: key, ID: id, Remote: remote, cc: cc, handlers: o.Handlers}
	pub, err := crypto.MarshalPublicKey(key.GetPublic())
	if err != nil {
		_ = cc.Close()
		return nil, err
	}
	c.idMsg = &idpb.Identify{
		ProtocolVersion: proto.String("ipfs/0.1.0"),
		AgentVersion:    proto.String("dusk-bench"),
		PublicKey:       pub,
		ObservedAddr:    cc.RemoteMultiaddr().Bytes(),
		Protocols:       []string{IdentifyID, PingID},
	}
	for p := range o.Handlers {
		c.idMsg.Protocols = append(c.idMsg.Protocols, string(p))
	}
	c.wg.Add(1)
	go c.serve()
	return c, nil
}

// serve answers the streams the daemon opens (identify; anything else is
// refused by multistream) until the connection closes.
func (c *Conn) serve() {
	defer c.wg.Done()
	m := mss.NewMultistreamMuxer[protocol.ID]()
	m.AddHandler(IdentifyID, nil)
	m.AddHandler(PingID, nil)
	for p := range c.handlers {
		m.AddHandler(p, nil)
	}
	for {
		s, err := c.cc.AcceptStream()
		if err != nil {
			return
		}
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			_ = s.SetDeadline(time.Now().Add(30 * time.Second))
			p, _, err := m.Negotiate(s)
			if err != nil {
				_ = s.Reset()
				return
			}
			if h := c.handlers[p]; h != nil {
				_ = s.SetDeadline(time.Time{})
				h(s)
				return
			}
			switch p {
			case IdentifyID:
				if err := pbio.NewDelimitedWriter(s).WriteMsg(c.idMsg); err != nil {
					_ = s.Reset()
					return
				}
				_ = s.Close()
			case PingID:
				buf := make([]byte, 32)
				for {
					if _, err := io.ReadFull(s, buf); err != nil {
						_ = s.Close()
						return
					}
					if _, err := s.Write(buf); err != nil {
						_ = s.Reset()
						return
					}
				}
			}
		}()
	}
}

// Stream opens a stream and negotiates proto on it.
func (c *Conn) Stream(ctx context.Context, proto protocol.ID) (network.MuxedStream, error) {
	s, err := c.cc.OpenStream(ctx)
	if err != nil {
		return nil, fmt.Errorf("lightpeer: open stream: %w", err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	if err := mss.SelectProtoOrFail(proto, s); err != nil {
		_ = s.Reset()
		return nil, fmt.Errorf("lightpeer: select %s: %w", proto, err)
	}
	return s, nil
}

// Identify asks the remote for its identify record (as rust clients do on
// every connection) and returns its protocol list.
func (c *Conn) Identify(ctx context.Context) ([]string, error) {
	s, err := c.Stream(ctx, IdentifyID)
	if err != nil {
		return nil, err
	}
	var msg idpb.Identify
	if err := pbio.NewDelimitedReader(s, 64<<10).ReadMsg(&msg); err != nil {
		_ = s.Reset()
		return nil, fmt.Errorf("lightpeer: identify: %w", err)
	}
	_ = s.Close()
	return msg.Protocols, nil
}

// Ping opens a ping stream, sends count 32-byte pings and returns the RTTs.
func (c *Conn) Ping(ctx context.Context, count int) ([]time.Duration, error) {
	s, err := c.Stream(ctx, PingID)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	out := make([]time.Duration, 0, count)
	for range count {
		d, err := PingOnce(s)
		if err != nil {
			_ = s.Reset()
			return out, err
		}
		out = append(out, d)
	}
	return out, nil
}

// PingOnce sends one 32-byte ping on an open ping stream and waits for the echo.
func PingOnce(s io.ReadWriter) (time.Duration, error) {
	var buf, echo [32]byte
	_, _ = rand.Read(buf[:])
	t := time.Now()
	if _, err := s.Write(buf[:]); err != nil {
		return 0, fmt.Errorf("lightpeer: ping write: %w", err)
	}
	if _, err := io.ReadFull(s, echo[:]); err != nil {
		return 0, fmt.Errorf("lightpeer: ping read: %w", err)
	}
	if echo != buf {
		return 0, ErrPing
	}
	return time.Since(t), nil
}

// Closed reports whether the connection was closed (by either side).
func (c *Conn) Closed() bool { return c.cc.IsClosed() }

// Close closes the connection and waits for its stream handlers.
func (c *Conn) Close() error {
	err := c.cc.Close()
	c.wg.Wait()
	return err
}
