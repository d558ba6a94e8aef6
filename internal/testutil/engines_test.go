package testutil

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestPostgresURLFreshDatabaseDropped(t *testing.T) {
	var name string
	t.Run("inner", func(t *testing.T) {
		u := PostgresURL(t)
		c, err := pgx.Connect(context.Background(), u)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = c.Close(context.Background()) }()
		var tables int
		if err := c.QueryRow(context.Background(),
			`SELECT current_database(), (SELECT count(*) FROM pg_tables WHERE schemaname = 'public')`).Scan(&name, &tables); err != nil {
			t.Fatal(err)
		}
		if tables != 0 {
			t.Fatalf("fresh database has %d tables", tables)
		}
		if _, err := c.Exec(context.Background(), `CREATE TABLE x (a int)`); err != nil {
			t.Fatal(err)
		}
		// An open connection does not keep the database from being dropped.
	})
	if name == "" {
		t.Skip("inner test skipped")
	}
	c, err := pgx.Connect(context.Background(), PostgresURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close(context.Background()) }()
	var n int
	if err := c.QueryRow(context.Background(), `SELECT count(*) FROM pg_database WHERE datname = $1`, name).Scan(&n); err != nil || n != 0 {
		t.Fatalf("database %s still exists (%d, %v)", name, n, err)
	}
}

func TestRedisURLPrefixCleaned(t *testing.T) {
	var u, prefix string
	t.Run("inner", func(t *testing.T) {
		u, prefix = RedisURL(t)
		for _, k := range []string{prefix + "a", "{" + prefix + "ns}:b"} {
			if _, err := redisDo(u, "SET", k, "v"); err != nil {
				t.Fatal(err)
			}
		}
		if got, err := redisDo(u, "EXISTS", prefix+"a", "{"+prefix+"ns}:b"); err != nil || got != ":2" {
			t.Fatalf("EXISTS = %q %v", got, err)
		}
	})
	if u == "" {
		t.Skip("inner test skipped")
	}
	if got, err := redisDo(u, "EXISTS", prefix+"a", "{"+prefix+"ns}:b"); err != nil || got != ":0" {
		t.Fatalf("after cleanup EXISTS = %q %v", got, err)
	}
}
