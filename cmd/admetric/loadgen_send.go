package main

import (
	"bytes"
	"container/heap"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/admetric/admetric/ingest/event"
)

// How admetric loadgen sends: a pacer releases events at the asked rate; each
// released event is the next due step of a viewing session in progress, or
// else the impression of a new one; JSON events released together go in one
// POST /ads/events, a VAST session's events are GETs of its tracking URLs.

// pacer releases events at a steady rate: the n-th event (from 0) is due at
// start + n/rate. One that has fallen behind (every request slot busy, the
// service slow) does not catch up in a burst: it owes at most burst events
// and forgets the rest, and the achieved rate says so. Used by one goroutine.
type pacer struct {
	start    time.Time
	rate     float64 // events per second
	burst    int64
	released int64
}

// pacerBurst is the most a pacer catches up at once, in time: after a
// stall (a busy machine, every request slot taken) it releases at most
// 200 ms worth of events together, which go out as one batch and a few
// pixels, and forgets the rest.
const pacerBurst = 200 * time.Millisecond

func newPacer(start time.Time, rate float64) *pacer {
	return &pacer{start: start, rate: rate, burst: max(1, int64(rate*pacerBurst.Seconds()))}
}

// take returns how many events are due at now and not yet released, and
// releases them.
func (p *pacer) take(now time.Time) int {
	// The epsilon absorbs the rounding of next: at next, the event is due.
	due := int64(math.Floor(now.Sub(p.start).Seconds()*p.rate+1e-6)) + 1
	if due-p.released > p.burst {
		p.released = due - p.burst
	}
	n := max(0, due-p.released)
	p.released += n
	return int(n)
}

// next is when the next event is due.
func (p *pacer) next() time.Time {
	// Rounded up, but not for a rounding error of the division.
	return p.start.Add(time.Duration(math.Ceil(float64(p.released)/p.rate*float64(time.Second) - 1e-3)))
}

// adInfo is what loadgen knows of an ad.
type adInfo struct {
	ID       string
	Duration float64 // seconds; defaultAdDuration when the ad has none
	// VAST: the ad has a media file or a VAST tag, so GET /vast serves it.
	VAST bool
}

// session is one viewing in progress.
type session struct {
	ad      *adInfo
	visitor *visitor
	steps   []step
	next    int       // the step to send
	start   time.Time // when the impression was sent
	due     time.Time // when steps[next] is
	vast    bool      // through the VAST document's tracking URLs
	urls    *vastURLs // the serving's, once fetched
}

// sessionQueue is a min-heap of sessions by due time.
type sessionQueue []*session

func (q sessionQueue) Len() int           { return len(q) }
func (q sessionQueue) Less(i, j int) bool { return q[i].due.Before(q[j].due) }
func (q sessionQueue) Swap(i, j int)      { q[i], q[j] = q[j], q[i] }
func (q *sessionQueue) Push(x any)        { *q = append(*q, x.(*session)) }
func (q *sessionQueue) Pop() any {
	old := *q
	s := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	return s
}

// maxBatch bounds the events of one POST /ads/events (the service takes
// 1,000 and 1 MiB).
const maxBatch = 500

// loadgenUserAgent is the user agent of loadgen's own requests (the ads
// list, the JSON batches); the viewers' go in the events.
const loadgenUserAgent = "admetric-loadgen/1"

// runner sends one run's traffic.
type runner struct {
	opts     loadgenOptions
	client   *http.Client
	ads      []adInfo
	visitors []visitor
	bots     []visitor
	tally    *tally

	// Used by the pacing goroutine only.
	rng    *rand.Rand
	picker adPicker
	guard  clickGuard

	mu    sync.Mutex
	queue sessionQueue // sessions waiting for their next step

	slots    chan struct{} // one per request in flight
	wg       sync.WaitGroup
	reqCtx   context.Context // the requests'; ends a grace period after the run
	stopping atomic.Bool     // set when the run ends: sessions go no further
}

// pace sends events at the asked rate until ctx ends or, when end is not
// zero, until end.
func (r *runner) pace(ctx context.Context, end time.Time) {
	p := newPacer(time.Now(), r.opts.Rate)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		now := time.Now()
		if !end.IsZero() && !now.Before(end) || ctx.Err() != nil {
			return
		}
		if n := p.take(now); n > 0 {
			if !r.dispatch(ctx, r.nextSessions(now, n)) {
				return
			}
			continue
		}
		wake := p.next()
		if !end.IsZero() && end.Before(wake) {
			wake = end
		}
		timer.Reset(time.Until(wake))
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
	}
}

