package rollup

import (
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// testRetentions are the retentions of DESIGN.md section 5: minutes 72 h,
// hours 100 days, days 5 years.
var testRetentions = Retentions{Minute: 72 * time.Hour, Hour: 2400 * time.Hour, Day: 43800 * time.Hour}

// testNow is an unaligned "now" used by the tiling tests.
var testNow = time.Date(2026, 11, 25, 12, 34, 56, 789, time.UTC)

func TestLayoutUnitString(t *testing.T) {
	t.Parallel()
	for u, want := range map[Unit]string{Minute: "minute", Hour: "hour", Day: "day", Unit(7): "unit(7)"} {
		if got := u.String(); got != want {
			t.Errorf("Unit(%d).String() = %q, want %q", int(u), got, want)
		}
	}
}

func TestNewLayout(t *testing.T) {
	t.Parallel()
	l := NewLayout(testRetentions)
	want := Layout{
		{Unit: Minute, Bucket: MinuteBucket, Retention: 72 * time.Hour},
		{Unit: Hour, Bucket: HourBucket, Retention: 2400 * time.Hour},
		{Unit: Day, Bucket: DayBucket, Retention: 43800 * time.Hour},
	}
	if l != want {
		t.Errorf("NewLayout = %+v, want %+v", l, want)
	}
	for i, res := range l {
		if res.Unit != Unit(i) {
			t.Errorf("layout[%d].Unit = %v; the layout must be indexable by Unit", i, res.Unit)
		}
	}
	if got := l.MaxRetention(); got != 43800*time.Hour {
		t.Errorf("MaxRetention = %v", got)
	}
	odd := NewLayout(Retentions{Minute: 5 * time.Hour, Hour: time.Hour, Day: 2 * time.Hour})
	if got := odd.MaxRetention(); got != 5*time.Hour {
		t.Errorf("MaxRetention of unordered retentions = %v, want 5h", got)
	}
}

func TestLayoutCheckpointKey(t *testing.T) {
	t.Parallel()
	for p, want := range map[int]string{0: "_checkpoint.p0", 3: "_checkpoint.p3", 15: "_checkpoint.p15"} {
		if got := CheckpointKey(p); got != want {
			t.Errorf("CheckpointKey(%d) = %q, want %q", p, got, want)
		}
	}
	// Rollup keys start with an ad ID, which cannot hold '.'; checkpoint keys
	// start with "_checkpoint." so the two never collide.
	key, _ := Minute.Locate("_checkpoint", testNow)
	if key == CheckpointKey(0) || strings.HasPrefix(CheckpointKey(0), key) {
		t.Errorf("rollup key %q collides with checkpoint key %q", key, CheckpointKey(0))
	}
}

func TestLayoutUnitTruncateNext(t *testing.T) {
	t.Parallel()
	est := time.FixedZone("EST", -5*3600)
	tests := []struct {
		unit       Unit
		in         time.Time
		trunc, nxt time.Time
	}{
		{Minute, time.Date(2026, 11, 25, 12, 34, 56, 789, time.UTC),
			time.Date(2026, 11, 25, 12, 34, 0, 0, time.UTC), time.Date(2026, 11, 25, 12, 35, 0, 0, time.UTC)},
		{Minute, time.Date(2026, 11, 25, 23, 59, 0, 0, time.UTC),
			time.Date(2026, 11, 25, 23, 59, 0, 0, time.UTC), time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)},
		{Hour, time.Date(2026, 11, 25, 12, 34, 56, 789, time.UTC),
			time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC), time.Date(2026, 11, 25, 13, 0, 0, 0, time.UTC)},
		{Hour, time.Date(2026, 11, 25, 20, 30, 0, 0, est), // 01:30 UTC on the 26th
			time.Date(2026, 11, 26, 1, 0, 0, 0, time.UTC), time.Date(2026, 11, 26, 2, 0, 0, 0, time.UTC)},
		{Day, time.Date(2026, 11, 25, 12, 34, 56, 789, time.UTC),
			time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC), time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)},
		{Day, time.Date(2026, 11, 25, 20, 30, 0, 0, est), // a UTC day, not a local one
			time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC), time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC)},
		{Day, time.Date(2026, 11, 30, 23, 0, 0, 0, time.UTC),
			time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC), time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)},
		{Day, time.Date(2028, 2, 28, 6, 0, 0, 0, time.UTC),
			time.Date(2028, 2, 28, 0, 0, 0, 0, time.UTC), time.Date(2028, 2, 29, 0, 0, 0, 0, time.UTC)},
		{Day, time.Date(2026, 12, 31, 6, 0, 0, 0, time.UTC),
			time.Date(2026, 12, 31, 0, 0, 0, 0, time.UTC), time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)},
	}
	for _, tc := range tests {
		got := tc.unit.Truncate(tc.in)
		if !got.Equal(tc.trunc) || got.Location() != time.UTC {
			t.Errorf("%v.Truncate(%v) = %v, want %v (UTC)", tc.unit, tc.in, got, tc.trunc)
		}
		if again := tc.unit.Truncate(got); !again.Equal(got) {
			t.Errorf("%v.Truncate is not idempotent at %v: %v", tc.unit, got, again)
		}
		if nxt := tc.unit.Next(got); !nxt.Equal(tc.nxt) {
			t.Errorf("%v.Next(%v) = %v, want %v", tc.unit, got, nxt, tc.nxt)
		}
	}
}

