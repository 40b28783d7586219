package main

import (
	"errors"

	"github.com/admetric/admetric/aggregator"
	"github.com/admetric/admetric/config"
	"github.com/admetric/admetric/store/postgres"
)

// checkPrivacy refuses a start whose visitor hashes would not agree: with
// IP_TRUNCATE the API computes them and the aggregator folds them (and
// computes those of events published straight to NATS), so processes that
// run one role each must share VISITOR_SALT rather than each generate its
// own under its DATA_DIR.
func checkPrivacy(cfg *config.Config, r role) error {
	if cfg.IPTruncate && r != roleAll && cfg.VisitorSalt == "" {
		return errors.New("IP_TRUNCATE: the api and aggregator roles hash visitors alike only with one salt: set VISITOR_SALT (or VISITOR_SALT_FILE) to the same secret for every process")
	}
	return nil
}

// partitionKeeper keeps the archive's monthly partitions: ahead of the
// events, and past ARCHIVE_RETENTION dropped.
func (d *daemon) partitionKeeper() *aggregator.PartitionKeeper {
	return &aggregator.PartitionKeeper{Archive: postgres.NewArchive(d.db), Retention: d.cfg.ArchiveRetention, Logger: d.logger}
}
