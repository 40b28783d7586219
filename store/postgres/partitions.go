package postgres

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/driver/pgdriver"
)

// The events table is partitioned by range of occurred_at, a partition per
// month (UTC), so that a month past the retention is dropped whole. One
// partition may cover everything before a month, from MINVALUE: the table
// as it was before it was partitioned (events_before, see the migration
// events_by_month).

// Partition is one partition of the events table: it holds the events that
// occurred in [From, To). From is the zero time for a partition that starts
// at MINVALUE.
type Partition struct {
	Name     string
	From, To time.Time
}

// MonthPartition is the monthly partition that holds events of t: named
// events_pYYYYMM, from the first of t's month (UTC) to the first of the next.
func MonthPartition(t time.Time) Partition {
	t = t.UTC()
	from := time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
	return Partition{Name: fmt.Sprintf("events_p%04d%02d", from.Year(), int(from.Month())), From: from, To: from.AddDate(0, 1, 0)}
}

func (p Partition) overlaps(q Partition) bool {
	return (p.From.IsZero() || p.From.Before(q.To)) && (q.From.IsZero() || q.From.Before(p.To))
}

// partitionLockID is the pg_advisory_xact_lock key held while partitions
// are created or dropped, so that the archivers of several processes do it
// one at a time.
const partitionLockID = 0x61646d6574726970 // "admetrip"

// partitionLockTimeout bounds the wait for the events table's lock: DDL on
// a partition waits for the queries in progress, and every insert would
// queue behind it meanwhile. The next pass tries again.
const partitionLockTimeout = "5s"

// Partitions returns the partitions of the events table, oldest first.
func (a *Archive) Partitions(ctx context.Context) ([]Partition, error) {
	var parts []Partition
	err := a.db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		var err error
		parts, err = listPartitions(ctx, tx)
		return err
	})
	return parts, err
}

// listPartitions lists the partitions in tx, whose bounds it reads in UTC.
func listPartitions(ctx context.Context, tx bun.Tx) ([]Partition, error) {
	if _, err := tx.ExecContext(ctx, "SET LOCAL TimeZone = 'UTC'"); err != nil {
		return nil, fmt.Errorf("postgres: partitions: %w", err)
	}
	var rows []struct {
		Name  string `bun:"name"`
		Bound string `bun:"bound"`
	}
	err := tx.NewRaw(`SELECT c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bound
		FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhparent = 'events'::regclass`).Scan(ctx, &rows)
	if err != nil {
		return nil, fmt.Errorf("postgres: partitions: %w", err)
	}
	parts := make([]Partition, 0, len(rows))
	for _, r := range rows {
		p, err := parseBound(r.Name, r.Bound)
		if err != nil {
			return nil, err
		}
		parts = append(parts, p)
	}
	sort.Slice(parts, func(i, j int) bool {
		return parts[i].From.Before(parts[j].From) || parts[i].From.Equal(parts[j].From) && parts[i].To.Before(parts[j].To)
	})
	return parts, nil
}

// boundExpr matches a range bound as pg_get_expr writes it.
var boundExpr = regexp.MustCompile(`^FOR VALUES FROM \((MINVALUE|'[^']*')\) TO \((MAXVALUE|'[^']*')\)$`)

// parseBound reads a partition's range bound, written in UTC.
func parseBound(name, bound string) (Partition, error) {
	m := boundExpr.FindStringSubmatch(bound)
	if m == nil {
		return Partition{}, fmt.Errorf("postgres: partition %s: unexpected bound %q", name, bound)
	}
	p := Partition{Name: name}
	var err error
	if m[1] != "MINVALUE" {
		if p.From, err = parseBoundTime(m[1]); err != nil {
			return Partition{}, fmt.Errorf("postgres: partition %s: %w", name, err)
		}
	}
	if m[2] == "MAXVALUE" {
		return Partition{}, fmt.Errorf("postgres: partition %s: unexpected bound %q", name, bound)
	}
	if p.To, err = parseBoundTime(m[2]); err != nil {
		return Partition{}, fmt.Errorf("postgres: partition %s: %w", name, err)
	}
	return p, nil
}

func parseBoundTime(quoted string) (time.Time, error) {
	s := strings.Trim(quoted, "'")
	for _, layout := range []string{"2006-01-02 15:04:05.999999-07", "2006-01-02 15:04:05.999999-07:00"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("bound %q is not a time", s)
}

// CreateMonths creates the monthly partition of every month that [from, to]
// touches and no partition covers yet, and returns the names of those it
// created.
func (a *Archive) CreateMonths(ctx context.Context, from, to time.Time) ([]string, error) {
	var created []string
	err := a.db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		created = created[:0]
		if err := lockPartitions(ctx, tx); err != nil {
			return err
		}
		parts, err := listPartitions(ctx, tx)
		if err != nil {
			return err
		}
		for m := MonthPartition(from); !m.From.After(to); m = MonthPartition(m.To) {
			covered := false
			for _, p := range parts {
				covered = covered || p.overlaps(m)
			}
			if covered {
				continue
			}
			_, err := tx.ExecContext(ctx, "CREATE TABLE ? PARTITION OF events FOR VALUES FROM (?) TO (?)",
				bun.Ident(m.Name), m.From, m.To)
			if err != nil {
				return fmt.Errorf("postgres: create partition %s: %w", m.Name, err)
			}
			created = append(created, m.Name)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return created, nil
}

// DropBefore drops the partitions that hold nothing at or after cutoff
// (their To is at or before it), rows and all, and returns their names.
// Each goes in one statement, not row by row.
func (a *Archive) DropBefore(ctx context.Context, cutoff time.Time) ([]string, error) {
	var dropped []string
	err := a.db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		dropped = dropped[:0]
		if err := lockPartitions(ctx, tx); err != nil {
			return err
		}
		parts, err := listPartitions(ctx, tx)
		if err != nil {
			return err
		}
		for _, p := range parts {
			if p.To.After(cutoff) {
				continue
			}
			if _, err := tx.ExecContext(ctx, "DROP TABLE ?", bun.Ident(p.Name)); err != nil {
				return fmt.Errorf("postgres: drop partition %s: %w", p.Name, err)
			}
			dropped = append(dropped, p.Name)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return dropped, nil
}

func lockPartitions(ctx context.Context, tx bun.Tx) error {
	if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock(?)", partitionLockID); err != nil {
		return fmt.Errorf("postgres: partition lock: %w", err)
	}
	if _, err := tx.ExecContext(ctx, "SET LOCAL lock_timeout = '"+partitionLockTimeout+"'"); err != nil {
		return fmt.Errorf("postgres: partition lock: %w", err)
	}
	return nil
}

// isNoPartition reports whether err is PostgreSQL's refusal of a row that
// no partition of the events table takes.
func isNoPartition(err error) bool {
	var pgErr pgdriver.Error
	return errors.As(err, &pgErr) && pgErr.Field('C') == "23514" && strings.Contains(pgErr.Field('M'), "no partition")
}