func TestLocate(t *testing.T) {
	t.Parallel()
	est := time.FixedZone("EST", -5*3600)
	tests := []struct {
		name string
		unit Unit
		adID string
		at   time.Time
		key  string
		slot int
	}{
		{"minute", Minute, "ad", time.Date(2026, 11, 25, 12, 34, 56, 0, time.UTC), "ad.2026112512", 34},
		{"minute first", Minute, "ad", time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC), "ad.2026112500", 0},
		{"minute last", Minute, "ad", time.Date(2026, 11, 25, 23, 59, 59, 999999999, time.UTC), "ad.2026112523", 59},
		{"hour", Hour, "ad", time.Date(2026, 11, 25, 12, 34, 56, 0, time.UTC), "ad.20261125", 12},
		{"hour last", Hour, "ad", time.Date(2026, 11, 25, 23, 59, 0, 0, time.UTC), "ad.20261125", 23},
		{"day", Day, "ad", time.Date(2026, 11, 25, 12, 34, 56, 0, time.UTC), "ad.202611", 24},
		{"day first", Day, "ad", time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), "ad.202611", 0},
		{"day 31", Day, "ad", time.Date(2026, 12, 31, 23, 59, 0, 0, time.UTC), "ad.202612", 30},
		{"minute non-UTC", Minute, "ad", time.Date(2026, 11, 25, 20, 30, 0, 0, est), "ad.2026112601", 30},
		{"hour non-UTC", Hour, "ad", time.Date(2026, 11, 25, 20, 30, 0, 0, est), "ad.20261126", 1},
		{"day non-UTC", Day, "ad", time.Date(2026, 11, 25, 20, 30, 0, 0, est), "ad.202611", 25},
		{"day non-UTC month change", Day, "ad", time.Date(2026, 11, 30, 22, 0, 0, 0, est), "ad.202612", 0},
		{"long ad ID", Hour, strings.Repeat("x", 64), time.Date(2026, 1, 2, 3, 0, 0, 0, time.UTC), strings.Repeat("x", 64) + ".20260102", 3},
	}
	for _, tc := range tests {
		key, slot := tc.unit.Locate(tc.adID, tc.at)
		if key != tc.key || slot != tc.slot {
			t.Errorf("%s: %v.Locate(%q, %v) = (%q, %d), want (%q, %d)", tc.name, tc.unit, tc.adID, tc.at, key, slot, tc.key, tc.slot)
		}
	}
}

