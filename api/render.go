package api

import (
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/admetric/admetric/store/rollup"
)

// render builds the report from aggs, the sums of each ad (in q.ids' order)
// over each window of p: the ads sorted by clicks, the page of them q asks
// for, and the totals over every ad.
func render(q query, p plan, aggs [][]*rollup.Aggregate) (Report, error) {
	rep := Report{Timeframe: q.timeframe, From: p.whole.From, To: p.whole.To, Interval: q.intervalName,
		TZ: q.loc.String(), TotalAds: len(q.ids), Limit: q.limit, Offset: q.offset, IncludeInvalid: q.includeInvalid}
	for _, u := range p.whole.Units() {
		rep.Resolutions = append(rep.Resolutions, u.String())
	}
	ads := make([]Metrics, len(q.ids))
	for i, id := range q.ids {
		ads[i] = metricsOf(id, aggs[i][0], q.includeInvalid)
		ads[i].Series = series(p.points, aggs[i][1:], q.includeInvalid)
	}
	order := byClicks(ads)
	// The totals add the ads in that order: the most clicked first, whose
	// visitors are the likeliest to be a dense sketch already (from a range
	// sum), which the rest then go into without sorting.
	totals := make([]rollup.Aggregate, len(p.windows))
	sorted := make([]Metrics, len(ads))
	for k, i := range order {
		for w := range p.windows {
			if err := totals[w].AddAggregate(aggs[i][w]); err != nil {
				return rep, err
			}
		}
		sorted[k] = ads[i]
	}
	lo := min(q.offset, len(sorted))
	rep.Ads = sorted[lo:min(lo+q.limit, len(sorted))]
	rep.Total = metricsOf("", &totals[0], q.includeInvalid)
	tp := make([]*rollup.Aggregate, len(p.points))
	for i := range p.points {
		tp[i] = &totals[i+1]
	}
	rep.Total.Series = series(p.points, tp, q.includeInvalid)
	return rep, nil
}

// byClicks returns the indices of ads by clicks, descending, then by ID.
func byClicks(ads []Metrics) []int {
	order := make([]int, len(ads))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(i, j int) int {
		a, b := &ads[i], &ads[j]
		switch {
		case a.Clicks > b.Clicks:
			return -1
		case a.Clicks < b.Clicks:
			return 1
		}
		return strings.Compare(a.AdID, b.AdID)
	})
	return order
}

func series(pts [][2]time.Time, aggs []*rollup.Aggregate, includeInvalid bool) []Point {
	if len(pts) == 0 {
		return nil
	}
	out := make([]Point, len(pts))
	for i, p := range pts {
		out[i] = Point{From: p[0], To: p[1], Metrics: metricsOf("", aggs[i], includeInvalid)}
	}
	return out
}

// metricsOf renders a; with includeInvalid, impressions, clicks and CTR
// count invalid traffic too.
func metricsOf(adID string, a *rollup.Aggregate, includeInvalid bool) Metrics {
	m := Metrics{
		AdID:           adID,
		Impressions:    a.Impressions,
		Clicks:         a.Clicks,
		UniqueVisitors: a.UniqueVisitors(),
		Starts:         a.Starts,
		FirstQuartiles: a.FirstQuartiles,
		Midpoints:      a.Midpoints,
		ThirdQuartiles: a.ThirdQuartiles,
		Completes:      a.Completes,
		Skips:          a.Skips,
		VASTErrors:     a.Errors,
		Servings:       a.Servings,
		ServingClicks:  a.ServingClicks,
		Invalid:        a.Invalid,
		InvalidByReason: InvalidCounts{
			Bot: a.InvalidBot, DuplicateClick: a.InvalidDuplicateClick, Rate: a.InvalidRate,
			ClickWithoutImpression: a.InvalidClickWithoutImpression, Playback: a.InvalidPlayback, Signature: a.InvalidSignature,
		},
	}
	if all := a.Impressions + a.Clicks + a.Starts + a.FirstQuartiles + a.Midpoints + a.ThirdQuartiles +
		a.Completes + a.Skips + a.Errors + a.Invalid; all > 0 {
		m.IVTRate = ratio(a.Invalid, all)
	}
	if includeInvalid {
		m.Impressions += a.InvalidImpressions
		m.Clicks += a.InvalidClicks
	}
	if len(a.ErrorCodes) > 0 {
		m.VASTErrorsByCode = make(map[string]uint64, len(a.ErrorCodes))
		for _, c := range a.ErrorCodes {
			code := "unknown"
			if c.Code != 0 {
				code = strconv.FormatUint(uint64(c.Code), 10)
			}
			m.VASTErrorsByCode[code] = c.N
		}
	}
	if a.Servings > 0 {
		m.ClicksPerServing = ratio(a.ServingClicks, a.Servings)
	}
	if a.PlaybackCount > 0 {
		m.AvgPlaybackTime = ratio(a.PlaybackMillis, a.PlaybackCount*1000)
	}
	if m.Impressions > 0 {
		m.CTR = ratio(m.Clicks, m.Impressions)
	}
	if a.Starts > 0 {
		m.CompletionRate = ratio(a.Completes, a.Starts)
	}
	return m
}

func ratio(num, den uint64) *float64 {
	v := float64(num) / float64(den)
	return &v
}
