package main

import (
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/admetric/admetric/ingest/event"
)

// What admetric loadgen counts: events sent and how the service answered
// them, request latencies, and the summary it prints at the end.

// latencies is a histogram of durations in buckets 2% apart, from 50 µs to
// about 77 s: its memory is the same however long the run, and a quantile
// read from it is within 2% of the true one.
type latencies struct {
	counts [latBuckets]int64
	n      int64
}

const (
	latMin     = 50 * time.Microsecond
	latGrowth  = 1.02
	latBuckets = 720
)

// latBucket is the bucket of d: the first whose upper bound is at least d.
func latBucket(d time.Duration) int {
	if d <= latMin {
		return 0
	}
	i := int(math.Ceil(math.Log(float64(d)/float64(latMin))/math.Log(latGrowth) - 1e-9))
	return min(i, latBuckets-1)
}

// latUpper is the upper bound of bucket i.
func latUpper(i int) time.Duration {
	return time.Duration(float64(latMin) * math.Pow(latGrowth, float64(i)))
}

func (l *latencies) add(d time.Duration) {
	l.counts[latBucket(d)]++
	l.n++
}

// quantile returns the q-quantile (0 < q ≤ 1) as its bucket's upper bound;
// 0 when there is nothing.
func (l *latencies) quantile(q float64) time.Duration {
	if l.n == 0 {
		return 0
	}
	rank := max(1, int64(math.Ceil(q*float64(l.n))))
	var seen int64
	for i, c := range l.counts {
		seen += c
		if seen >= rank {
			return latUpper(i)
		}
	}
	return latUpper(latBuckets - 1)
}

// requestKind is what a request was, for its latency.
type requestKind int

const (
	reqEvents requestKind = iota // POST /ads/events
	reqVAST                      // GET /vast/:ad_id
	reqPixel                     // a tracking pixel or the click-through
	reqKinds
)

var requestKindNames = [reqKinds]string{"POST /ads/events", "GET /vast/:ad_id", "pixels and clicks"}

// firstBodies is how many answers of each refusal the summary quotes.
const firstBodies = 3

// adCounts are the events of one ad the service accepted, browser traffic
// only (crawlers' are counted apart: the service counts them as invalid).
type adCounts struct {
	// Events counts every accepted event by type; VAST those of them that
	// came through the VAST tracking URLs.
	Events map[event.Type]int
	VAST   map[event.Type]int
}

// loadgenReport is what a run did, for the summary and for tests.
type loadgenReport struct {
	Target   string
	Seed     uint64
	Ads      int
	Visitors int
	Rate     float64 // asked, events/s
	Elapsed  time.Duration

	// Sessions counts the viewings started, VASTSessions those of them
	// through a VAST document.
	Sessions, VASTSessions int
	// Sent counts the events sent by type, crawlers' included; BotSent
	// counts the crawlers' events among them.
	Sent    map[event.Type]int
	BotSent int
	// Accepted counts the events the service took: 202 items of a batch,
	// and pixels and clicks it answered (200, 204, 302). ByAd splits the
	// browsers' by ad; BotAccepted counts the crawlers'.
	Accepted    int
	ByAd        map[string]*adCounts
	BotAccepted int
	// Viewers counts the visitors of the pool with an accepted event.
	Viewers int
	// Refused counts the events not taken, by HTTP status (an item's code
	// in a batch), "no answer" (the request failed or was cut off at the
	// end) or "empty VAST" (no ad in the document); FirstBodies quotes the
	// first distinct answers of each.
	Refused     map[string]int
	FirstBodies map[string][]string
	// Latency is the requests' latencies, by kind.
	Latency [reqKinds]latencies
}

// tally collects a run's counts from the sending goroutines. Safe for
// concurrent use.
type tally struct {
	mu      sync.Mutex
	r       loadgenReport
	viewers map[*visitor]bool
}

func newTally(r loadgenReport) *tally {
	r.Sent = map[event.Type]int{}
	r.ByAd = map[string]*adCounts{}
	r.Refused = map[string]int{}
	r.FirstBodies = map[string][]string{}
	return &tally{r: r, viewers: map[*visitor]bool{}}
}

func (t *tally) session(vast bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.r.Sessions++
	if vast {
		t.r.VASTSessions++
	}
}

// sent counts an event about to be sent.
func (t *tally) sent(typ event.Type, bot bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.r.Sent[typ]++
	if bot {
		t.r.BotSent++
	}
}

// accepted counts an event of v the service took.
func (t *tally) accepted(adID string, typ event.Type, v *visitor, vast bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.r.Accepted++
	if v.Bot {
		t.r.BotAccepted++
		return
	}
	t.viewers[v] = true
	c := t.r.ByAd[adID]
	if c == nil {
		c = &adCounts{Events: map[event.Type]int{}, VAST: map[event.Type]int{}}
		t.r.ByAd[adID] = c
	}
	c.Events[typ]++
	if vast {
		c.VAST[typ]++
	}
}

