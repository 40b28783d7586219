package api

import (
	"fmt"
	"net/http"
	"time"

	"github.com/admetric/admetric/store/rollup"
)

// plan is what a query sums: its window's tiling, the points of its series,
// and the cells of each window to sum (the whole window first, then each
// point).
type plan struct {
	whole   rollup.Tiling
	points  [][2]time.Time
	windows [][]rollup.Cell
}

// plan tiles the query's window and each point of its series with the
// coarsest rollups that cover them.
func (h *AnalyticsHandler) plan(q query, now time.Time) (plan, *queryError) {
	var p plan
	from, to := q.from, q.to
	if q.hasInterval {
		p.points = points(q.from, q.to, q.interval, q.loc)
		if len(p.points) > MaxPoints {
			return p, badQuery("interval", fmt.Sprintf("the series would have more than %d points; use a coarser interval or a shorter window", MaxPoints))
		}
		if qerr := h.checkEdges(q, p.points, now); qerr != nil {
			return p, qerr
		}
		from, to = p.points[0][0], p.points[len(p.points)-1][1]
	}
	var err error
	if p.whole, err = h.layout.Tile(from, to, now); err != nil {
		return p, h.unplannable(err)
	}
	p.windows = append(make([][]rollup.Cell, 0, 1+len(p.points)), p.whole.Cells)
	for _, pt := range p.points {
		tl, err := h.layout.Tile(pt[0], pt[1], now)
		if err != nil {
			return p, h.unplannable(err)
		}
		p.windows = append(p.windows, tl.Cells)
	}
	return p, nil
}

// checkEdges refuses a series whose point edges fall where no rollups fine
// enough to cut there exist any more: the tiling would widen the point into
// its neighbours (hours at :30 in Asia/Kolkata need minutes).
func (h *AnalyticsHandler) checkEdges(q query, pts [][2]time.Time, now time.Time) *queryError {
	for _, p := range pts {
		for _, edge := range p {
			u := rollup.Day
			switch {
			case !rollup.Hour.Truncate(edge).Equal(edge):
				u = rollup.Minute
			case !rollup.Day.Truncate(edge).Equal(edge):
				u = rollup.Hour
			}
			if edge.Before(now.Add(-h.layout[u].Retention)) && edge.Before(now) {
				return badQuery("tz", fmt.Sprintf("%s points in %s start at %s, where %s rollups (kept %s) have expired; use a later from, or a time zone whose offset is whole hours",
					q.intervalName, q.loc, edge.Format(time.RFC3339), u, h.layout[u].Retention))
			}
		}
	}
	return nil
}

// unplannable logs a tiling that failed: parse lets through no window that
// cannot be tiled, so it is the server's fault.
func (h *AnalyticsHandler) unplannable(err error) *queryError {
	h.logger.Error("tiling the window", "err", err)
	return &queryError{http.StatusInternalServerError, "", "could not plan the query"}
}

// points splits [from, to) into intervals of unit u, aligned in loc: days
// start at local midnight (23 or 25 hours long across DST changes), hours and
// minutes at the local hour and minute.
func points(from, to time.Time, u rollup.Unit, loc *time.Location) [][2]time.Time {
	floor := func(t time.Time) time.Time {
		t = t.In(loc)
		switch u {
		case rollup.Day:
			return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, loc)
		case rollup.Hour:
			return t.Truncate(time.Minute).Add(-time.Duration(t.Minute()) * time.Minute)
		default:
			return t.Truncate(time.Minute)
		}
	}
	next := func(t time.Time) time.Time {
		switch u {
		case rollup.Day:
			t = t.In(loc)
			return time.Date(t.Year(), t.Month(), t.Day()+1, 0, 0, 0, 0, loc)
		case rollup.Hour:
			return t.Add(time.Hour)
		default:
			return t.Add(time.Minute)
		}
	}
	var out [][2]time.Time
	for t := floor(from); t.Before(to); t = next(t) {
		out = append(out, [2]time.Time{t.UTC(), next(t).UTC()})
		if len(out) > MaxPoints {
			break
		}
	}
	return out
}
