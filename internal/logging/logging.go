// Package logging builds the daemon's zap logger from config.Log.
package logging

import (
	"fmt"
	"strings"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/duskchat/dusk-relay/internal/config"
)

// Level maps the Rust relay's level names onto zap levels. zap has no
// trace level, so trace means debug.
func Level(name string) (zapcore.Level, error) {
	switch strings.ToLower(strings.TrimSpace(name)) {
	case "error":
		return zapcore.ErrorLevel, nil
	case "warn":
		return zapcore.WarnLevel, nil
	case "", "info":
		return zapcore.InfoLevel, nil
	case "debug", "trace":
		return zapcore.DebugLevel, nil
	}
	return 0, fmt.Errorf("unknown log level %q", name)
}

// New builds a logger writing to stderr (stdout carries the address lines).
func New(cfg config.Log) (*zap.Logger, error) {
	lvl, err := Level(cfg.LogLevel)
	if err != nil {
		return nil, err
	}
	var zc zap.Config
	if cfg.LogFormat == "json" {
		zc = zap.NewProductionConfig()
		zc.EncoderConfig.TimeKey = "ts"
		zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	} else {
		zc = zap.NewDevelopmentConfig()
		zc.Development = false
		zc.EncoderConfig.EncodeLevel = zapcore.CapitalLevelEncoder
	}
	// Operators read error lines, not Go stacks.
	zc.DisableStacktrace = true
	zc.Level = zap.NewAtomicLevelAt(lvl)
	zc.OutputPaths = []string{"stderr"}
	zc.ErrorOutputPaths = []string{"stderr"}
	log, err := zc.Build()
	if err != nil {
		return nil, fmt.Errorf("build logger: %w", err)
	}
	return log, nil
}
