package postgres

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"
	"github.com/uptrace/bun/driver/pgdriver"
	"github.com/uptrace/bun/migrate"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// Open opens a bun handle on dsn and checks that the server answers.
// The caller closes it.
func Open(ctx context.Context, dsn string) (*bun.DB, error) {
	connector, err := newConnector(dsn)
	if err != nil {
		return nil, err
	}
	sqldb := sql.OpenDB(connector)
	sqldb.SetMaxOpenConns(16)
	sqldb.SetMaxIdleConns(8)
	sqldb.SetConnMaxIdleTime(5 * time.Minute)
	db := bun.NewDB(sqldb, pgdialect.New())
	if err := db.PingContext(ctx); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("postgres: connect: %w", err)
	}
	return db, nil
}

// newConnector builds the driver's connector. pgdriver panics on a URL option it
// cannot parse (sslmode=bogus, connect_timeout=abc); that becomes an error, so
// a typo in configuration is an error message, not a crash.
func newConnector(dsn string) (c *pgdriver.Connector, err error) {
	defer func() {
		if r := recover(); r != nil {
			c, err = nil, fmt.Errorf("postgres: invalid PostgreSQL URL: %v", r)
		}
	}()
	return pgdriver.NewConnector(
		pgdriver.WithDSN(dsn),
		pgdriver.WithTimeout(5*time.Second),
		pgdriver.WithApplicationName("admetric"),
	), nil
}

// migrationLockID is the pg_advisory_lock key held while migrating, so several
// instances starting at once migrate one after another. (bun's own Lock is a
// row that a crashed process would leave behind.)
const migrationLockID = 0x61646d6574726963 // "admetric"

// Migrate applies the embedded SQL migrations that are not applied yet and
// returns the names of those it applied.
func Migrate(ctx context.Context, db *bun.DB) ([]string, error) {
	migrations := migrate.NewMigrations()
	if err := migrations.Discover(migrationFiles); err != nil {
		return nil, fmt.Errorf("postgres: migrations: %w", err)
	}
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("postgres: migrate: %w", err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "SELECT pg_advisory_lock(?)", migrationLockID); err != nil {
		return nil, fmt.Errorf("postgres: migrate lock: %w", err)
	}
	defer func() {
		_, _ = conn.ExecContext(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock(?)", migrationLockID)
	}()
	m := migrate.NewMigrator(db, migrations, migrate.WithMarkAppliedOnSuccess(true))
	if err := m.Init(ctx); err != nil {
		return nil, fmt.Errorf("postgres: migrate init: %w", err)
	}
	group, err := m.Migrate(ctx)
	if err != nil {
		return nil, fmt.Errorf("postgres: migrate: %w", err)
	}
	var names []string
	for _, mig := range group.Migrations {
		names = append(names, mig.Name)
	}
	return names, nil
}

// IsDataError reports whether PostgreSQL refused a statement for the data in it
// (SQLSTATE class 22 data exception, class 23 integrity violation, or a syntax
// error from a value no validation foresaw): retrying cannot help.
func IsDataError(err error) bool {
	var pgErr pgdriver.Error
	if !errors.As(err, &pgErr) {
		return false
	}
	code := pgErr.Field('C')
	return strings.HasPrefix(code, "22") || strings.HasPrefix(code, "23") || code == "42601"
}

func isUniqueViolation(err error) bool {
	var pgErr pgdriver.Error
	return errors.As(err, &pgErr) && pgErr.Field('C') == "23505"
}

// Ping checks that PostgreSQL answers.
func Ping(ctx context.Context, db *bun.DB) error {
	if err := db.PingContext(ctx); err != nil {
		return fmt.Errorf("postgres: ping: %w", err)
	}
	return nil
}
