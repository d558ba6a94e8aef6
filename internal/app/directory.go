package app

import (
	"context"
	"path/filepath"

	"go.uber.org/zap"

	"github.com/duskchat/dusk-relay/internal/config"
	"github.com/duskchat/dusk-relay/internal/directory"
)

// openDirectory opens the directory storage the configuration names: the
// SQLite file in the data dir, or PostgreSQL when DUSK_DIRECTORY_URL is
// set (shared by the relays of a cluster).
func openDirectory(ctx context.Context, cfg *config.Config, log *zap.Logger) (directory.Storage, error) {
	if cfg.DirectoryURL != "" {
		return directory.OpenPG(ctx, cfg.DirectoryURL, log)
	}
	return directory.Open(filepath.Join(cfg.DataDir, directory.FileName), log)
}
