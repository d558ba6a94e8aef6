// Command dusk-relay runs the Dusk relay daemon.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/duskchat/dusk-relay/internal/app"
	"github.com/duskchat/dusk-relay/internal/config"
	"github.com/duskchat/dusk-relay/internal/logging"
	"github.com/duskchat/dusk-relay/internal/metrics"
	"go.uber.org/zap"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

// Exit codes: 1 runtime failure, 2 bad configuration or usage.
const (
	exitFailure = 1
	exitUsage   = 2
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "-h", "--help", "help":
			_ = config.PrintHelp(stdout)
			return 0
		case "-v", "--version", "version":
			fmt.Fprintln(stdout, "dusk-relay", version)
			return 0
		case "healthcheck":
			return healthcheck(stderr)
		case "import-directory":
			return importDirectory(args[1:], stdout, stderr)
		default:
			fmt.Fprintf(stderr, "dusk-relay: unknown argument %q (try --help)\n", args[0])
			return exitUsage
		}
	}

	cfg, err := config.Load()
	if err != nil {
		fmt.Fprintln(stderr, "dusk-relay: configuration error:", err)
		return exitUsage
	}
	log, err := logging.New(cfg.Log)
	if err != nil {
		fmt.Fprintln(stderr, "dusk-relay:", err)
		return exitUsage
	}
	defer func() { _ = log.Sync() }()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if err := app.Run(ctx, cfg, log, stdout, version); err != nil {
		log.Error("dusk-relay stopped with an error", zap.Error(err))
		if errors.Is(err, config.ErrInvalid) {
			return exitUsage
		}
		return exitFailure
	}
	return 0
}

func healthcheck(stderr io.Writer) int {
	cfg, err := config.Load()
	if err != nil {
		fmt.Fprintln(stderr, "dusk-relay healthcheck: configuration error:", err)
		return exitFailure
	}
	if !cfg.MetricsEnabled() {
		fmt.Fprintln(stderr, "dusk-relay healthcheck: DUSK_METRICS_ADDR=off, nothing to probe")
		return exitFailure
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := metrics.Probe(ctx, cfg.MetricsAddr); err != nil {
		fmt.Fprintln(stderr, "dusk-relay healthcheck:", err)
		return exitFailure
	}
	return 0
}
