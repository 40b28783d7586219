package postgres_test

import (
	"context"
	"testing"
	"time"

	"github.com/admetric/admetric/store/postgres"
	"github.com/admetric/admetric/store/storetest"
)

// TestArchiveInsert: a repeated event_id adds no row, and a row PostgreSQL
// refuses for its data is reported by IsDataError (the archiver's cue to
// isolate it instead of retrying forever).
func TestArchiveInsert(t *testing.T) {
	pg := storetest.Postgres(t)
	ctx := context.Background()
	db, err := postgres.Open(ctx, pg.DSN())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if _, err := postgres.Migrate(ctx, db); err != nil {
		t.Fatal(err)
	}
	if applied, err := postgres.Migrate(ctx, db); err != nil || len(applied) != 0 {
		t.Fatalf("second Migrate applied %v, %v; want nothing", applied, err)
	}
	// The serving index, built outside a transaction, is there and valid.
	var valid bool
	if err := db.NewRaw(`SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = 'events_serving_id'`).
		Scan(ctx, &valid); err != nil || !valid {
		t.Fatalf("index events_serving_id: valid %v, %v", valid, err)
	}
	archive := postgres.NewArchive(db)
	at := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	rows := []postgres.ArchivedEvent{
		{EventID: "a", Type: "click", AdID: "ad", OccurredAt: at, IP: "192.0.2.1", PlaybackMS: 1500, StreamSeq: 1},
		{EventID: "b", Type: "impression", AdID: "ad", OccurredAt: at, StreamSeq: 2},
		{EventID: "sv.error", Type: "error", AdID: "ad", OccurredAt: at, StreamSeq: 3, ServingID: "sv", ErrorCode: 402, InvalidReason: "signature"},
	}
	if n, err := archive.Insert(ctx, rows); err != nil || n != 3 {
		t.Fatalf("Insert = %d, %v; want 3 new rows", n, err)
	}
	if n, err := archive.Insert(ctx, rows); err != nil || n != 0 {
		t.Fatalf("Insert again = %d, %v; want 0 new rows", n, err)
	}
	var ip *string
	if err := db.NewSelect().Model((*postgres.ArchivedEvent)(nil)).Column("ip").Where("event_id = 'b'").Scan(ctx, &ip); err != nil || ip != nil {
		t.Fatalf("event without ip: stored %v, %v; want NULL", ip, err)
	}
	// The VAST columns: NULL when empty, read back by Scan as stored.
	var nulls int
	if err := db.NewRaw(`SELECT count(*) FROM events WHERE event_id = 'b' AND serving_id IS NULL AND error_code IS NULL AND invalid_reason IS NULL`).Scan(ctx, &nulls); err != nil || nulls != 1 {
		t.Fatalf("event without VAST fields: %d rows with NULLs, %v; want 1", nulls, err)
	}
	var got []postgres.ArchivedEvent
	if err := archive.Scan(ctx, at, at.Add(time.Second), func(ev *postgres.ArchivedEvent) error { got = append(got, *ev); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[2].ServingID != "sv" || got[2].ErrorCode != 402 || got[2].InvalidReason != "signature" || got[0].ServingID != "" {
		t.Fatalf("scanned %+v", got)
	}

	_, err = archive.Insert(ctx, []postgres.ArchivedEvent{{EventID: "c", Type: "click", AdID: "ad", OccurredAt: at, IP: "not-an-ip", StreamSeq: 4}})
	if err == nil || !postgres.IsDataError(err) {
		t.Fatalf("bad inet: err %v, IsDataError %v; want a data error", err, postgres.IsDataError(err))
	}
	if postgres.IsDataError(context.DeadlineExceeded) {
		t.Fatal("a timeout is not a data error")
	}
}

// MarkInvalid sets the reason of the archived events it names, leaves one
// the intake marked as it is, and says how many of them are archived at
// all.
func TestArchiveMarkInvalid(t *testing.T) {
	ctx := context.Background()
	db := storetest.DB(t, storetest.Postgres(t))
	archive := postgres.NewArchive(db)
	at := time.Now().UTC().Truncate(time.Second)
	rows := []postgres.ArchivedEvent{
		{EventID: "a", Type: "click", AdID: "ad", OccurredAt: at, UserAgent: "x", StreamSeq: 1},
		{EventID: "b", Type: "click", AdID: "ad", OccurredAt: at, UserAgent: "x", StreamSeq: 2},
		{EventID: "c", Type: "click", AdID: "ad", OccurredAt: at, UserAgent: "x", StreamSeq: 3, InvalidReason: "playback"},
	}
	if _, err := archive.Insert(ctx, rows); err != nil {
		t.Fatal(err)
	}
	n, err := archive.MarkInvalid(ctx, []string{"a", "c", "later"}, []string{"bot", "rate", "bot"})
	if err != nil || n != 2 {
		t.Fatalf("MarkInvalid = %d, %v; want 2 of the 3 archived", n, err)
	}
	want := map[string]string{"a": "bot", "b": "", "c": "playback"}
	for id, reason := range want {
		var got *string
		if err := db.NewRaw("SELECT invalid_reason FROM events WHERE event_id = ?", id).Scan(ctx, &got); err != nil {
			t.Fatal(err)
		}
		if (got == nil) != (reason == "") || got != nil && *got != reason {
			t.Errorf("%s: reason %v, want %q", id, got, reason)
		}
	}
	if _, err := archive.MarkInvalid(ctx, []string{"a"}, nil); err == nil {
		t.Error("ids and reasons of different lengths were taken")
	}
}