func TestLocateAgreesWithTruncate(t *testing.T) {
	t.Parallel()
	// Every instant of a slot maps to the same (key, slot), and the slot after
	// it to a different one; the key spells the period as time.Format does.
	rng := rand.New(rand.NewPCG(1, 2))
	base := time.Date(1990, 1, 1, 0, 0, 0, 0, time.UTC)
	for range 5000 {
		at := base.Add(time.Duration(rng.Int64N(int64(80 * 365 * 24 * time.Hour))))
		for _, u := range []Unit{Minute, Hour, Day} {
			start := u.Truncate(at)
			k1, s1 := u.Locate("a", at)
			k2, s2 := u.Locate("a", start)
			k3, s3 := u.Locate("a", u.Next(start).Add(-time.Nanosecond))
			k4, s4 := u.Locate("a", u.Next(start))
			if k1 != k2 || s1 != s2 || k1 != k3 || s1 != s3 {
				t.Fatalf("%v at %v: (%s,%d) (%s,%d) (%s,%d) differ within one slot", u, at, k1, s1, k2, s2, k3, s3)
			}
			if want := "a." + at.UTC().Format(map[Unit]string{Minute: "2006010215", Hour: "20060102", Day: "200601"}[u]); k1 != want {
				t.Fatalf("%v at %v: key %s, want %s as time.Format spells it", u, at, k1, want)
			}
			if k1 == k4 && s1 == s4 {
				t.Fatalf("%v at %v: the next slot has the same (key, slot) %s/%d", u, at, k1, s1)
			}
			if s1 < 0 || s1 >= maxSlots || (u == Minute && s1 >= 60) || (u == Hour && s1 >= 24) || (u == Day && s1 >= 31) {
				t.Fatalf("%v at %v: slot %d out of range", u, at, s1)
			}
		}
	}
}

// checkTiling fails unless tl covers [tl.From, tl.To) exactly with cells in
// order, each aligned to its unit, each within its unit's retention at now.
func checkTiling(t *testing.T, l Layout, tl Tiling, now time.Time) {
	t.Helper()
	if len(tl.Cells) == 0 {
		t.Fatalf("no cells for [%v, %v)", tl.From, tl.To)
	}
	if !tl.From.Before(tl.To) {
		t.Fatalf("empty tiling [%v, %v)", tl.From, tl.To)
	}
	if !tl.Cells[0].Start.Equal(tl.From) {
		t.Errorf("first cell starts at %v, From is %v", tl.Cells[0].Start, tl.From)
	}
	end := tl.From
	for i, c := range tl.Cells {
		if c.Unit < Minute || c.Unit > Day {
			t.Fatalf("cell %d has unit %v", i, c.Unit)
		}
		if !c.Start.Equal(end) {
			t.Fatalf("cell %d (%v %v) starts at %v, previous cell ends at %v (gap or overlap)", i, c.Unit, c.Start, c.Start, end)
		}
		if !c.Unit.Truncate(c.Start).Equal(c.Start) {
			t.Errorf("cell %d (%v) start %v is not aligned", i, c.Unit, c.Start)
		}
		if c.Start.Before(now.Add(-l[c.Unit].Retention)) {
			t.Errorf("cell %d (%v %v) is older than the %v retention %v at now %v", i, c.Unit, c.Start, c.Unit, l[c.Unit].Retention, now)
		}
		end = c.Unit.Next(c.Start)
	}
	if !end.Equal(tl.To) {
		t.Errorf("last cell ends at %v, To is %v", end, tl.To)
	}
}

// checkCoarsest fails if a cell could have been a coarser slot: one aligned,
// ending at or before to (the requested end, aligned up to the minute) and
// still retained.
func checkCoarsest(t *testing.T, l Layout, tl Tiling, to, now time.Time) {
	t.Helper()
	for i, c := range tl.Cells {
		for cu := c.Unit + 1; cu <= Day; cu++ {
			end := cu.Next(c.Start)
			if cu.Truncate(c.Start).Equal(c.Start) && !end.After(to) && !c.Start.Before(now.Add(-l[cu].Retention)) &&
				!end.After(now.Add(-CoarseDelay)) {
				t.Errorf("cell %d (%v %v) could be a %v", i, c.Unit, c.Start, cu)
			}
		}
	}
}

