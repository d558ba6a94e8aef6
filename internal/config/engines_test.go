package config

import (
	"errors"
	"strings"
	"testing"
)

func TestDirectoryURL(t *testing.T) {
	const pw = "hunter2-secret"
	for _, tc := range []struct {
		val    string
		ok     bool
		engine string
	}{
		{"", true, "sqlite"},
		{"postgres://dusk:" + pw + "@db.example:5432/dusk", true, "postgres"},
		{"postgresql://dusk@10.0.0.5/dusk?sslmode=require", true, "postgres"},
		{"mysql://dusk:" + pw + "@db/dusk", false, ""},
		{"postgres:///dusk", false, ""},
		{"dusk:" + pw + "@db/dusk", false, ""},
		{"postgres://dusk:" + pw + "@db:port/dusk", false, ""},
		{"postgres://dusk:" + pw + "@[::1/dusk", false, ""},
	} {
		clearEnv(t)
		t.Setenv("DUSK_TURN_PUBLIC_IP", "203.0.113.7")
		t.Setenv("DUSK_DIRECTORY_URL", tc.val)
		c, err := Load()
		if tc.ok {
			if err != nil {
				t.Fatalf("%q: %v", tc.val, err)
			}
			if c.DirectoryURL != tc.val || c.DirectoryEngine() != tc.engine {
				t.Fatalf("%q: url %q engine %q", tc.val, c.DirectoryURL, c.DirectoryEngine())
			}
			continue
		}
		var ce *Error
		if !errors.As(err, &ce) || ce.Var != "DUSK_DIRECTORY_URL" || !errors.Is(err, ErrInvalid) {
			t.Fatalf("%q: %v, want an error naming DUSK_DIRECTORY_URL", tc.val, err)
		}
		if strings.Contains(err.Error(), pw) {
			t.Fatalf("%q: the error shows the password: %v", tc.val, err)
		}
	}
	if got := RedactURL("postgres://dusk:" + pw + "@db/dusk"); strings.Contains(got, pw) || !strings.Contains(got, "db/dusk") {
		t.Fatalf("RedactURL: %q", got)
	}
}
