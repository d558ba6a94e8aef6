package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/duskchat/dusk-relay/internal/config"
	"github.com/duskchat/dusk-relay/internal/directory"
	"github.com/duskchat/dusk-relay/internal/logging"
)

// importDirectory runs `dusk-relay import-directory <file>`: copies a
// directory.sqlite3 into the PostgreSQL directory of DUSK_DIRECTORY_URL.
func importDirectory(args []string, stdout, stderr io.Writer) int {
	if len(args) != 1 || args[0] == "" {
		fmt.Fprintln(stderr, "usage: dusk-relay import-directory <path to directory.sqlite3> (target: DUSK_DIRECTORY_URL)")
		return exitUsage
	}
	cfg, err := config.Load()
	if err != nil {
		fmt.Fprintln(stderr, "dusk-relay import-directory: configuration error:", err)
		return exitUsage
	}
	if cfg.DirectoryURL == "" {
		fmt.Fprintln(stderr, "dusk-relay import-directory: DUSK_DIRECTORY_URL is not set: set it to the PostgreSQL directory to import into")
		return exitUsage
	}
	log, err := logging.New(cfg.Log)
	if err != nil {
		fmt.Fprintln(stderr, "dusk-relay import-directory:", err)
		return exitUsage
	}
	defer func() { _ = log.Sync() }()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	pg, err := directory.OpenPG(ctx, cfg.DirectoryURL, log.Named("directory"))
	if err != nil {
		fmt.Fprintln(stderr, "dusk-relay import-directory:", err)
		return exitFailure
	}
	defer func() { _ = pg.Close() }()
	st, err := directory.ImportSQLite(ctx, args[0], pg)
	if err != nil {
		fmt.Fprintf(stderr, "dusk-relay import-directory: %v (%d profiles written before the error; running it again is safe)\n", err, st.Written)
		return exitFailure
	}
	fmt.Fprintf(stdout, "imported %s into %s: %d profiles read, %d written, %d already up to date, %d skipped (not storable)\n",
		args[0], config.RedactURL(cfg.DirectoryURL), st.Read, st.Written, st.Read-st.Written-st.Skipped, st.Skipped)
	return 0
}