// ceilMinute rounds t up to the minute, in UTC.
func ceilMinute(t time.Time) time.Time {
	if m := Minute.Truncate(t); !m.Equal(t) {
		return m.Add(time.Minute)
	}
	return t.UTC()
}

// cellsPerUnit counts cells per unit.
func cellsPerUnit(tl Tiling) [3]int {
	var n [3]int
	for _, c := range tl.Cells {
		n[c.Unit]++
	}
	return n
}

func TestTile(t *testing.T) {
	t.Parallel()
	l := NewLayout(testRetentions)
	now := testNow // 2026-11-25 12:34:56.000000789
	d := func(day, h, m int) time.Time { return time.Date(2026, 11, day, h, m, 0, 0, time.UTC) }
	tests := []struct {
		name     string
		from, to time.Time
		wantFrom time.Time
		wantTo   time.Time
		count    [3]int // minutes, hours, days
		units    []Unit
		nowAt    time.Time // instead of now
	}{
		{
			name: "last hour: minutes only",
			from: now.Add(-time.Hour), to: now,
			wantFrom: d(25, 11, 34), wantTo: d(25, 12, 35),
			count: [3]int{61, 0, 0}, units: []Unit{Minute},
		},
		{
			name: "3h within minute retention: minutes at the edges, hours inside",
			from: d(25, 9, 10), to: d(25, 12, 20),
			wantFrom: d(25, 9, 10), wantTo: d(25, 12, 20),
			count: [3]int{50 + 20, 2, 0}, units: []Unit{Minute, Hour},
		},
		{
			name: "whole aligned hours",
			from: d(25, 9, 0), to: d(25, 12, 0),
			wantFrom: d(25, 9, 0), wantTo: d(25, 12, 0),
			count: [3]int{0, 3, 0}, units: []Unit{Hour},
		},
		{
			name: "48h within minute retention uses a day",
			from: d(23, 13, 30), to: d(25, 12, 30),
			wantFrom: d(23, 13, 30), wantTo: d(25, 12, 30),
			count: [3]int{30 + 30, 10 + 12, 1}, units: []Unit{Minute, Hour, Day},
		},
		{
			name: "30 days: hours then days then hours and minutes",
			from: now.AddDate(0, 0, -30), to: now,
			// the start is older than the minute retention: widened to the hour
			wantFrom: time.Date(2026, 10, 26, 12, 0, 0, 0, time.UTC), wantTo: d(25, 12, 35),
			count: [3]int{35, 12 + 12, 29}, units: []Unit{Minute, Hour, Day},
		},
		{
			name: "older than minute retention, newer than hour retention",
			from: d(15, 10, 17), to: d(15, 14, 45),
			wantFrom: d(15, 10, 0), wantTo: d(15, 15, 0),
			count: [3]int{0, 5, 0}, units: []Unit{Hour},
		},
		{
			name: "older than minute retention, whole days inside",
			from: d(10, 22, 5), to: d(13, 1, 1),
			wantFrom: d(10, 22, 0), wantTo: d(13, 2, 0),
			count: [3]int{0, 2 + 2, 2}, units: []Unit{Hour, Day},
		},
		{
			name: "straddles the minute retention boundary",
			// minute data starts at 2026-11-22 12:34:56.000000789
			from: d(22, 10, 10), to: d(22, 14, 20),
			wantFrom: d(22, 10, 0), wantTo: d(22, 14, 20),
			count: [3]int{20, 4, 0}, units: []Unit{Minute, Hour},
		},
		{
			name: "older than hour retention: days",
			from: time.Date(2026, 8, 1, 5, 5, 0, 0, time.UTC), to: time.Date(2026, 8, 3, 5, 5, 0, 0, time.UTC),
			wantFrom: time.Date(2026, 8, 1, 0, 0, 0, 0, time.UTC), wantTo: time.Date(2026, 8, 4, 0, 0, 0, 0, time.UTC),
			count: [3]int{0, 0, 3}, units: []Unit{Day},
		},
		{
			name: "unaligned from and to are aligned down and up",
			from: d(25, 9, 10).Add(30 * time.Second), to: d(25, 12, 19).Add(time.Second),
			wantFrom: d(25, 9, 10), wantTo: d(25, 12, 20),
			count: [3]int{50 + 20, 2, 0}, units: []Unit{Minute, Hour},
		},
		{
			name: "unaligned inside one minute",
			from: d(25, 9, 10).Add(10 * time.Second), to: d(25, 9, 10).Add(50 * time.Second),
			wantFrom: d(25, 9, 10), wantTo: d(25, 9, 11),
			count: [3]int{1, 0, 0}, units: []Unit{Minute},
		},
		{
			name: "non-UTC inputs",
			from: d(25, 9, 10).In(time.FixedZone("IST", 5*3600+1800)), to: d(25, 12, 20).In(time.FixedZone("PST", -8*3600)),
			wantFrom: d(25, 9, 10), wantTo: d(25, 12, 20),
			count: [3]int{70, 2, 0}, units: []Unit{Minute, Hour},
		},
		{
			// Hours not over for CoarseDelay yet are read from their minutes.
			name: "window reaching into the future",
			from: d(25, 12, 0), to: d(25, 14, 0),
			wantFrom: d(25, 12, 0), wantTo: d(25, 14, 0),
			count: [3]int{120, 0, 0}, units: []Unit{Minute},
		},
		{
			name: "an hour over for less than CoarseDelay",
			from: d(25, 10, 0), to: d(25, 12, 0),
			nowAt:    d(25, 12, 0).Add(CoarseDelay - time.Second),
			wantFrom: d(25, 10, 0), wantTo: d(25, 12, 0),
			count: [3]int{60, 1, 0}, units: []Unit{Minute, Hour},
		},
		{
			name: "an hour over for CoarseDelay",
			from: d(25, 10, 0), to: d(25, 12, 0),
			nowAt:    d(25, 12, 0).Add(CoarseDelay),
			wantFrom: d(25, 10, 0), wantTo: d(25, 12, 0),
			count: [3]int{0, 2, 0}, units: []Unit{Hour},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			now := now
			if !tc.nowAt.IsZero() {
				now = tc.nowAt
			}
			tl, err := l.Tile(tc.from, tc.to, now)
			if err != nil {
				t.Fatalf("Tile(%v, %v) = %v", tc.from, tc.to, err)
			}
			checkTiling(t, l, tl, now)
			checkCoarsest(t, l, tl, ceilMinute(tc.to), now)
			if !tl.From.Equal(tc.wantFrom) || !tl.To.Equal(tc.wantTo) {
				t.Errorf("window [%v, %v), want [%v, %v)", tl.From, tl.To, tc.wantFrom, tc.wantTo)
			}
			if tl.From.Location() != time.UTC || tl.To.Location() != time.UTC {
				t.Errorf("window in %v/%v, want UTC", tl.From.Location(), tl.To.Location())
			}
			if got := cellsPerUnit(tl); got != tc.count {
				t.Errorf("cells per unit (minute, hour, day) = %v, want %v", got, tc.count)
			}
			if got := tl.Units(); !equalUnits(got, tc.units) {
				t.Errorf("Units() = %v, want %v", got, tc.units)
			}
		})
	}
}

