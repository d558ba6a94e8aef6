package turn

import (
	"fmt"
	"sync"
	"time"

	"github.com/pion/logging"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// limiter lets one log line through per interval and counts the rest, so
// remote clients cannot flood the log.
type limiter struct {
	interval time.Duration

	mu         sync.Mutex
	next       time.Time
	suppressed int
}

func newLimiter(interval time.Duration) *limiter { return &limiter{interval: interval} }

// allow reports whether to log now and how many lines were held back since
// the last one.
func (l *limiter) allow(now time.Time) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Before(l.next) {
		l.suppressed++
		return false, 0
	}
	n := l.suppressed
	l.suppressed = 0
	l.next = now.Add(l.interval)
	return true, n
}

// pionLoggers adapts pion's logging to zap. pion logs per packet at debug
// and trace and logs remote-triggered events (unknown peers, failed
// requests) at info and above, so: trace/debug are dropped, info becomes
// debug, warn/error stay warn; all rate-limited together.
type pionLoggers struct {
	log *zap.Logger
	lim *limiter
}

func (f pionLoggers) NewLogger(scope string) logging.LeveledLogger {
	return &pionLogger{log: f.log.Named(scope), lim: f.lim}
}

type pionLogger struct {
	log *zap.Logger
	lim *limiter
}

func (l *pionLogger) emit(level zapcore.Level, msg string) {
	if !l.log.Core().Enabled(level) {
		return
	}
	if ok, suppressed := l.lim.allow(time.Now()); ok {
		l.log.Check(level, msg).Write(zap.Int("suppressed", suppressed))
	}
}

func (l *pionLogger) emitf(level zapcore.Level, format string, args ...any) {
	// Check first: formatting is the expensive part.
	if !l.log.Core().Enabled(level) {
		return
	}
	if ok, suppressed := l.lim.allow(time.Now()); ok {
		l.log.Check(level, fmt.Sprintf(format, args...)).Write(zap.Int("suppressed", suppressed))
	}
}

func (l *pionLogger) Trace(string)              {}
func (l *pionLogger) Tracef(string, ...any)     {}
func (l *pionLogger) Debug(string)              {}
func (l *pionLogger) Debugf(string, ...any)     {}
func (l *pionLogger) Info(msg string)           { l.emit(zapcore.DebugLevel, msg) }
func (l *pionLogger) Infof(f string, a ...any)  { l.emitf(zapcore.DebugLevel, f, a...) }
func (l *pionLogger) Warn(msg string)           { l.emit(zapcore.WarnLevel, msg) }
func (l *pionLogger) Warnf(f string, a ...any)  { l.emitf(zapcore.WarnLevel, f, a...) }
func (l *pionLogger) Error(msg string)          { l.emit(zapcore.WarnLevel, msg) }
func (l *pionLogger) Errorf(f string, a ...any) { l.emitf(zapcore.WarnLevel, f, a...) }
