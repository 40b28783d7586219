package rollup

import (
	"fmt"
	"strconv"
	"time"
)

// Unit is the width of one rollup slot.
type Unit int

// The three rollup resolutions, finest first.
const (
	Minute Unit = iota
	Hour
	Day
)

// String names the unit as the API does.
func (u Unit) String() string {
	switch u {
	case Minute:
		return "minute"
	case Hour:
		return "hour"
	case Day:
		return "day"
	}
	return "unit(" + strconv.Itoa(int(u)) + ")"
}

// Resolution is one rollup bucket. Each KV key packs the slots of one coarser
// period, so the number of keys (which the server indexes in memory) stays small:
// the minute bucket has a key per ad-hour with 60 minute slots, the hour bucket a
// key per ad-day with 24 hour slots, the day bucket a key per ad-month.
// Day boundaries are UTC.
type Resolution struct {
	Unit      Unit
	Bucket    string
	Retention time.Duration
}

// Bucket names of the rollup resolutions.
const (
	MinuteBucket = "ADMETRIC_ROLLUP_MINUTE"
	HourBucket   = "ADMETRIC_ROLLUP_HOUR"
	DayBucket    = "ADMETRIC_ROLLUP_DAY"
)

// Retentions are how long each resolution is kept.
type Retentions struct {
	Minute, Hour, Day time.Duration
}

// Layout is the set of rollup resolutions, finest first.
type Layout [3]Resolution

// NewLayout returns the layout with the given retentions.
func NewLayout(r Retentions) Layout {
	return Layout{
		{Unit: Minute, Bucket: MinuteBucket, Retention: r.Minute},
		{Unit: Hour, Bucket: HourBucket, Retention: r.Hour},
		{Unit: Day, Bucket: DayBucket, Retention: r.Day},
	}
}

// MaxRetention is the longest retention: events older than it fit no rollup.
func (l Layout) MaxRetention() time.Duration {
	return max(l[0].Retention, l[1].Retention, l[2].Retention)
}

// Truncate returns the start of the slot of unit u holding t (UTC).
func (u Unit) Truncate(t time.Time) time.Time {
	t = t.UTC()
	switch u {
	case Minute:
		return t.Truncate(time.Minute)
	case Hour:
		return t.Truncate(time.Hour)
	default:
		return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
	}
}

// Next returns the start of the slot after the one starting at t.
func (u Unit) Next(t time.Time) time.Time {
	switch u {
	case Minute:
		return t.Add(time.Minute)
	case Hour:
		return t.Add(time.Hour)
	default:
		return t.AddDate(0, 0, 1)
	}
}

// Locate returns the KV key of ad's rollup holding time t and the slot index in it.
// Keys are "<ad_id>.<period>" where period is YYYYMMDDHH (minute bucket),
// YYYYMMDD (hour bucket) or YYYYMM (day bucket); ad IDs never hold a dot, and
// the period is all digits, so no key collides with the checkpoint keys.
func (u Unit) Locate(adID string, t time.Time) (key string, slot int) {
	p, slot := u.period(t)
	return u.key(adID, p), slot
}

// SlotsPerKey is how many slots a key of unit u has: the minutes of an hour,
// the hours of a day, the days of the longest month.
func (u Unit) SlotsPerKey() int {
	switch u {
	case Minute:
		return 60
	case Hour:
		return 24
	default:
		return 31
	}
}

// period returns the key period of unit u holding t as the number its key
// spells (YYYYMMDDHH, YYYYMMDD or YYYYMM), and the slot index of t in it.
// A query locates a couple of hundred cells per ad, so this avoids
// time.Format.
func (u Unit) period(t time.Time) (period int64, slot int) {
	y, m, d := t.UTC().Date()
	ym := int64(y)*100 + int64(m)
	switch u {
	case Minute:
		h, mi, _ := t.UTC().Clock()
		return (ym*100+int64(d))*100 + int64(h), mi
	case Hour:
		return ym*100 + int64(d), t.UTC().Hour()
	default:
		return ym, d - 1
	}
}