func equalUnits(a, b []Unit) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestTile30DaysIsSmall(t *testing.T) {
	t.Parallel()
	l := NewLayout(testRetentions)
	for _, span := range []time.Duration{time.Hour, 6 * time.Hour, 24 * time.Hour, 7 * 24 * time.Hour, 30 * 24 * time.Hour} {
		tl, err := l.Tile(testNow.Add(-span), testNow, testNow)
		if err != nil {
			t.Fatal(err)
		}
		checkTiling(t, l, tl, testNow)
		if len(tl.Cells) >= 100 {
			t.Errorf("last %v: %d cells, want < 100", span, len(tl.Cells))
		}
		t.Logf("last %v: %d cells %v", span, len(tl.Cells), cellsPerUnit(tl))
	}
}

func TestTileEmptyWindow(t *testing.T) {
	t.Parallel()
	l := NewLayout(testRetentions)
	at := time.Date(2026, 11, 25, 9, 10, 0, 0, time.UTC)
	tests := []struct {
		name     string
		from, to time.Time
	}{
		{"from equals to", at, at},
		{"from after to", at.Add(time.Hour), at},
		{"from a minute after to", at.Add(time.Minute), at},
		{"zero times", time.Time{}, time.Time{}},
		{"reversed within one minute", at.Add(50 * time.Second), at.Add(10 * time.Second)},
		{"equal within a minute", at.Add(30 * time.Second), at.Add(30 * time.Second)},
	}
	for _, tc := range tests {
		tl, err := l.Tile(tc.from, tc.to, testNow)
		if err == nil {
			t.Errorf("%s: Tile(%v, %v) = %d cells, want an error", tc.name, tc.from, tc.to, len(tl.Cells))
		}
	}
}

