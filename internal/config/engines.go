package config

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
)

// Engine URLs (DUSK_DIRECTORY_URL, ...) carry credentials: they are
// validated here without ever being echoed, and logged only redacted.

// RedactURL returns raw with its password replaced, for logs; an
// unparseable value is not shown at all.
func RedactURL(raw string) string {
	if raw == "" {
		return ""
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparseable, not shown)"
	}
	if u.Opaque != "" {
		// "user:password@host" without "//" parses as scheme "user" and
		// opaque text, which Redacted shows as it is.
		return u.Scheme + ":(not shown)"
	}
	return u.Redacted()
}

// validateEngineURL accepts "" (unset) or an absolute URL with one of
// schemes and a host. The error names the variable and shows the value
// redacted.
func validateEngineURL(name, raw string, schemes ...string) error {
	if raw == "" {
		return nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error repeats the value, password included
		}
		return &Error{Var: name, Value: RedactURL(raw), Err: fmt.Errorf("not a URL: %w", err)}
	}
	if !slices.Contains(schemes, u.Scheme) {
		return &Error{Var: name, Value: RedactURL(raw), Err: fmt.Errorf("want a %s:// URL", schemes[0])}
	}
	if u.Host == "" {
		return &Error{Var: name, Value: RedactURL(raw), Err: errors.New("URL has no host")}
	}
	return nil
}

// DirectoryEngine names the directory's storage engine.
func (d Directory) DirectoryEngine() string {
	if d.DirectoryURL != "" {
		return "postgres"
	}
	return "sqlite"
}

// RendezvousEngine names where rendezvous registrations live.
func (r Rendezvous) RendezvousEngine() string {
	if r.RedisURL != "" {
		return "redis"
	}
	return "memory"
}
