package testutil

import (
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
)

// vectorsCopy is a copy of shared/wire-vectors/vectors.json so the golden
// tests also run in a checkout without shared/ beside it.
//
//go:embed testdata/vectors.json
var vectorsCopy []byte

// VectorsJSON returns shared/wire-vectors/vectors.json when CI lays shared/
// beside the clone, else the copy kept in testdata.
func VectorsJSON() []byte {
	if root := repoRoot(); root != "" {
		if raw, err := os.ReadFile(filepath.Join(root, VectorsPath)); err == nil {
			return raw
		}
	}
	return vectorsCopy
}

// VectorsPath is where the golden CBOR vectors live relative to the
// repository root: CI checks out shared/ beside the clone.
const VectorsPath = "../shared/wire-vectors/vectors.json"

// WireVectors returns the bytes of every golden vector (vectors[].hex) and
// hand-built decode check (decode_checks[].input_hex) whose Rust type is one
// of rustTypes.
func WireVectors(rustTypes ...string) [][]byte {
	raw := VectorsJSON()
	var doc struct {
		Vectors []struct {
			RustType string `json:"rust_type"`
			Hex      string `json:"hex"`
		} `json:"vectors"`
		DecodeChecks []struct {
			TargetType string `json:"target_type"`
			InputHex   string `json:"input_hex"`
		} `json:"decode_checks"`
	}
	if json.Unmarshal(raw, &doc) != nil {
		return nil
	}
	want := make(map[string]bool, len(rustTypes))
	for _, t := range rustTypes {
		want[t] = true
	}
	var out [][]byte
	add := func(typ, h string) {
		if !want[typ] {
			return
		}
		if b, err := hex.DecodeString(h); err == nil {
			out = append(out, b)
		}
	}
	for _, v := range doc.Vectors {
		add(v.RustType, v.Hex)
	}
	for _, c := range doc.DecodeChecks {
		add(c.TargetType, c.InputHex)
	}
	return out
}

// repoRoot walks up from the working directory (a package directory under
// go test) to the directory holding go.mod.
func repoRoot() string {
	dir, err := os.Getwd()
	if err != nil {
		return ""
	}
	for i := 0; i < 32; i++ {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
	return ""
}

// MustHex decodes a hex literal of a test seed.
func MustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}
