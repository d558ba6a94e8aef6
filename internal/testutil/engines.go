package testutil

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Engines for tests of the cluster backends. .ci/engines.sh makes them
// available (an engine already answering, or private instances) and exports
// these variables; unset, the usual local ports are tried.
const (
	PostgresURLEnv     = "DUSK_TEST_POSTGRES_URL"
	RedisURLEnv        = "DUSK_TEST_REDIS_URL"
	defaultPostgresURL = "postgres://postgres@127.0.0.1:5432/postgres"
	defaultRedisURL    = "redis://127.0.0.1:6379"
)

// engineMissing fails the test in CI (where .ci/run provides the engines,
// so a missing one is a broken setup) and skips it elsewhere.
func engineMissing(t testing.TB, engine, env, target string, err error) {
	t.Helper()
	msg := fmt.Sprintf("%s not reachable at %s (%v); set %s or run the tests through .ci/engines.sh",
		engine, target, err, env)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

func randomName(prefix string) string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparseable URL)"
	}
	return u.Redacted()
}

// PostgresURL creates a fresh, empty database for this test (dropped at
// cleanup, also when connections are still open) and returns its URL.
func PostgresURL(t testing.TB) string {
	t.Helper()
	base := os.Getenv(PostgresURLEnv)
	if base == "" {
		base = defaultPostgresURL
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, base)
	if err != nil {
		engineMissing(t, "PostgreSQL", PostgresURLEnv, redactURL(base), err)
	}
	defer func() { _ = admin.Close(context.Background()) }()
	name := randomName("dusk_test_")
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create test database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, base)
		if err != nil {
			t.Logf("drop test database %s: %v", name, err)
			return
		}
		defer func() { _ = c.Close(context.Background()) }()
		if _, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Logf("drop test database %s: %v", name, err)
		}
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("%s: %v", PostgresURLEnv, err)
	}
	u.Path = "/" + name
	return u.String()
}

// RedisURL returns the test Redis's URL and a key prefix of this test's
// own; keys under the prefix are deleted at cleanup.
func RedisURL(t testing.TB) (redisURL, prefix string) {
	t.Helper()
	base := os.Getenv(RedisURLEnv)
	if base == "" {
		base = defaultRedisURL
	}
	if _, err := redisDo(base, "PING"); err != nil {
		engineMissing(t, "Redis", RedisURLEnv, redactURL(base), err)
	}
	prefix = randomName("dusk_test_") + ":"
	t.Cleanup(func() {
		// Cluster-style keys may carry the prefix inside a hash tag.
		const script = `local n = 0
for _, p in ipairs(ARGV) do
  for _, k in ipairs(redis.call('KEYS', p)) do redis.call('DEL', k); n = n + 1 end
end
return n`
		if _, err := redisDo(base, "EVAL", script, "0", prefix+"*", "*"+prefix+"*"); err != nil {
			t.Logf("redis cleanup of %s*: %v", prefix, err)
		}
	})
	return base, prefix
}

// redisDo sends one command (after AUTH/SELECT from the URL) over a fresh
// connection and returns the first line of its reply, failing on an error
// reply. A few lines of RESP keep this package free of a Redis client.
func redisDo(rawURL string, args ...string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", fmt.Errorf("parse URL: %w", err)
	}
	if u.Scheme != "redis" {
		return "", fmt.Errorf("scheme %q: want redis://", u.Scheme)
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "6379")
	}
	conn, err := net.DialTimeout("tcp", host, 3*time.Second)
	if err != nil {
		return "", err
	}
	defer func() { _ = conn.Close() }()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	var cmds [][]string
	if u.User != nil {
		if pw, ok := u.User.Password(); ok {
			cmds = append(cmds, []string{"AUTH", u.User.Username(), pw})
		}
	}
	if db := strings.Trim(u.Path, "/"); db != "" && db != "0" {
		cmds = append(cmds, []string{"SELECT", db})
	}
	cmds = append(cmds, args)
	var b strings.Builder
	for _, c := range cmds {
		fmt.Fprintf(&b, "*%d\r\n", len(c))
		for _, a := range c {
			fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
		}
	}
	if _, err := conn.Write([]byte(b.String())); err != nil {
		return "", err
	}
	r := bufio.NewReader(conn)
	var line string
	for range cmds {
		if line, err = r.ReadString('\n'); err != nil {
			return "", err
		}
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "-") {
			return "", fmt.Errorf("redis: %s", line[1:])
		}
		// AUTH and SELECT answer +OK; only the last reply is returned
		// (its first line: enough for +PONG, :n or $len).
	}
	return line, nil
}
