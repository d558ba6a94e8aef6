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
	"go.uber.org/zap"
)

const (
	// MaxRequestSize is the request cap of the Rust codec (1 MiB).
	MaxRequestSize = 1 << 20
	// MaxResponseSize is the response cap of the Rust codec (10 MiB).
	MaxResponseSize = 10 << 20
	// ReadTimeout bounds how long a request may take to arrive completely.
	ReadTimeout = 15 * time.Second
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
	readTimeout time.Duration
}

// WithReadTimeout replaces ReadTimeout (tests use short ones).
func WithReadTimeout(d time.Duration) Option {
	return func(o *serveOptions) { o.readTimeout = d }
}

// Serve registers handler for proto on h. Each stream carries exactly one
// request and one response.
func Serve(ctx context.Context, h host.Host, proto protocol.ID, log *zap.Logger, handler Handler, opts ...Option) {
	o := serveOptions{readTimeout: ReadTimeout}
	for _, opt := range opts {
		opt(&o)
	}
	h.SetStreamHandler(proto, func(s network.Stream) {
		handleStream(ctx, s, log, handler, o)
	})
}

func handleStream(ctx context.Context, s network.Stream, log *zap.Logger, handler Handler, o serveOptions) {
	remote := s.Conn().RemotePeer()
	_ = s.SetReadDeadline(time.Now().Add(o.readTimeout))
	req, err := ReadAll(s, MaxRequestSize)
	if err != nil {
		log.Debug("bad request stream", zap.String("protocol", string(s.Protocol())),
			zap.Stringer("peer", remote), zap.Error(err))
		_ = s.Reset()
		return
	}
	resp, err := handler(ctx, remote, req)
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
