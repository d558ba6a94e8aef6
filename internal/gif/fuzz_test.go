package gif

import (
	"bytes"
	"context"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/config"
	"github.com/duskchat/dusk-relay/internal/reqresp"
	"github.com/duskchat/dusk-relay/internal/testutil"
)

// FuzzGifRequest feeds arbitrary bytes to the /dusk/gif/1.0.0 handler.
// Properties: no panic; a decodable GifRequest re-encodes to bytes that
// decode to the same value; the upstream URL carries the query and a
// limit <= MaxLimit; without an API key the answer is the empty result
// list (`{"results": []}`), and undecodable input gets no answer.
func FuzzGifRequest(f *testing.F) {
	for _, h := range []string{
		"a3646b696e646673656172636865717565727963636174656c696d697414",
		"a3646b696e64687472656e64696e6765717565727960656c696d69741832",
		"a3646b696e646673656172636865717565727963636174656c696d69741b0000000000000014",
		"a3646b696e646673656172636865717565727963636174656c696d69741a00000014",
		"a3646b696e646673656172636865717565727963636174656c696d697420",
		"a3006673656172636801636361740214",
		"a0", "f6", "", "80", "bf646b696e6466736561726368ff",
	} {
		f.Add(testutil.MustHex(h))
	}
	for _, b := range testutil.WireVectors("GifRequest") {
		f.Add(b)
	}
	s := New(config.Gif{GifAPIBase: "http://127.0.0.1:1/v2"}, zap.NewNop(), nil)
	f.Cleanup(func() { _ = s.Close() })
	withKey := &Service{base: "https://api.klipy.com/v2", key: "k+y &x"}
	emptyAnswer := testutil.MustHex("a167726573756c747380")

	f.Fuzz(func(t *testing.T, raw []byte) {
		var req GifRequest
		decErr := reqresp.Unmarshal(raw, &req)
		out, err := s.handle(context.Background(), "", raw)
		if decErr != nil {
			if err == nil || out != nil {
				t.Fatalf("answered undecodable input %x: %x", raw, out)
			}
			return
		}
		if err != nil || !bytes.Equal(out, emptyAnswer) {
			t.Fatalf("keyless answer to %+v = %x, %v", req, out, err)
		}
		enc, err := reqresp.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		var again GifRequest
		if err := reqresp.Unmarshal(enc, &again); err != nil || again != req {
			t.Fatalf("round trip %+v -> %x -> %+v (%v)", req, enc, again, err)
		}

		u, err := url.Parse(withKey.upstreamURL(req))
		if err != nil {
			t.Fatalf("upstream URL for %+v does not parse: %v", req, err)
		}
		q := u.Query()
		if q.Get("key") != withKey.key {
			t.Fatalf("key mangled in %s", u)
		}
		if n, err := strconv.Atoi(q.Get("limit")); err != nil || n < 1 || n > MaxLimit || n > max(int(req.Limit), 1) {
			t.Fatalf("limit %q for request limit %d", q.Get("limit"), req.Limit)
		}
		search := req.Kind == "search" && strings.TrimSpace(req.Query) != ""
		if search != strings.HasSuffix(u.Path, "/search") {
			t.Fatalf("path %s for %+v", u.Path, req)
		}
		if c := Canonical(req); search && (q.Get("q") != c.Query || len(c.Query) > MaxQueryBytes || c.Query == "") {
			t.Fatalf("query %q became %q", req.Query, q.Get("q"))
		}
	})
}

// FuzzParseKlipy feeds arbitrary upstream bodies to the Klipy parser: no
// panic, and whatever it returns encodes into a response that decodes to
// the same results.
func FuzzParseKlipy(f *testing.F) {
	for _, s := range []string{
		`{"results":[{"id":"1","title":"t","content_description":"c","media_formats":{"gif":{"url":"https://g"},"tinygif":{"url":"https://t","dims":[1,2]}}}]}`,
		`{"results":[{"media_formats":{"gif":{"url":"a"},"tinygif":{"url":"b","dims":[-1,1e3]}}}]}`,
		`{"results":[{"media_formats":{"gif":{"url":"a"},"tinygif":{"url":"b","dims":[18446744073709551615,4294967296]}}}]}`,
		`{"results":null}`, `{"results":{}}`, `[]`, `null`, `{} {}`, `{"results":[1,"x",null,[]]}`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		res, err := parseKlipy(body)
		if err != nil {
			return
		}
		enc, err := reqresp.Marshal(GifResponse{Results: res})
		if err != nil {
			t.Fatalf("encode %+v: %v", res, err)
		}
		var back GifResponse
		if err := reqresp.Unmarshal(enc, &back); err != nil {
			t.Fatalf("decode own response %x: %v", enc, err)
		}
		if len(res) == 0 && back.Results != nil && len(back.Results) != 0 {
			t.Fatalf("empty results came back as %+v", back.Results)
		}
		if len(res) > 0 && !reflect.DeepEqual(back.Results, res) {
			t.Fatalf("results changed in transit: %+v vs %+v", res, back.Results)
		}
	})
}
