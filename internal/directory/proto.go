package directory

import (
	"errors"
	"fmt"

	"github.com/fxamacker/cbor/v2"

	"github.com/duskchat/dusk-relay/internal/reqresp"
)

// ProtocolID is the request-response protocol of the peer directory.
const ProtocolID = "/dusk/directory/1.0.0"

// ErrBadMessage is wrapped by every decoding error of the wire types.
var ErrBadMessage = errors.New("directory: malformed message")

// RequestKind names the variant of a Request.
type RequestKind uint8

// Request variants, in the Rust enum's declaration order.
const (
	RequestRegister RequestKind = iota + 1
	RequestSearch
	RequestRemove
)

// Request is the Rust `DirectoryRequest` enum:
// Register{display_name, relay_addr} | Search{query} | Remove.
type Request struct {
	Kind        RequestKind
	DisplayName string // Register
	RelayAddr   string // Register; "" when the (legacy) client omits it
	Query       string // Search
}

// ResponseKind names the variant of a Response.
type ResponseKind uint8

// Response variants, in the Rust enum's declaration order.
const (
	ResponseOk ResponseKind = iota + 1
	ResponseResults
	ResponseError
)

// Response is the Rust `DirectoryResponse` enum: Ok | Results(Vec<entry>) | Error(String).
type Response struct {
	Kind    ResponseKind
	Results []Profile // ResponseResults; nil encodes as an empty array
	Error   string    // ResponseError
}

// Profile is the Rust `DirectoryProfileEntry`; field order is the wire order.
type Profile struct {
	PeerID      string `cbor:"peer_id"`
	DisplayName string `cbor:"display_name"`
	LastSeen    uint64 `cbor:"last_seen"`
	RelayAddr   string `cbor:"relay_addr"`
}

// Wire bodies of the struct variants. Field order = Rust declaration order,
// no omitempty: the Rust client always emits relay_addr.
type registerBody struct {
	DisplayName string `cbor:"display_name"`
	RelayAddr   string `cbor:"relay_addr"`
}

type searchBody struct {
	Query string `cbor:"query"`
}

// One-entry wrappers give the serde externally-tagged form `a1 <name> <body>`.
type registerWrap struct {
	V registerBody `cbor:"Register"`
}

type searchWrap struct {
	V searchBody `cbor:"Search"`
}

type resultsWrap struct {
	V []Profile `cbor:"Results"`
}

type errorWrap struct {
	V string `cbor:"Error"`
}

const (
	nameRegister = "Register"
	nameSearch   = "Search"
	nameRemove   = "Remove"
	nameOk       = "Ok"
	nameResults  = "Results"
	nameError    = "Error"
)

// MarshalCBOR encodes the request exactly as cbor4ii/serde does.
func (r Request) MarshalCBOR() ([]byte, error) {
	switch r.Kind {
	case RequestRegister:
		return reqresp.Marshal(registerWrap{registerBody{r.DisplayName, r.RelayAddr}})
	case RequestSearch:
		return reqresp.Marshal(searchWrap{searchBody{r.Query}})
	case RequestRemove:
		return reqresp.Marshal(nameRemove) // unit variant: bare text string
	default:
		return nil, fmt.Errorf("directory: marshal request: unknown kind %d", r.Kind)
	}
}

// UnmarshalCBOR accepts what the Rust relay's decoder (cbor4ii) accepts for
// these shapes: a text string for unit variants, a map with exactly one entry
// for the others; unknown struct fields are skipped and a missing relay_addr
// defaults to "" (the legacy Register shape).
func (r *Request) UnmarshalCBOR(data []byte) error {
	name, body, err := splitEnum(data)
	if err != nil {
		return err
	}
	switch name {
	case nameRegister:
		if body == nil {
			return fmt.Errorf("%w: Register without body", ErrBadMessage)
		}
		fields, err := structFields(body, "display_name", "relay_addr")
		if err != nil {
			return err
		}
		if fields["display_name"] == nil {
			return fmt.Errorf("%w: missing field display_name", ErrBadMessage)
		}
		*r = Request{Kind: RequestRegister, DisplayName: *fields["display_name"]}
		if ra := fields["relay_addr"]; ra != nil {
			r.RelayAddr = *ra
		}
		return nil
	case nameSearch:
		if body == nil {
			return fmt.Errorf("%w: Search without body", ErrBadMessage)
		}
		fields, err := structFields(body, "query")
		if err != nil {
			return err
		}
		if fields["query"] == nil {
			return fmt.Errorf("%w: missing field query", ErrBadMessage)
		}
		*r = Request{Kind: RequestSearch, Query: *fields["query"]}
		return nil
	case nameRemove:
		// {"Remove": null} is accepted at top level by cbor4ii too.
		if body != nil && !isNull(body) {
			return fmt.Errorf("%w: Remove with a value", ErrBadMessage)
		}
		*r = Request{Kind: RequestRemove}
		return nil
	default:
		return fmt.Errorf("%w: unknown request variant %q", ErrBadMessage, name)
	}
}

// MarshalCBOR encodes the response exactly as cbor4ii/serde does.
func (r Response) MarshalCBOR() ([]byte, error) {
	switch r.Kind {
	case ResponseOk:
		return reqresp.Marshal(nameOk)
	case ResponseResults:
		return reqresp.Marshal(resultsWrap{r.Results})
	case ResponseError:
		return reqresp.Marshal(errorWrap{r.Error})
	default:
		return nil, fmt.Errorf("directory: marshal response: unknown kind %d", r.Kind)
	}
}

