package postgres_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/uptrace/bun"

	"github.com/admetric/admetric/store/postgres"
	"github.com/admetric/admetric/store/storetest"
)

func TestMonthPartition(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		at       time.Time
		name     string
		from, to string
	}{
		{time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC), "events_p202611", "2026-11-01", "2026-12-01"},
		{time.Date(2026, 12, 31, 23, 59, 59, 999999999, time.UTC), "events_p202612", "2026-12-01", "2027-01-01"},
		{time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC), "events_p202701", "2027-01-01", "2027-02-01"},
		// Months are UTC's: 00:30 on 1 December at +01:00 is still November.
		{time.Date(2026, 12, 1, 0, 30, 0, 0, time.FixedZone("CET", 3600)), "events_p202611", "2026-11-01", "2026-12-01"},
		{time.Date(2028, 2, 29, 0, 0, 0, 0, time.UTC), "events_p202802", "2028-02-01", "2028-03-01"},
	} {
		p := postgres.MonthPartition(tc.at)
		if p.Name != tc.name || p.From.Format(time.DateOnly) != tc.from || p.To.Format(time.DateOnly) != tc.to ||
			p.From.Location() != time.UTC {
			t.Errorf("MonthPartition(%v) = %s [%v, %v), want %s [%s, %s)", tc.at, p.Name, p.From, p.To, tc.name, tc.from, tc.to)
		}
	}
}

// archiveDB is a PostgreSQL database migrated up to now, and its archive.
func archiveDB(t *testing.T) (*bun.DB, *postgres.Archive) {
	t.Helper()
	db := storetest.DB(t, storetest.Postgres(t))
	return db, postgres.NewArchive(db)
}

// unpartitionedDB is a PostgreSQL database migrated up to the migration that
// partitions the archive, not including it.
func unpartitionedDB(t *testing.T) *bun.DB {
	t.Helper()
	db, err := postgres.Open(context.Background(), storetest.Postgres(t).DSN())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := postgres.MigrateBefore(context.Background(), db, "20261215000006"); err != nil {
		t.Fatal(err)
	}
	return db
}

func monthStart(y int, m time.Month) time.Time { return time.Date(y, m, 1, 0, 0, 0, 0, time.UTC) }

