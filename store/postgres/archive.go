package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"
)

// ArchivedEvent is one row of the events archive.
type ArchivedEvent struct {
	bun.BaseModel `bun:"table:events"`

	EventID    string    `bun:"event_id,pk"`
	Type       string    `bun:"type,notnull"`
	AdID       string    `bun:"ad_id,notnull"`
	OccurredAt time.Time `bun:"occurred_at,notnull"`
	// IP is empty when the event carried none; it is stored as NULL.
	IP         string `bun:"ip,nullzero,type:inet"`
	UserAgent  string `bun:"user_agent,notnull"`
	PlaybackMS int64  `bun:"playback_ms,notnull"`
	StreamSeq  uint64 `bun:"stream_seq,notnull"`
	// Partition is the stream partition the event was stored in; -1 when not known.
	Partition int `bun:"partition,notnull"`
	// ServingID, ErrorCode and InvalidReason are stored as NULL when empty
	// or zero.
	ServingID     string `bun:"serving_id,nullzero"`
	ErrorCode     int    `bun:"error_code,nullzero"`
	InvalidReason string `bun:"invalid_reason,nullzero"`
	// Visitor is the event's visitor hash (its 64 bits as a bigint) when
	// the archiver was given one to keep: the intake computed it from the
	// full address before truncating it, or the archiver did. NULL (0)
	// otherwise: a rebuild hashes IP and UserAgent.
	Visitor int64 `bun:"visitor,nullzero"`
}

// Archive writes the events table. Safe for concurrent use.
type Archive struct{ db *bun.DB }

// NewArchive returns the archive on db.
func NewArchive(db *bun.DB) *Archive { return &Archive{db: db} }

// Insert writes events in one multi-row INSERT, skipping any already
// archived, and returns how many rows were new. An event's key is
// (event_id, occurred_at): a unique key of the table partitioned by month
// must hold occurred_at. A redelivered message, a replayed spool record and
// a retry the stream deduplicated all carry the same occurred_at, so each
// adds no row; only two stream messages with one event_id and different
// times (an event without a timestamp published again after the stream's
// duplicate window, which the rollups count twice too) make two rows.
// A month that has no partition yet gets one (CreateMonths).
func (a *Archive) Insert(ctx context.Context, events []ArchivedEvent) (int, error) {
	if len(events) == 0 {
		return 0, nil
	}
	n, err := a.insert(ctx, events)
	if isNoPartition(err) {
		from, to := events[0].OccurredAt, events[0].OccurredAt
		for _, ev := range events[1:] {
			from, to = minTime(from, ev.OccurredAt), maxTime(to, ev.OccurredAt)
		}
		if _, err := a.CreateMonths(ctx, from, to); err != nil {
			return 0, err
		}
		n, err = a.insert(ctx, events)
	}
	if err != nil {
		return 0, fmt.Errorf("postgres: archive %d events: %w", len(events), err)
	}
	return n, nil
}

func (a *Archive) insert(ctx context.Context, events []ArchivedEvent) (int, error) {
	res, err := a.db.NewInsert().Model(&events).On("CONFLICT (event_id, occurred_at) DO NOTHING").Exec(ctx)
	if err != nil {
		return 0, err
	}
	n, _ := res.RowsAffected()
	return int(n), nil
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// MarkInvalid sets the invalid_reason of the archived events named in ids to
// the reason at the same index, leaving one that has a reason already (the
// intake's) as it is, and returns how many of ids are archived at all: the
// caller tries the rest again once the archive has them.
func (a *Archive) MarkInvalid(ctx context.Context, ids, reasons []string) (archived int, err error) {
	if len(ids) != len(reasons) {
		return 0, fmt.Errorf("postgres: mark invalid: %d ids, %d reasons", len(ids), len(reasons))
	}
	if len(ids) == 0 {
		return 0, nil
	}
	// One statement, so that the update and the count see the same
	// snapshot: as two, a row inserted between them was counted without
	// being updated, and its reason was lost.
	err = a.db.NewRaw(`WITH d(id, reason) AS (SELECT * FROM unnest(?::text[], ?::text[])),
		u AS (UPDATE events SET invalid_reason = d.reason FROM d
			WHERE events.event_id = d.id AND events.invalid_reason IS NULL)
		SELECT count(DISTINCT event_id) FROM events WHERE event_id = ANY(?::text[])`,
		pgdialect.Array(ids), pgdialect.Array(reasons), pgdialect.Array(ids)).Scan(ctx, &archived)
	if err != nil {
		return 0, fmt.Errorf("postgres: mark %d events invalid: %w", len(ids), err)
	}
	return archived, nil
}

// Count returns how many archived events occurred in [from, to).
func (a *Archive) Count(ctx context.Context, from, to time.Time) (int, error) {
	n, err := a.db.NewSelect().Model((*ArchivedEvent)(nil)).
		Where("occurred_at >= ? AND occurred_at < ?", from, to).Count(ctx)
	if err != nil {
		return 0, fmt.Errorf("postgres: count archived events: %w", err)
	}
	return int(n), nil
}

// AdIDs returns the distinct ads with archived events in [from, to).
func (a *Archive) AdIDs(ctx context.Context, from, to time.Time) ([]string, error) {
	var ids []string
	err := a.db.NewSelect().Model((*ArchivedEvent)(nil)).ColumnExpr("DISTINCT ad_id").
		Where("occurred_at >= ? AND occurred_at < ?", from, to).Order("ad_id").Scan(ctx, &ids)
	if err != nil {
		return nil, fmt.Errorf("postgres: archived ad ids: %w", err)
	}
	return ids, nil
}

// Scan calls fn with every event archived for [from, to), in stream order,
// reading the rows as it goes rather than all at once. fn's error stops it.
func (a *Archive) Scan(ctx context.Context, from, to time.Time, fn func(*ArchivedEvent) error) error {
	rows, err := a.db.NewSelect().Model((*ArchivedEvent)(nil)).
		Where("occurred_at >= ? AND occurred_at < ?", from, to).Order("stream_seq", "event_id").Rows(ctx)
	if err != nil {
		return fmt.Errorf("postgres: scan archived events: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var ev ArchivedEvent
		if err := a.db.ScanRow(ctx, rows, &ev); err != nil {
			return fmt.Errorf("postgres: scan archived event: %w", err)
		}
		if err := fn(&ev); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("postgres: scan archived events: %w", err)
	}
	return nil
}