// key returns the key of ad's rollup for a period as period returns it. The
// year has four digits, as time.Format spells the years events can have
// (their timestamps are bounded by the retention).
func (u Unit) key(adID string, period int64) string {
	width := 6 // YYYYMM
	switch u {
	case Minute:
		width = 10
	case Hour:
		width = 8
	}
	b := make([]byte, len(adID)+1+width)
	copy(b, adID)
	b[len(adID)] = '.'
	for i := len(b) - 1; i > len(adID); i-- {
		b[i] = byte('0' + period%10)
		period /= 10
	}
	return string(b)
}

// Ceil returns the start of the first slot of unit u beginning at or after t.
func (u Unit) Ceil(t time.Time) time.Time {
	start := u.Truncate(t)
	if start.Before(t) {
		return u.Next(start)
	}
	return start
}

// PeriodStart returns the start of the key period of unit u holding t: the
// hour of a minute key, the UTC day of an hour key, the month of a day key.
func (u Unit) PeriodStart(t time.Time) time.Time {
	if u < Day {
		return (u + 1).Truncate(t)
	}
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
}

// NextPeriod returns the start of the key period after the one starting at start.
func (u Unit) NextPeriod(start time.Time) time.Time {
	if u < Day {
		return (u + 1).Next(start)
	}
	return start.AddDate(0, 1, 0)
}

// SlotStart returns the start of slot i of the key period starting at start.
func (u Unit) SlotStart(start time.Time, i int) time.Time {
	switch u {
	case Minute:
		return start.Add(time.Duration(i) * time.Minute)
	case Hour:
		return start.Add(time.Duration(i) * time.Hour)
	default:
		return start.AddDate(0, 0, i)
	}
}

// CheckpointKey is the key, in each bucket, holding the highest stream sequence
// the rollup writer of partition p has committed to that bucket.
func CheckpointKey(partition int) string {
	return "_checkpoint.p" + strconv.Itoa(partition)
}

// Cell is one slot of one resolution that a query window reads.
type Cell struct {
	Unit  Unit
	Start time.Time
}

// Tiling is the set of slots that exactly cover a window, coarsest where possible.
type Tiling struct {
	From, To time.Time // the window actually covered, [From, To)
	Cells    []Cell
}

// Units lists the distinct units used, finest first.
func (t Tiling) Units() []Unit {
	var seen [3]bool
	for _, c := range t.Cells {
		seen[c.Unit] = true
	}
	var out []Unit
	for u, ok := range seen {
		if ok {
			out = append(out, Unit(u))
		}
	}
	return out
}

// CoarseDelay is how long an hour or day slot has been over before Tile
// uses it: the rollup writers commit the hour and day buckets less often
// than the minute bucket, so until then its finer slots, which are as fresh
// as the minute bucket, cover it.
const CoarseDelay = time.Minute

// Tile covers [from, to) with the coarsest slots that fit: whole UTC days, then
// whole hours, then minutes at the edges. A slot is used only while its
// resolution still holds data for it (its start is within the retention before
// now), and an hour or day slot only once it has been over for CoarseDelay;
// where the minute bucket has expired, the window's start is widened down to
// the hour (or day) so that the window is covered by data that exists.
// From and to are first aligned to the minute (from down, to up).
func (l Layout) Tile(from, to, now time.Time) (Tiling, error) {
	if !from.Before(to) {
		return Tiling{}, fmt.Errorf("rollup: empty window [%s, %s)", from, to)
	}
	from, to = Minute.Truncate(from), Minute.Ceil(to)
	available := func(u Unit, t time.Time) bool {
		return !t.Before(now.Add(-l[u].Retention))
	}
	// Widen the start to the finest unit that still holds data there.
	for u := Minute; u < Day && !available(u, from); u++ {
		from = (u + 1).Truncate(from)
	}
	settled := now.Add(-CoarseDelay)
	var cells []Cell
	for t := from; t.Before(to); {
		u := Minute
		for _, cand := range []Unit{Day, Hour} {
			if cand.Truncate(t).Equal(t) && !cand.Next(t).After(to) && available(cand, t) && !cand.Next(t).After(settled) {
				u = cand
				break
			}
		}
		if u == Minute && !available(Minute, t) {
			// Only possible inside a window whose start was widened: step by the
			// finest unit that has data, which the widening aligned t to.
			u = Hour
			if !available(Hour, t) {
				u = Day
			}
		}
		cells = append(cells, Cell{Unit: u, Start: t})
		t = u.Next(t)
		if t.After(to) {
			to = t
		}
	}
	return Tiling{From: from, To: to, Cells: cells}, nil
}