// nextSessions returns n sessions whose next step is to be sent now: those
// due first, then new ones.
func (r *runner) nextSessions(now time.Time, n int) []*session {
	out := make([]*session, 0, n)
	r.mu.Lock()
	for len(out) < n && len(r.queue) > 0 && !r.queue[0].due.After(now) {
		out = append(out, heap.Pop(&r.queue).(*session))
	}
	r.mu.Unlock()
	for len(out) < n {
		out = append(out, r.newSession(now))
	}
	return out
}

// newSession starts a viewing: an ad by popularity, a visitor from the pool
// (or a crawler), its steps, and whether it goes through VAST.
func (r *runner) newSession(now time.Time) *session {
	ai := r.picker.pick()
	ad := &r.ads[ai]
	s := &session{ad: ad, start: now, due: now}
	if r.opts.Bots > 0 && r.rng.Float64() < r.opts.Bots {
		s.visitor = &r.bots[r.rng.IntN(len(r.bots))]
		s.steps = planBotSession(r.rng, ad.Duration)
		r.tally.session(false)
		return s
	}
	vi := r.rng.IntN(len(r.visitors))
	s.visitor = &r.visitors[vi]
	s.steps = planSession(r.rng, ad.Duration, r.opts.CTR)
	if last := s.steps[len(s.steps)-1]; last.Type == event.Click {
		if !r.guard.allow(vi, ai, r.at(s, last)) {
			s.steps = withoutClick(s.steps)
		}
	}
	s.vast = r.rng.Float64() < r.opts.Pixels && ad.VAST
	r.tally.session(s.vast)
	return s
}

// at is when step st of s is due: playback runs -speed times faster than
// real time.
func (r *runner) at(s *session, st step) time.Time {
	return s.start.Add(time.Duration(st.At / r.opts.Speed * float64(time.Second)))
}

// dispatch sends the next step of each of sessions: the JSON ones in
// batches, the VAST ones each by itself. It returns false when ctx ended
// while it waited for a request slot.
func (r *runner) dispatch(ctx context.Context, sessions []*session) bool {
	var batch []*session
	for _, s := range sessions {
		if !s.vast {
			batch = append(batch, s)
			continue
		}
		if !r.acquire(ctx) {
			return false
		}
		r.tally.sent(s.steps[s.next].Type, s.visitor.Bot)
		r.wg.Go(func() {
			defer r.release()
			r.sendVAST(s)
		})
	}
	for len(batch) > 0 {
		chunk := batch[:min(len(batch), maxBatch)]
		batch = batch[len(chunk):]
		if !r.acquire(ctx) {
			return false
		}
		for _, s := range chunk {
			r.tally.sent(s.steps[s.next].Type, s.visitor.Bot)
		}
		r.wg.Go(func() {
			defer r.release()
			r.sendBatch(chunk)
		})
	}
	return true
}

