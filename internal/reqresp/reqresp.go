// Package reqresp implements the framing of rust-libp2p's request-response
// `cbor` codec: one CBOR item per direction, no length prefix, each side
// half-closes after writing. It is the lower layer of every /dusk/* protocol.
package reqresp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
	"go.uber.org/zap"
)

const (
	// MaxRequestSize is the request cap of the Rust codec (1 MiB). Serve
	// uses it only when the protocol names no smaller cap: every /dusk/*
	// request is under 1 KiB, and each buffered byte is memory a stream
	// flood holds for the whole read deadline.
	MaxRequestSize = 1 << 20
	// MaxResponseSize is the response cap of the Rust codec (10 MiB).
	MaxResponseSize = 10 << 20
	// ReadTimeout bounds how long a request may take to arrive completely.
	ReadTimeout = 15 * time.Second
	// FirstByteTimeout bounds the wait for the first request byte. A
	// rust-libp2p client writes its request together with the protocol
	// negotiation, so only an idle sender needs longer than one round trip.
	FirstByteTimeout = 5 * time.Second
	// WriteTimeout bounds writing the response to a slow reader.
	WriteTimeout = 15 * time.Second
)

var (
	// ErrTooLarge means the peer sent more than MaxRequestSize bytes.
	ErrTooLarge = errors.New("reqresp: message too large")
	// ErrNoAnswer is returned by a Handler that wants the stream closed
	// without a response (the Rust relay's behaviour for refused requests).
	ErrNoAnswer = errors.New("reqresp: no answer")
)

// Handler answers one decoded request. remote is the authenticated peer of
// the stream. Returning ErrNoAnswer (or any error) closes the stream
// without a response.
type Handler func(ctx context.Context, remote peer.ID, request []byte) (response []byte, err error)

// encMode/decMode are immutable after construction; they are package-level
// values rather than mutable state.
var (
	encMode = mustEncMode()
	decMode = mustDecMode()
)

func mustEncMode() cbor.EncMode {
	// NilContainerAsEmpty: Rust rejects a null Vec. No sorting options: Rust
	// emits struct fields in declaration order.
	m, err := cbor.EncOptions{NilContainers: cbor.NilContainerAsEmpty}.EncMode()
	if err != nil {
		panic(err)
	}
	return m
}

func mustDecMode() cbor.DecMode {
	m, err := cbor.DecOptions{
		DupMapKey:        cbor.DupMapKeyEnforcedAPF, // cbor4ii rejects duplicate keys
		MaxNestedLevels:  16,
		MaxArrayElements: 4096,
		MaxMapPairs:      4096,
	}.DecMode()
	if err != nil {
		panic(err)
	}
	return m
}

// Marshal encodes v the way cbor4ii/serde does for Dusk's types.
func Marshal(v any) ([]byte, error) { return encMode.Marshal(v) }

// Unmarshal decodes one CBOR item; trailing bytes are an error.
func Unmarshal(data []byte, v any) error { return decMode.Unmarshal(data, v) }

// Option adjusts Serve.
type Option func(*serveOptions)

type serveOptions struct {
	readTimeout      time.Duration
	firstByteTimeout time.Duration
	maxRequest       int
}

// WithReadTimeout replaces ReadTimeout (tests use short ones).
func WithReadTimeout(d time.Duration) Option {
	return func(o *serveOptions) { o.readTimeout = d }
}

// WithFirstByteTimeout replaces FirstByteTimeout (capped at the read
// timeout).
func WithFirstByteTimeout(d time.Duration) Option {
	return func(o *serveOptions) { o.firstByteTimeout = d }
}

// WithMaxRequestSize sets the protocol's request cap in bytes (default
// MaxRequestSize). A longer request is reset without an answer.
func WithMaxRequestSize(n int) Option {
	return func(o *serveOptions) { o.maxRequest = n }
}

// Serve registers handler for proto on h. Each stream carries exactly one
// request and one response. The handler's context carries the stream's
// remote address (RemoteAddr).
func Serve(ctx context.Context, h host.Host, proto protocol.ID, log *zap.Logger, handler Handler, opts ...Option) {
	o := serveOptions{readTimeout: ReadTimeout, firstByteTimeout: FirstByteTimeout, maxRequest: MaxRequestSize}
	for _, opt := range opts {
		opt(&o)
	}
	if o.maxRequest <= 0 || o.maxRequest > MaxRequestSize {
		o.maxRequest = MaxRequestSize
	}
	if o.firstByteTimeout <= 0 || o.firstByteTimeout > o.readTimeout {
		o.firstByteTimeout = o.readTimeout
	}
	h.SetStreamHandler(proto, func(s network.Stream) {
		handleStream(ctx, s, log, handler, o)
	})
}