func TestTileRandomWindows(t *testing.T) {
	t.Parallel()
	l := NewLayout(testRetentions)
	now := testNow
	rng := rand.New(rand.NewPCG(20261125, 42))
	const span = 40 * 24 * time.Hour
	minuteEdge := now.Add(-l[Minute].Retention)
	for i := range 500 {
		a := now.Add(-time.Duration(rng.Int64N(int64(span))))
		b := now.Add(-time.Duration(rng.Int64N(int64(span))))
		if i%10 == 0 { // some windows of whole minutes
			a, b = Minute.Truncate(a), Minute.Truncate(b)
		}
		if a.After(b) {
			a, b = b, a
		}
		if a.Equal(b) {
			b = b.Add(time.Minute)
		}
		tl, err := l.Tile(a, b, now)
		if err != nil {
			t.Fatalf("window %d [%v, %v): %v", i, a, b, err)
		}
		checkTiling(t, l, tl, now)
		alignedFrom := Minute.Truncate(a)
		alignedTo := ceilMinute(b)
		checkCoarsest(t, l, tl, alignedTo, now)
		if tl.From.After(alignedFrom) || tl.To.Before(alignedTo) {
			t.Fatalf("window %d [%v, %v): covered [%v, %v) misses part of it", i, a, b, tl.From, tl.To)
		}
		// Within 40 days hours are retained, so widening never exceeds an hour.
		if alignedFrom.Sub(tl.From) >= time.Hour || tl.To.Sub(alignedTo) >= time.Hour {
			t.Fatalf("window %d [%v, %v): covered [%v, %v) widened by an hour or more", i, a, b, tl.From, tl.To)
		}
		if !alignedFrom.Before(minuteEdge) && (!tl.From.Equal(alignedFrom) || !tl.To.Equal(alignedTo)) {
			t.Fatalf("window %d [%v, %v) inside minute retention: covered [%v, %v), want exactly [%v, %v)",
				i, a, b, tl.From, tl.To, alignedFrom, alignedTo)
		}
		for _, c := range tl.Cells {
			if c.Unit == Minute && c.Start.Before(minuteEdge) {
				t.Fatalf("window %d: minute cell %v older than the minute retention", i, c.Start)
			}
		}
		days := int(tl.To.Sub(tl.From)/(24*time.Hour)) + 1
		if n := len(tl.Cells); n > days+2*24+2*60 {
			t.Fatalf("window %d [%v, %v): %d cells for %d days", i, a, b, n, days)
		}
	}
}