// TestArchivePartitions: a row of a month without a partition gets one;
// CreateMonths makes the months asked for and only those not covered;
// DropBefore drops the months wholly before the cutoff, rows and all, and
// leaves the other months' rows as they were. A retry of an event (same
// event_id and time) adds no row.
func TestArchivePartitions(t *testing.T) {
	ctx := context.Background()
	db, archive := archiveDB(t)
	parts, err := archive.Partitions(ctx)
	if err != nil || len(parts) != 0 {
		t.Fatalf("a new archive has partitions %v, %v", parts, err)
	}
	var rows []postgres.ArchivedEvent
	for i, m := range []time.Month{time.January, time.February, time.March, time.April} {
		for j := range 3 {
			rows = append(rows, postgres.ArchivedEvent{
				EventID: fmt.Sprintf("m%d-%d", m, j), Type: "impression", AdID: "ad", StreamSeq: uint64(10*i + j),
				OccurredAt: monthStart(2026, m).Add(time.Duration(j) * 240 * time.Hour), IP: "192.0.2.0", Visitor: int64(-1 - j),
			})
		}
	}
	if n, err := archive.Insert(ctx, rows); err != nil || n != len(rows) {
		t.Fatalf("Insert = %d, %v", n, err)
	}
	if n, err := archive.Insert(ctx, rows[:2]); err != nil || n != 0 {
		t.Fatalf("Insert again = %d, %v; want no new row", n, err)
	}
	names := func() []string {
		parts, err := archive.Partitions(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, p := range parts {
			out = append(out, p.Name)
		}
		return out
	}
	if got := fmt.Sprint(names()); got != "[events_p202601 events_p202602 events_p202603 events_p202604]" {
		t.Fatalf("partitions after the insert: %s", got)
	}
	created, err := archive.CreateMonths(ctx, monthStart(2026, time.March).Add(time.Hour), monthStart(2026, time.June))
	if err != nil || fmt.Sprint(created) != "[events_p202605 events_p202606]" {
		t.Fatalf("CreateMonths = %v, %v", created, err)
	}
	// Before: the rows of March and April, as they are.
	var before []postgres.ArchivedEvent
	if err := db.NewSelect().Model(&before).Where("occurred_at >= ?", monthStart(2026, time.March)).Order("event_id").Scan(ctx); err != nil {
		t.Fatal(err)
	}
	// A cutoff inside March drops January and February, not March.
	dropped, err := archive.DropBefore(ctx, monthStart(2026, time.March).Add(36*time.Hour))
	if err != nil || fmt.Sprint(dropped) != "[events_p202601 events_p202602]" {
		t.Fatalf("DropBefore = %v, %v", dropped, err)
	}
	if got := fmt.Sprint(names()); got != "[events_p202603 events_p202604 events_p202605 events_p202606]" {
		t.Fatalf("partitions after the drop: %s", got)
	}
	var after []postgres.ArchivedEvent
	if err := db.NewSelect().Model(&after).Order("event_id").Scan(ctx); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(after) != fmt.Sprint(before) || len(after) != 6 {
		t.Fatalf("rows after the drop:\n%v\nwant\n%v", after, before)
	}
	if after[0].Visitor != -1 {
		t.Fatalf("visitor column: %d", after[0].Visitor)
	}
	if dropped, err := archive.DropBefore(ctx, monthStart(2026, time.March)); err != nil || len(dropped) != 0 {
		t.Fatalf("DropBefore again = %v, %v", dropped, err)
	}
}

// TestMigrationPartitionsAnExistingArchive: an archive of the earlier
// schema, with rows over several months, becomes the partitioned table
// with every row kept (in events_before, which covers everything up to the
// month after its newest row), its dedup still in force, and new months
// in partitions of their own; events_before is dropped whole once that
// month is past the retention.
func TestMigrationPartitionsAnExistingArchive(t *testing.T) {
	ctx := context.Background()
	db := unpartitionedDB(t)
	const n = 500
	_, err := db.ExecContext(ctx, `INSERT INTO events (event_id, type, ad_id, occurred_at, ip, user_agent, playback_ms, stream_seq, partition, serving_id, invalid_reason)
		SELECT 'old-' || i, 'click', 'ad-' || (i % 7), timestamptz '2026-01-15 12:00:00+00' + (i * interval '6 hours'),
			'203.0.113.7', 'UA', i, i, i % 8, CASE WHEN i % 2 = 0 THEN 'sv-' || i END, CASE WHEN i % 5 = 0 THEN 'bot' END
		FROM generate_series(1, ?) AS i`, n)
	if err != nil {
		t.Fatal(err)
	}
	var want string
	sum := `SELECT count(*) || ':' || sum(playback_ms) || ':' || count(serving_id) || ':' || count(invalid_reason) || ':' || max(occurred_at) FROM events`
	if err := db.NewRaw(sum).Scan(ctx, &want); err != nil {
		t.Fatal(err)
	}
	applied, err := postgres.Migrate(ctx, db)
	if err != nil || len(applied) == 0 {
		t.Fatalf("Migrate = %v, %v", applied, err)
	}
	var got string
	if err := db.NewRaw(sum).Scan(ctx, &got); err != nil || got != want {
		t.Fatalf("after the migration: %s, %v; before: %s", got, err, want)
	}
	archive := postgres.NewArchive(db)
	parts, err := archive.Partitions(ctx)
	// The newest row: 2026-01-15 12:00 + 500 × 6h = 2026-05-19 12:00.
	if err != nil || len(parts) != 1 || parts[0].Name != "events_before" || !parts[0].From.IsZero() ||
		!parts[0].To.Equal(monthStart(2026, time.June)) {
		t.Fatalf("partitions after the migration: %+v, %v", parts, err)
	}
	// The dedup key holds for the old rows; a new month gets its partition.
	var old postgres.ArchivedEvent
	if err := db.NewSelect().Model(&old).Where("event_id = 'old-1'").Scan(ctx); err != nil {
		t.Fatal(err)
	}
	fresh := postgres.ArchivedEvent{EventID: "new-1", Type: "click", AdID: "ad-1", OccurredAt: monthStart(2026, time.June).Add(time.Hour), StreamSeq: 1}
	if k, err := archive.Insert(ctx, []postgres.ArchivedEvent{old, fresh}); err != nil || k != 1 {
		t.Fatalf("Insert of an old row again and a new one = %d, %v; want 1", k, err)
	}
	if parts, _ := archive.Partitions(ctx); len(parts) != 2 || parts[1].Name != "events_p202606" {
		t.Fatalf("partitions: %+v", parts)
	}
	// The serving index is valid on the partitioned table.
	var valid bool
	if err := db.NewRaw(`SELECT bool_and(i.indisvalid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname LIKE 'events%serving_id'`).
		Scan(ctx, &valid); err != nil || !valid {
		t.Fatalf("serving indexes valid: %v, %v", valid, err)
	}
	if dropped, err := archive.DropBefore(ctx, monthStart(2026, time.May)); err != nil || len(dropped) != 0 {
		t.Fatalf("DropBefore May = %v, %v: events_before still holds May's rows", dropped, err)
	}
	if dropped, err := archive.DropBefore(ctx, monthStart(2026, time.June)); err != nil || fmt.Sprint(dropped) != "[events_before]" {
		t.Fatalf("DropBefore June = %v, %v", dropped, err)
	}
	if c, err := archive.Count(ctx, time.Time{}, monthStart(2030, time.January)); err != nil || c != 1 {
		t.Fatalf("rows left: %d, %v; want the June one", c, err)
	}
}

// TestMigrationOfAnEmptyArchive: an empty archive of the earlier schema
// becomes the partitioned table without a partition before the months.
func TestMigrationOfAnEmptyArchive(t *testing.T) {
	ctx := context.Background()
	db := unpartitionedDB(t)
	if _, err := postgres.Migrate(ctx, db); err != nil {
		t.Fatal(err)
	}
	if parts, err := postgres.NewArchive(db).Partitions(ctx); err != nil || len(parts) != 0 {
		t.Fatalf("partitions: %v, %v", parts, err)
	}
}
