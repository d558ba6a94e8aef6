package gif

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

var (
	// ErrUpstreamStatus is a non-2xx answer from Klipy.
	ErrUpstreamStatus = errors.New("gif: upstream status")
	// ErrUpstreamBody is an unreadable, oversized or non-JSON answer.
	ErrUpstreamBody = errors.New("gif: upstream body")
)

// defaultDims is used when tinygif carries no usable dims (Rust default).
var defaultDims = [2]uint32{220, 165}

// upstreamURL builds the Klipy URL with the Rust relay's parameter order
// for a Canonical request.
func (s *Service) upstreamURL(req GifRequest) string {
	req = Canonical(req)
	limit := req.Limit
	if req.Kind == "search" {
		return fmt.Sprintf("%s/search?q=%s&key=%s&limit=%d&media_filter=tinygif,gif",
			s.base, queryEscape(req.Query), queryEscape(s.key), limit)
	}
	return fmt.Sprintf("%s/featured?key=%s&limit=%d&media_filter=tinygif,gif",
		s.base, queryEscape(s.key), limit)
}

// queryEscape matches Rust's urlencoding::encode: everything but
// A-Z a-z 0-9 - _ . ~ is percent-encoded, space as %20 (not +).
func queryEscape(v string) string {
	// QueryEscape encodes a literal '+' as %2B, so every '+' left in
	// its output stands for a space.
	return strings.ReplaceAll(url.QueryEscape(v), "+", "%20")
}

func (s *Service) upstream(ctx context.Context, req GifRequest) ([]GifResult, error) {
	hreq, err := http.NewRequestWithContext(ctx, http.MethodGet, s.upstreamURL(req), nil)
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	hreq.Header.Set("Accept", "application/json")
	resp, err := s.client.Do(hreq)
	if err != nil {
		return nil, fmt.Errorf("get: %w", err)
	}
	defer func() {
		// Drain a little so the connection can be reused.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		_ = resp.Body.Close()
	}()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, fmt.Errorf("%w %d", ErrUpstreamStatus, resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxUpstreamBody+1))
	if err != nil {
		return nil, fmt.Errorf("%w: read: %w", ErrUpstreamBody, err)
	}
	if len(body) > MaxUpstreamBody {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrUpstreamBody, MaxUpstreamBody)
	}
	return parseKlipy(body)
}

// parseKlipy maps a Klipy (Tenor v2 shaped) response. Like the Rust relay
// it reads a generic JSON value, so wrong types only skip or default a
// field instead of failing the whole answer; only invalid JSON fails.
func parseKlipy(body []byte) ([]GifResult, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("%w: json: %w", ErrUpstreamBody, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: json: trailing data", ErrUpstreamBody)
	}
	arr, _ := field(v, "results").([]any)
	out := make([]GifResult, 0, len(arr))
	for _, r := range arr {
		gifURL, ok1 := field(r, "media_formats", "gif", "url").(string)
		preview, ok2 := field(r, "media_formats", "tinygif", "url").(string)
		if !ok1 || !ok2 {
			continue // Rust skips entries lacking either URL
		}
		id, _ := field(r, "id").(string)
		title, ok := field(r, "content_description").(string)
		if !ok {
			title, _ = field(r, "title").(string)
		}
		out = append(out, GifResult{
			ID:      id,
			Title:   title,
			URL:     gifURL,
			Preview: preview,
			Dims:    dims(field(r, "media_formats", "tinygif", "dims")),
		})
	}
	return out, nil
}

// field walks nested objects; anything missing or not an object is nil.
func field(v any, path ...string) any {
	for _, k := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

// dims takes the first two elements if both are non-negative integers
// (serde_json as_u64), truncated to u32 as Rust's `as u32` does.
func dims(v any) [2]uint32 {
	arr, ok := v.([]any)
	if !ok || len(arr) < 2 {
		return defaultDims
	}
	var out [2]uint32
	for i := range 2 {
		n, ok := arr[i].(json.Number)
		if !ok {
			return defaultDims
		}
		u, err := strconv.ParseUint(string(n), 10, 64)
		if err != nil {
			return defaultDims
		}
		out[i] = uint32(u) //nolint:gosec // deliberate truncation, like Rust `as u32`
	}
	return out
}
