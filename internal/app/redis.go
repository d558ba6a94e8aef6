package app

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/config"
)

// redisKeyPrefix starts every key the relay writes in Redis; the relays
// of one cluster share it (another cluster on the same server uses
// another database number in its URL).
const redisKeyPrefix = "dusk:"

// openRedis returns the client for DUSK_REDIS_URL, or nil when unset. It
// does not connect: a relay starting while Redis is down starts anyway,
// its requests needing Redis get their typed errors, and go-redis
// reconnects by itself.
func openRedis(cfg *config.Config, log *zap.Logger) (*redis.Client, error) {
	if cfg.RedisURL == "" {
		return nil, nil
	}
	opt, err := redis.ParseURL(cfg.RedisURL)
	if err != nil {
		// The value is a secret: name the variable, never echo it (go-redis
		// errors may quote the URL).
		return nil, &config.Error{Var: "DUSK_REDIS_URL", Value: config.RedactURL(cfg.RedisURL),
			Err: errors.New("not a usable Redis URL")}
	}
	// Short timeouts: a request waits at most this for an unreachable
	// Redis before it gets E_UNAVAILABLE.
	opt.DialTimeout = 2 * time.Second
	opt.ReadTimeout = 2 * time.Second
	opt.WriteTimeout = 2 * time.Second
	opt.MaxRetries = 1
	opt.DialerRetries = 1
	// go-redis prints dial failures to stderr, one per request while Redis
	// is down; they go to the relay's log at debug level instead.
	redis.SetLogger(redisLog{log.Named("redis")})
	return redis.NewClient(opt), nil
}

// redisLog adapts go-redis's logger to zap.
type redisLog struct{ log *zap.Logger }

func (l redisLog) Printf(_ context.Context, format string, v ...any) {
	if ce := l.log.Check(zap.DebugLevel, "go-redis"); ce != nil {
		ce.Write(zap.String("detail", fmt.Sprintf(format, v...)))
	}
}