type remoteAddrKey struct{}

// RemoteAddr is the remote multiaddr of the stream a Handler serves (nil
// outside Serve). Handlers key per-address limits on it.
func RemoteAddr(ctx context.Context) ma.Multiaddr {
	a, _ := ctx.Value(remoteAddrKey{}).(ma.Multiaddr)
	return a
}

// WithRemoteAddr returns ctx carrying a as RemoteAddr (for handlers called
// outside Serve, e.g. tests).
func WithRemoteAddr(ctx context.Context, a ma.Multiaddr) context.Context {
	return context.WithValue(ctx, remoteAddrKey{}, a)
}

func handleStream(ctx context.Context, s network.Stream, log *zap.Logger, handler Handler, o serveOptions) {
	remote := s.Conn().RemotePeer()
	req, err := readRequest(s, o)
	if err != nil {
		log.Debug("bad request stream", zap.String("protocol", string(s.Protocol())),
			zap.Stringer("peer", remote), zap.Error(err))
		_ = s.Reset()
		return
	}
	resp, err := handler(WithRemoteAddr(ctx, s.Conn().RemoteMultiaddr()), remote, req)
	if err != nil || resp == nil {
		if err != nil && !errors.Is(err, ErrNoAnswer) {
			log.Debug("request refused", zap.String("protocol", string(s.Protocol())),
				zap.Stringer("peer", remote), zap.Error(err))
		}
		_ = s.Close()
		return
	}
	_ = s.SetWriteDeadline(time.Now().Add(WriteTimeout))
	if _, err := s.Write(resp); err != nil {
		log.Debug("write response", zap.Stringer("peer", remote), zap.Error(err))
		_ = s.Reset()
		return
	}
	_ = s.Close()
}

// readRequest reads one request to EOF: the first byte within
// firstByteTimeout, all of it within readTimeout, at most maxRequest bytes.
// The buffer grows with what arrived, so a stalled stream holds only what
// it sent.
func readRequest(s network.Stream, o serveOptions) ([]byte, error) {
	start := time.Now()
	_ = s.SetReadDeadline(start.Add(o.firstByteTimeout))
	buf := make([]byte, 0, min(512, o.maxRequest+1))
	first := true
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := s.Read(buf[len(buf):min(cap(buf), o.maxRequest+1)])
		buf = buf[:len(buf)+n]
		if len(buf) > o.maxRequest {
			return nil, ErrTooLarge
		}
		if n > 0 && first {
			first = false
			_ = s.SetReadDeadline(start.Add(o.readTimeout))
		}
		if errors.Is(err, io.EOF) {
			return buf, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read: %w", err)
		}
	}
}

// ReadAll reads r to EOF, failing with ErrTooLarge beyond limit bytes.
func ReadAll(r io.Reader, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	if int64(len(b)) > limit {
		return nil, ErrTooLarge
	}
	return b, nil
}

// Call performs one request the way a rust-libp2p client does: new stream,
// write, half-close, read the response to EOF. Used by tests and tools.
func Call(ctx context.Context, h host.Host, p peer.ID, proto protocol.ID, request []byte) ([]byte, error) {
	s, err := h.NewStream(ctx, p, proto)
	if err != nil {
		return nil, fmt.Errorf("open stream: %w", err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	if _, err := s.Write(request); err != nil {
		_ = s.Reset()
		return nil, fmt.Errorf("write request: %w", err)
	}
	if err := s.CloseWrite(); err != nil {
		_ = s.Reset()
		return nil, fmt.Errorf("close write: %w", err)
	}
	resp, err := ReadAll(s, MaxResponseSize)
	if err != nil {
		_ = s.Reset()
		return nil, err
	}
	_ = s.Close()
	return resp, nil
}

// CallCBOR marshals req, calls, and unmarshals into resp. An empty answer
// (the server closed without responding) yields io.ErrUnexpectedEOF.
func CallCBOR(ctx context.Context, h host.Host, p peer.ID, proto protocol.ID, req, resp any) error {
	b, err := Marshal(req)
	if err != nil {
		return fmt.Errorf("marshal: %w", err)
	}
	out, err := Call(ctx, h, p, proto, b)
	if err != nil {
		return err
	}
	if len(out) == 0 {
		return io.ErrUnexpectedEOF
	}
	return Unmarshal(out, resp)
}
