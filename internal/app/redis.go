package app

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/config"
)

// redisKeyPrefix starts every key the relay writes in Redis; the relays
// of one cluster share it (another cluster on the same server uses
// another database number in its URL).
const redisKeyPrefix = "dusk:"

// Short timeouts, unless the URL sets them: a request waits at most about
// this for an unreachable Redis before it gets E_UNAVAILABLE.
const redisTimeout = 2 * time.Second

// openRedis returns the client for DUSK_REDIS_URL, or nil when unset: one
// server, or a Redis Cluster when the URL lists more seed nodes with
// ?addr=host:port. It does not connect: a relay starting while Redis is
// down starts anyway, its requests needing Redis get their typed errors,
// and go-redis reconnects by itself.
func openRedis(cfg *config.Config, log *zap.Logger) (redis.UniversalClient, error) {
	if cfg.RedisURL == "" {
		return nil, nil
	}
	// The value is a secret: name the variable, never echo it (go-redis
	// errors may quote the URL).
	bad := &config.Error{Var: "DUSK_REDIS_URL", Value: config.RedactURL(cfg.RedisURL),
		Err: errors.New("not a usable Redis URL")}
	u, err := url.Parse(cfg.RedisURL)
	if err != nil {
		return nil, bad
	}
	// go-redis prints dial failures to stderr, one per request while Redis
	// is down; they go to the relay's log at debug level instead.
	redis.SetLogger(redisLog{log.Named("redis")})
	if u.Query().Has("addr") {
		opt, err := redis.ParseClusterURL(cfg.RedisURL)
		if err != nil {
			return nil, bad
		}
		opt.DialTimeout = orDefault(opt.DialTimeout, redisTimeout)
		opt.ReadTimeout = orDefault(opt.ReadTimeout, redisTimeout)
		opt.WriteTimeout = orDefault(opt.WriteTimeout, redisTimeout)
		opt.DialerRetries = max(opt.DialerRetries, 1)
		return redis.NewClusterClient(opt), nil
	}
	opt, err := redis.ParseURL(cfg.RedisURL)
	if err != nil {
		return nil, bad
	}
	opt.DialTimeout = orDefault(opt.DialTimeout, redisTimeout)
	opt.ReadTimeout = orDefault(opt.ReadTimeout, redisTimeout)
	opt.WriteTimeout = orDefault(opt.WriteTimeout, redisTimeout)
	if opt.MaxRetries == 0 {
		opt.MaxRetries = 1
	}
	if opt.DialerRetries == 0 {
		opt.DialerRetries = 1
	}
	return redis.NewClient(opt), nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// redisLog adapts go-redis's logger to zap.
type redisLog struct{ log *zap.Logger }

func (l redisLog) Printf(_ context.Context, format string, v ...any) {
	if ce := l.log.Check(zap.DebugLevel, "go-redis"); ce != nil {
		ce.Write(zap.String("detail", fmt.Sprintf(format, v...)))
	}
}