// UnmarshalCBOR decodes a response (used by clients and tests).
func (r *Response) UnmarshalCBOR(data []byte) error {
	name, body, err := splitEnum(data)
	if err != nil {
		return err
	}
	switch name {
	case nameOk:
		if body != nil && !isNull(body) {
			return fmt.Errorf("%w: Ok with a value", ErrBadMessage)
		}
		*r = Response{Kind: ResponseOk}
		return nil
	case nameResults:
		if body == nil || isNull(body) {
			return fmt.Errorf("%w: Results must be an array", ErrBadMessage)
		}
		var list []Profile
		if err := reqresp.Unmarshal(body, &list); err != nil {
			return fmt.Errorf("%w: Results: %w", ErrBadMessage, err)
		}
		if list == nil {
			list = []Profile{}
		}
		*r = Response{Kind: ResponseResults, Results: list}
		return nil
	case nameError:
		if body == nil || isNull(body) {
			return fmt.Errorf("%w: Error must be a string", ErrBadMessage)
		}
		var s string
		if err := reqresp.Unmarshal(body, &s); err != nil {
			return fmt.Errorf("%w: Error: %w", ErrBadMessage, err)
		}
		*r = Response{Kind: ResponseError, Error: s}
		return nil
	default:
		return fmt.Errorf("%w: unknown response variant %q", ErrBadMessage, name)
	}
}

// UnmarshalCBOR decodes a profile entry: unknown keys skipped, relay_addr
// optional, the other fields required (as serde requires them).
func (p *Profile) UnmarshalCBOR(data []byte) error {
	var aux struct {
		PeerID      *string         `cbor:"peer_id"`
		DisplayName *string         `cbor:"display_name"`
		LastSeen    *uint64         `cbor:"last_seen"`
		RelayAddr   cbor.RawMessage `cbor:"relay_addr"`
	}
	if err := reqresp.Unmarshal(data, &aux); err != nil {
		return fmt.Errorf("%w: profile: %w", ErrBadMessage, err)
	}
	if aux.PeerID == nil || aux.DisplayName == nil || aux.LastSeen == nil {
		return fmt.Errorf("%w: profile: missing field", ErrBadMessage)
	}
	*p = Profile{PeerID: *aux.PeerID, DisplayName: *aux.DisplayName, LastSeen: *aux.LastSeen}
	if aux.RelayAddr != nil {
		if isNull(aux.RelayAddr) {
			return fmt.Errorf("%w: profile: relay_addr is null", ErrBadMessage)
		}
		if err := reqresp.Unmarshal(aux.RelayAddr, &p.RelayAddr); err != nil {
			return fmt.Errorf("%w: profile: relay_addr: %w", ErrBadMessage, err)
		}
	}
	return nil
}

// splitEnum returns the variant name and, for the map form, the raw value
// (nil for the text-string form). Like cbor4ii, only a text string or a
// definite map whose head is exactly 0xa1 is an enum; 0 or 2+ entries and
// indefinite maps are rejected.
func splitEnum(data []byte) (string, cbor.RawMessage, error) {
	if len(data) == 0 {
		return "", nil, fmt.Errorf("%w: empty", ErrBadMessage)
	}
	switch major := data[0] >> 5; {
	case major == 3: // text string: unit variant
		var name string
		if err := reqresp.Unmarshal(data, &name); err != nil {
			return "", nil, fmt.Errorf("%w: %w", ErrBadMessage, err)
		}
		return name, nil, nil
	case data[0] == 0xa1:
		var m map[string]cbor.RawMessage
		if err := reqresp.Unmarshal(data, &m); err != nil {
			return "", nil, fmt.Errorf("%w: %w", ErrBadMessage, err)
		}
		for name, body := range m { // exactly one entry (head 0xa1)
			return name, body, nil
		}
	}
	return "", nil, fmt.Errorf("%w: enum must be a text string or a 1-entry map (head 0x%02x)", ErrBadMessage, data[0])
}

// structFields decodes a serde struct body whose fields are all strings.
// Unknown keys are skipped; duplicate keys (rejected by reqresp's decoder)
// and null or non-string values are errors, as in cbor4ii.
func structFields(body cbor.RawMessage, names ...string) (map[string]*string, error) {
	var m map[string]cbor.RawMessage
	if err := reqresp.Unmarshal(body, &m); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadMessage, err)
	}
	if m == nil {
		return nil, fmt.Errorf("%w: struct body is not a map", ErrBadMessage)
	}
	out := make(map[string]*string, len(names))
	for _, n := range names {
		raw, ok := m[n]
		if !ok {
			continue
		}
		if isNull(raw) {
			return nil, fmt.Errorf("%w: field %s is null", ErrBadMessage, n)
		}
		var s string
		if err := reqresp.Unmarshal(raw, &s); err != nil {
			return nil, fmt.Errorf("%w: field %s: %w", ErrBadMessage, n, err)
		}
		out[n] = &s
	}
	return out, nil
}

func isNull(raw []byte) bool { return len(raw) == 1 && (raw[0] == 0xf6 || raw[0] == 0xf7) }