func (r *runner) acquire(ctx context.Context) bool {
	select {
	case r.slots <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

func (r *runner) release() { <-r.slots }

// advance queues s for its next step, if it has one and the run goes on.
func (r *runner) advance(s *session) {
	s.next++
	if s.next >= len(s.steps) || r.stopping.Load() {
		return
	}
	s.due = r.at(s, s.steps[s.next])
	r.mu.Lock()
	heap.Push(&r.queue, s)
	r.mu.Unlock()
}

// jsonEvent is an event as POST /ads/events takes it. The service gives it
// its ID; the viewer's address and user agent are in the body, as an ad
// server relaying its players' events sends them.
type jsonEvent struct {
	Type         event.Type `json:"type"`
	AdID         string     `json:"ad_id"`
	Timestamp    string     `json:"timestamp"`
	IP           string     `json:"ip"`
	UserAgent    string     `json:"user_agent"`
	PlaybackTime float64    `json:"playback_time"`
}

// batchResults is what loadgen reads of POST /ads/events' answer.
type batchResults struct {
	Results []struct {
		Status string `json:"status"`
		Code   int    `json:"code"`
		Error  string `json:"error"`
		Field  string `json:"field"`
	} `json:"results"`
}

// sendBatch posts the next step of each session in one POST /ads/events.
func (r *runner) sendBatch(sessions []*session) {
	defer func() {
		for _, s := range sessions {
			r.advance(s)
		}
	}()
	now := time.Now().UTC().Format(pixelTimeFormat)
	evs := make([]jsonEvent, len(sessions))
	for i, s := range sessions {
		st := s.steps[s.next]
		evs[i] = jsonEvent{Type: st.Type, AdID: s.ad.ID, Timestamp: now, IP: s.visitor.IP,
			UserAgent: s.visitor.UserAgent, PlaybackTime: st.Playback}
	}
	body, err := json.Marshal(evs)
	if err != nil { // cannot happen: plain values
		panic(err)
	}
	refuseAll := func(why, msg string) {
		for range sessions {
			r.tally.refused(why, msg)
		}
	}
	status, answer, took, err := r.do(http.MethodPost, r.opts.URL+"/ads/events", body, nil)
	if err != nil {
		refuseAll("no answer", err.Error())
		return
	}
	r.tally.latency(reqEvents, took)
	if status != http.StatusOK {
		refuseAll(strconv.Itoa(status), string(answer))
		return
	}
	var res batchResults
	if err := json.Unmarshal(answer, &res); err != nil || len(res.Results) != len(sessions) {
		refuseAll("bad answer", string(answer))
		return
	}
	for i, s := range sessions {
		switch it := res.Results[i]; it.Status {
		case "accepted", "spooled":
			r.tally.accepted(s.ad.ID, s.steps[s.next].Type, s.visitor, false)
		default:
			msg := it.Error
			if it.Field != "" {
				msg += " (" + it.Field + ")"
			}
			r.tally.refused(strconv.Itoa(it.Code), msg)
		}
	}
}

// sendVAST sends the next step of a VAST session as a player does: for the
// impression, it fetches the ad's VAST document first; then it requests the
// step's tracking URL from the document, macros filled in (for a click, the
// click-through, which the service answers with a redirect it does not
// follow).
func (r *runner) sendVAST(s *session) {
	st := s.steps[s.next]
	header := http.Header{"User-Agent": {s.visitor.UserAgent}, "X-Forwarded-For": {s.visitor.IP}}
	if s.urls == nil {
		status, doc, took, err := r.do(http.MethodGet, r.opts.URL+"/vast/"+url.PathEscape(s.ad.ID), nil, header)
		switch {
		case err != nil:
			r.tally.refused("no answer", "GET /vast/"+s.ad.ID+": "+err.Error())
			return
		case status != http.StatusOK:
			r.tally.latency(reqVAST, took)
			r.tally.refused(strconv.Itoa(status), "GET /vast/"+s.ad.ID+": "+string(doc))
			return
		}
		r.tally.latency(reqVAST, took)
		urls, err := parseVASTURLs(doc)
		if err != nil || urls == nil {
			r.tally.refused("empty VAST", "GET /vast/"+s.ad.ID+": no ad in the document")
			return
		}
		s.urls = urls
	}
	defer r.advance(s)
	u := s.urls.url(st.Type)
	if u == "" {
		r.tally.refused("no URL", "the VAST document of "+s.ad.ID+" has no URL for "+string(st.Type))
		return
	}
	u = fillMacros(u, st.Playback, time.Now(), rand.IntN(1e8))
	status, answer, took, err := r.do(http.MethodGet, u, nil, header)
	if err != nil {
		r.tally.refused("no answer", err.Error())
		return
	}
	r.tally.latency(reqPixel, took)
	switch status {
	case http.StatusOK, http.StatusNoContent, http.StatusFound:
		r.tally.accepted(s.ad.ID, st.Type, s.visitor, true)
	default:
		r.tally.refused(strconv.Itoa(status), string(answer))
	}
}

// maxAnswer bounds what loadgen reads of an answer; the rest is discarded
// so that the connection is reused.
const maxAnswer = 1 << 20

// do sends a request with the run's request context and returns the status,
// the body and how long the answer took.
func (r *runner) do(method, u string, body []byte, header http.Header) (int, []byte, time.Duration, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(r.reqCtx, method, u, rd)
	if err != nil {
		return 0, nil, 0, err
	}
	req.Header.Set("User-Agent", loadgenUserAgent)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range header {
		req.Header[k] = v
	}
	start := time.Now()
	resp, err := r.client.Do(req)
	if err != nil {
		return 0, nil, 0, err
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	took := time.Since(start)
	_, _ = io.Copy(io.Discard, resp.Body)
	if err != nil {
		return 0, nil, 0, err
	}
	return resp.StatusCode, answer, took, nil
}

// newHTTPClient returns the client of a run: keep-alive connections, as
// many idle as requests may be in flight, no redirects followed (a click
// answers 302 to the advertiser's page).
func newHTTPClient(concurrency int) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = concurrency
	tr.MaxIdleConnsPerHost = concurrency
	return &http.Client{
		Transport: tr,
		Timeout:   10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// vastURLs are the tracking URLs of one serving, from its VAST document.
type vastURLs struct {
	impression string
	click      string // the click-through, else the click tracking URL
	tracking   map[string]string
}

// url returns the URL to request for an event of typ, "" when the
// document has none.
func (u *vastURLs) url(typ event.Type) string {
	switch typ {
	case event.Impression:
		return u.impression
	case event.Click:
		return u.click
	}
	return u.tracking[string(typ)]
}

// vastXML is what loadgen reads of a VAST document: the first ad's
// impression, tracking and click URLs, InLine or Wrapper.
type vastXML struct {
	Ads []struct {
		InLine  *vastAdXML `xml:"InLine"`
		Wrapper *vastAdXML `xml:"Wrapper"`
	} `xml:"Ad"`
}

type vastAdXML struct {
	Impressions []string `xml:"Impression"`
	Linear      []struct {
		Tracking []struct {
			Event string `xml:"event,attr"`
			URL   string `xml:",chardata"`
		} `xml:"TrackingEvents>Tracking"`
		ClickThrough  string   `xml:"VideoClicks>ClickThrough"`
		ClickTracking []string `xml:"VideoClicks>ClickTracking"`
	} `xml:"Creatives>Creative>Linear"`
}

// parseVASTURLs reads the tracking URLs of a VAST document's first ad; nil
// when the document has no ad.
func parseVASTURLs(doc []byte) (*vastURLs, error) {
	var v vastXML
	if err := xml.Unmarshal(doc, &v); err != nil {
		return nil, fmt.Errorf("VAST document: %w", err)
	}
	if len(v.Ads) == 0 {
		return nil, nil
	}
	ad := v.Ads[0].InLine
	if ad == nil {
		ad = v.Ads[0].Wrapper
	}
	if ad == nil || len(ad.Impressions) == 0 {
		return nil, errors.New("VAST document: an ad without an impression URL")
	}
	u := &vastURLs{impression: strings.TrimSpace(ad.Impressions[0]), tracking: map[string]string{}}
	for _, lin := range ad.Linear {
		for _, t := range lin.Tracking {
			if _, ok := u.tracking[t.Event]; !ok {
				u.tracking[t.Event] = strings.TrimSpace(t.URL)
			}
		}
		if u.click == "" {
			u.click = strings.TrimSpace(lin.ClickThrough)
		}
		if u.click == "" && len(lin.ClickTracking) > 0 {
			u.click = strings.TrimSpace(lin.ClickTracking[0])
		}
	}
	return u, nil
}

// pixelTimeFormat is the [TIMESTAMP] macro's form (ISO 8601 with
// milliseconds), also used for the JSON events' timestamps.
const pixelTimeFormat = "2006-01-02T15:04:05.000Z07:00"

// fillMacros replaces the VAST macros of a tracking URL as a player does:
// [ADPLAYHEAD] with the playback position, [TIMESTAMP] with now,
// [CACHEBUSTING] with cacheBuster (8 digits).
func fillMacros(u string, playback float64, now time.Time, cacheBuster int) string {
	return strings.NewReplacer(
		"[ADPLAYHEAD]", playhead(playback),
		"[TIMESTAMP]", url.QueryEscape(now.UTC().Format(pixelTimeFormat)),
		"[CACHEBUSTING]", fmt.Sprintf("%08d", cacheBuster%1e8),
	).Replace(u)
}

// playhead formats seconds as VAST's HH:MM:SS.mmm.
func playhead(seconds float64) string {
	ms := int64(math.Round(seconds * 1000))
	return fmt.Sprintf("%02d:%02d:%02d.%03d", ms/3_600_000, ms/60_000%60, ms/1000%60, ms%1000)
}
