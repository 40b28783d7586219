package postgres

import (
	"context"
	"fmt"
	"io/fs"
	"testing/fstest"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/migrate"
)

// MigrateBefore applies the embedded migrations whose names sort before
// name, as a deployment of an earlier version had them.
func MigrateBefore(ctx context.Context, db *bun.DB, name string) error {
	files := fstest.MapFS{}
	err := fs.WalkDir(migrationFiles, "migrations", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() >= name {
			return err
		}
		data, err := fs.ReadFile(migrationFiles, path)
		files[path] = &fstest.MapFile{Data: data}
		return err
	})
	if err != nil {
		return err
	}
	migrations := migrate.NewMigrations()
	if err := migrations.Discover(files); err != nil {
		return err
	}
	m := migrate.NewMigrator(db, migrations, migrate.WithMarkAppliedOnSuccess(true))
	if err := m.Init(ctx); err != nil {
		return err
	}
	if _, err := m.Migrate(ctx); err != nil {
		return fmt.Errorf("migrate before %s: %w", name, err)
	}
	return nil
}