// refused counts an event the service did not take, under why, quoting
// body if it is among the first of its kind.
func (t *tally) refused(why, body string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.r.Refused[why]++
	body = strings.TrimSpace(body)
	if bodies := t.r.FirstBodies[why]; len(bodies) < firstBodies && !slices.Contains(bodies, body) {
		t.r.FirstBodies[why] = append(bodies, body)
	}
}

func (t *tally) latency(kind requestKind, d time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.r.Latency[kind].add(d)
}

// progress returns the events sent, accepted and refused so far.
func (t *tally) progress() (sent, accepted, refused int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, n := range t.r.Sent {
		sent += n
	}
	for _, n := range t.r.Refused {
		refused += n
	}
	return sent, t.r.Accepted, refused
}

// report returns a copy of the counts, the run having taken elapsed.
func (t *tally) report(elapsed time.Duration) *loadgenReport {
	t.mu.Lock()
	defer t.mu.Unlock()
	r := t.r
	r.Elapsed = elapsed
	r.Viewers = len(t.viewers)
	r.Sent = maps.Clone(t.r.Sent)
	r.Refused = maps.Clone(t.r.Refused)
	r.FirstBodies = map[string][]string{}
	for k, v := range t.r.FirstBodies {
		r.FirstBodies[k] = slices.Clone(v)
	}
	r.ByAd = map[string]*adCounts{}
	for id, c := range t.r.ByAd {
		r.ByAd[id] = &adCounts{Events: maps.Clone(c.Events), VAST: maps.Clone(c.VAST)}
	}
	return &r
}

// totalSent is the number of events sent.
func (r *loadgenReport) totalSent() int {
	n := 0
	for _, c := range r.Sent {
		n += c
	}
	return n
}

// totalRefused is the number of events refused or unanswered.
func (r *loadgenReport) totalRefused() int {
	n := 0
	for _, c := range r.Refused {
		n += c
	}
	return n
}

// write prints the summary.
func (r *loadgenReport) write(w io.Writer) {
	sent := r.totalSent()
	rate := perSecond(sent, r.Elapsed)
	fmt.Fprintf(w, "admetric loadgen: %s against %s (seed %d), %d ads, %d visitors\n",
		r.Elapsed.Round(100*time.Millisecond), r.Target, r.Seed, r.Ads, r.Visitors)
	fmt.Fprintf(w, "sent        %d events (%.1f/s of %g/s asked) in %d sessions, %d of them through VAST\n",
		sent, rate, r.Rate, r.Sessions, r.VASTSessions)
	var types []string
	for _, t := range event.Types {
		if n := r.Sent[t]; n > 0 {
			types = append(types, fmt.Sprintf("%s %d", t, n))
		}
	}
	if len(types) > 0 {
		fmt.Fprintf(w, "            %s\n", strings.Join(types, "  "))
	}
	if r.BotSent > 0 {
		fmt.Fprintf(w, "            %d of them from crawlers (the service counts them as invalid traffic)\n", r.BotSent)
	}
	if r.BotAccepted > 0 {
		fmt.Fprintf(w, "accepted    %d (%d from %d visitors of the pool, %d from crawlers)\n",
			r.Accepted, r.Accepted-r.BotAccepted, r.Viewers, r.BotAccepted)
	} else {
		fmt.Fprintf(w, "accepted    %d (from %d visitors of the pool)\n", r.Accepted, r.Viewers)
	}
	refused := r.totalRefused()
	if refused == 0 {
		fmt.Fprintf(w, "refused     0\n")
	} else {
		whys := slices.Sorted(maps.Keys(r.Refused))
		parts := make([]string, len(whys))
		for i, why := range whys {
			parts[i] = fmt.Sprintf("%s ×%d", why, r.Refused[why])
		}
		fmt.Fprintf(w, "refused     %d: %s\n", refused, strings.Join(parts, ", "))
		for _, why := range whys {
			for _, body := range r.FirstBodies[why] {
				fmt.Fprintf(w, "            %s: %s\n", why, truncate(body, 200))
			}
		}
	}
	first := true
	for k := range reqKinds {
		l := &r.Latency[k]
		if l.n == 0 {
			continue
		}
		label := "            "
		if first {
			label, first = "latency     ", false
		}
		fmt.Fprintf(w, "%s%-17s p50 %-8s p99 %-8s (%d requests)\n", label, requestKindNames[k],
			roundLatency(l.quantile(0.5)), roundLatency(l.quantile(0.99)), l.n)
	}
}

// roundLatency keeps three significant digits or so.
func roundLatency(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(10 * time.Millisecond)
	case d >= 10*time.Millisecond:
		return d.Round(100 * time.Microsecond)
	default:
		return d.Round(10 * time.Microsecond)
	}
}

func truncate(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}
