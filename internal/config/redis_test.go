package config

import (
	"errors"
	"strings"
	"testing"
)

func TestRedisURL(t *testing.T) {
	const pw = "hunter2-secret"
	for _, tc := range []struct {
		val    string
		ok     bool
		engine string
	}{
		{"", true, "memory"},
		{"redis://:" + pw + "@cache.example:6379/2", true, "redis"},
		{"rediss://dusk:" + pw + "@10.0.0.5", true, "redis"},
		{"redis://:" + pw + "@n1:6379?addr=n2:6379&addr=n3:6379", true, "redis"},
		{"postgres://dusk:" + pw + "@db/dusk", false, ""},
		{"redis:///0", false, ""},
		{"dusk:" + pw + "@cache:6379", false, ""},
		{"redis://:" + pw + "@[::1", false, ""},
	} {
		clearEnv(t)
		t.Setenv("DUSK_TURN_PUBLIC_IP", "203.0.113.7")
		t.Setenv("DUSK_REDIS_URL", tc.val)
		c, err := Load()
		if tc.ok {
			if err != nil {
				t.Fatalf("%q: %v", tc.val, err)
			}
			if c.RedisURL != tc.val || c.RendezvousEngine() != tc.engine {
				t.Fatalf("%q: url %q engine %q", tc.val, c.RedisURL, c.RendezvousEngine())
			}
			continue
		}
		var ce *Error
		if !errors.As(err, &ce) || ce.Var != "DUSK_REDIS_URL" || !errors.Is(err, ErrInvalid) {
			t.Fatalf("%q: %v, want an error naming DUSK_REDIS_URL", tc.val, err)
		}
		if strings.Contains(err.Error(), pw) {
			t.Fatalf("%q: the error shows the password: %v", tc.val, err)
		}
	}
	// Discover without a namespace has no order across the namespaces
	// Redis shards: refused at start, naming the variable to change.
	clearEnv(t)
	t.Setenv("DUSK_TURN_PUBLIC_IP", "203.0.113.7")
	t.Setenv("DUSK_REDIS_URL", "redis://127.0.0.1:6379")
	t.Setenv("DUSK_RENDEZVOUS_DISCOVER_ALL", "true")
	var ce *Error
	if _, err := Load(); !errors.As(err, &ce) || ce.Var != "DUSK_RENDEZVOUS_DISCOVER_ALL" {
		t.Fatalf("discover-all with Redis: %v", err)
	}
}
