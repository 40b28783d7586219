package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

const loadgenUsage = `usage: admetric loadgen [flags]

Sends realistic ad traffic to a running AdMetric over HTTP until Ctrl-C or
for -duration, then prints what it sent and how the service answered.
Viewers from a pool watch ads chosen by Zipf popularity: an impression, the
start, the quartiles and the completion with viewers leaving at each step
(some skip), and now and then a click. A share of the viewings (-pixels)
goes through VAST as a player's would: GET /vast/<ad> and the tracking URLs
of the document; the others are posted as JSON to POST /ads/events.

Flags:
`

// loadgenOptions are the flags of admetric loadgen.
type loadgenOptions struct {
	URL         string
	Rate        float64
	Duration    time.Duration
	Ads         int
	Create      bool
	AdminToken  string
	ReadToken   string
	Visitors    int
	Seed        uint64
	Pixels      float64
	Bots        float64
	CTR         float64
	Speed       float64
	Concurrency int
	Quiet       bool
}

// loadgenFlags declares the flags on fs, with their defaults, into o.
func loadgenFlags(fs *flag.FlagSet, o *loadgenOptions) {
	fs.StringVar(&o.URL, "url", "http://localhost:8080", "the service's base URL")
	fs.Float64Var(&o.Rate, "rate", 50, "events per second")
	fs.DurationVar(&o.Duration, "duration", 0, "how long to run (0: until Ctrl-C)")
	fs.IntVar(&o.Ads, "ads", 0, "how many ads to send events for (0: every ad the service lists)")
	fs.BoolVar(&o.Create, "create", false, "create ads loadgen-1, loadgen-2, ... when the service lists fewer than -ads (needs -admin-token)")
	// Not the flag's default: -h would print it.
	fs.StringVar(&o.AdminToken, "admin-token", "", "the service's ADMIN_TOKEN, for -create (default $ADMIN_TOKEN)")
	fs.StringVar(&o.ReadToken, "read-token", "", "a token to list the ads with when the service requires one (default $ANALYTICS_TOKEN, else the admin token)")
	fs.IntVar(&o.Visitors, "visitors", 2000, "viewers in the pool; a smaller pool repeats them more")
	fs.Uint64Var(&o.Seed, "seed", 0, "seed of the random traffic (0: a random one, printed in the summary)")
	fs.Float64Var(&o.Pixels, "pixels", 0.3, "share of the viewings that go through VAST (GET /vast/<ad>, then its tracking URLs), 0 to 1")
	fs.Float64Var(&o.Bots, "bots", 0.02, "share of the viewings by crawlers, which the service counts as invalid traffic, 0 to 1")
	fs.Float64Var(&o.CTR, "ctr", 0.02, "clicks per impression, 0 to 1")
	fs.Float64Var(&o.Speed, "speed", 1, "playback speed: 10 plays a 30 s ad's quartiles in 3 s")
	fs.IntVar(&o.Concurrency, "concurrency", 32, "requests in flight at most")
	fs.BoolVar(&o.Quiet, "quiet", false, "no progress line; only the summary")
}

// fromEnv fills in what the flags left to the environment: the admin
// token, and the read token (the admin token reads everything too).
func (o *loadgenOptions) fromEnv(lookup func(string) (string, bool)) {
	if o.AdminToken == "" {
		o.AdminToken, _ = lookup("ADMIN_TOKEN")
	}
	if o.ReadToken == "" {
		o.ReadToken, _ = lookup("ANALYTICS_TOKEN")
	}
	if o.ReadToken == "" {
		o.ReadToken = o.AdminToken
	}
}

// validate says what is wrong with o, naming the flag.
func (o *loadgenOptions) validate() error {
	u, err := url.Parse(o.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("-url %q: must be an http or https URL such as http://localhost:8080", o.URL)
	}
	o.URL = strings.TrimSuffix(o.URL, "/")
	for _, f := range []struct {
		name     string
		value    float64
		min, max float64
		openMin  bool
	}{
		{"rate", o.Rate, 0, 100_000, true},
		{"pixels", o.Pixels, 0, 1, false},
		{"bots", o.Bots, 0, 1, false},
		{"ctr", o.CTR, 0, 1, false},
		{"speed", o.Speed, 0, 1000, true},
	} {
		if math.IsNaN(f.value) || f.value > f.max || f.value < f.min || f.openMin && f.value == f.min {
			above := "from"
			if f.openMin {
				above = "above"
			}
			return fmt.Errorf("-%s %g: must be %s %g to %g", f.name, f.value, above, f.min, f.max)
		}
	}
	switch {
	case o.Duration < 0:
		return fmt.Errorf("-duration %s: must not be negative", o.Duration)
	case o.Ads < 0:
		return fmt.Errorf("-ads %d: must not be negative", o.Ads)
	case o.Visitors < 1 || o.Visitors > 1_000_000:
		return fmt.Errorf("-visitors %d: must be from 1 to 1000000", o.Visitors)
	case o.Concurrency < 1 || o.Concurrency > 4096:
		return fmt.Errorf("-concurrency %d: must be from 1 to 4096", o.Concurrency)
	case o.Create && o.Ads == 0:
		return errors.New("-create needs -ads: how many ads there should be")
	case o.Create && o.AdminToken == "":
		return errors.New("-create needs the admin token: -admin-token or ADMIN_TOKEN")
	}
	return nil
}

// newLoadgenFlagSet returns the flag set of loadgen, its errors and usage
// going to stderr.
func newLoadgenFlagSet(stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, loadgenUsage)
		fs.PrintDefaults()
	}
	return fs
}

// runLoadgen is the loadgen subcommand; it returns the exit code: 2 for bad
// flags, 1 when the service cannot be used or accepted nothing.
func runLoadgen(ctx context.Context, args []string, lookup func(string) (string, bool), stdout, stderr io.Writer) int {
	fs := newLoadgenFlagSet(stderr)
	var opts loadgenOptions
	loadgenFlags(fs, &opts)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "admetric loadgen: unexpected argument %q (flags only; -h lists them)\n", fs.Arg(0))
		return 2
	}
	opts.fromEnv(lookup)
	if err := opts.validate(); err != nil {
		fmt.Fprintf(stderr, "admetric loadgen: %v\n", err)
		return 2
	}
	report, err := loadgen(ctx, opts, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "admetric loadgen: %v\n", err)
		return 1
	}
	report.write(stdout)
	if report.Accepted == 0 && report.totalSent() > 0 {
		return 1
	}
	return 0
}

// stopGrace is how long the requests in flight may take to answer once a
// run ends; those still unanswered are then cut off.
const stopGrace = 3 * time.Second

// loadgen runs the traffic of opts (validated) against the service and
// returns what it did. Progress goes to progressOut, unless opts.Quiet.
func loadgen(ctx context.Context, opts loadgenOptions, progressOut io.Writer) (*loadgenReport, error) {
	if opts.Seed == 0 {
		opts.Seed = rand.Uint64()
	}
	client := newHTTPClient(opts.Concurrency)
	ads, err := prepareAds(ctx, client, opts, progressOut)
	if err != nil {
		return nil, err
	}
	// The requests outlive ctx by stopGrace, so that those in flight at
	// Ctrl-C are answered and counted.
	reqCtx, cutOff := context.WithCancel(context.WithoutCancel(ctx))
	defer cutOff()
	r := newRunner(reqCtx, opts, client, ads)
	if !opts.Quiet {
		announce(progressOut, opts, ads)
	}
	start := time.Now()
	var end time.Time
	if opts.Duration > 0 {
		end = start.Add(opts.Duration)
	}
	stopProgress := startProgress(progressOut, opts, r.tally, start)
	r.pace(ctx, end)
	elapsed := time.Since(start)
	r.stopping.Store(true)
	waitInFlight(&r.wg, stopGrace, cutOff)
	stopProgress()
	return r.tally.report(elapsed), nil
}

// newRunner prepares a run of opts over ads, its requests made with
// reqCtx: its random source, visitors and crawlers, ad popularity and counts.
func newRunner(reqCtx context.Context, opts loadgenOptions, client *http.Client, ads []adInfo) *runner {
	rng := rand.New(rand.NewPCG(opts.Seed, opts.Seed^0x9e3779b97f4a7c15))
	return &runner{
		opts: opts, client: client, ads: ads, rng: rng,
		visitors: newVisitors(rng, opts.Visitors),
		bots:     newBots(rng),
		picker:   newAdPicker(rng, len(ads)),
		guard:    clickGuard{window: time.Minute},
		slots:    make(chan struct{}, opts.Concurrency),
		reqCtx:   reqCtx,
		tally: newTally(loadgenReport{Target: opts.URL, Seed: opts.Seed, Ads: len(ads),
			Visitors: opts.Visitors, Rate: opts.Rate}),
	}
}

// announce says what the run is about to do.
func announce(out io.Writer, opts loadgenOptions, ads []adInfo) {
	vast := 0
	for _, a := range ads {
		if a.VAST {
			vast++
		}
	}
	until := "until Ctrl-C"
	if opts.Duration > 0 {
		until = "for " + opts.Duration.String()
	}
	fmt.Fprintf(out, "admetric loadgen: %g events/s %s against %s: %d ads (%d served by VAST), %d visitors, seed %d\n",
		opts.Rate, until, opts.URL, len(ads), vast, opts.Visitors, opts.Seed)
}

// waitInFlight waits for wg, calling cutOff once grace has passed.
func waitInFlight(wg interface{ Wait() }, grace time.Duration, cutOff func()) {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(grace):
		cutOff()
		<-done
	}
}

// listedAd is what loadgen reads of an ad in GET /ads.
type listedAd struct {
	ID              string  `json:"id"`
	DurationSeconds float64 `json:"duration_seconds"`
	VideoURL        string  `json:"video_url"`
	VASTTagURL      string  `json:"vast_tag_url"`
}

// serviceWait is how long loadgen waits for a service that does not answer
// yet (it may be starting).
const serviceWait = 30 * time.Second

// prepareAds returns the ads to send events for: the first -ads (all with
// 0) the service lists, after creating the missing ones with -create.
func prepareAds(ctx context.Context, client *http.Client, opts loadgenOptions, out io.Writer) ([]adInfo, error) {
	listed, err := listAds(ctx, client, opts.URL, opts.ReadToken, out)
	if err != nil {
		return nil, err
	}
	if opts.Ads > len(listed) && opts.Create {
		created, err := createAds(ctx, client, opts, listed)
		if err != nil {
			return nil, err
		}
		if !opts.Quiet {
			fmt.Fprintf(out, "admetric loadgen: created %d ads: %s\n", len(created), strings.Join(created, ", "))
		}
		if listed, err = listAds(ctx, client, opts.URL, opts.ReadToken, out); err != nil {
			return nil, err
		}
	}
	switch {
	case len(listed) == 0:
		return nil, fmt.Errorf("%s lists no ads: create some (see the README), or run with -ads N -create -admin-token TOKEN", opts.URL)
	case opts.Ads > len(listed):
		fmt.Fprintf(out, "admetric loadgen: %s lists %d ads, fewer than -ads %d; using those (-create adds loadgen-<n> ads)\n",
			opts.URL, len(listed), opts.Ads)
	case opts.Ads > 0:
		listed = listed[:opts.Ads]
	}
	ads := make([]adInfo, len(listed))
	for i, a := range listed {
		ads[i] = adInfo{ID: a.ID, Duration: a.DurationSeconds, VAST: a.VideoURL != "" || a.VASTTagURL != ""}
		if ads[i].Duration <= 0 {
			ads[i].Duration = defaultAdDuration
		}
	}
	return ads, nil
}

// listAds reads every page of GET /ads (with token, when not empty),
// waiting up to serviceWait for a service that does not answer yet.
func listAds(ctx context.Context, client *http.Client, base, token string, out io.Writer) ([]listedAd, error) {
	var all []listedAd
	waitUntil := time.Now().Add(serviceWait)
	waited := false
	for offset := 0; ; {
		var page struct {
			Ads   []listedAd `json:"ads"`
			Total int        `json:"total"`
		}
		status, body, err := request(ctx, client, http.MethodGet, fmt.Sprintf("%s/ads?limit=500&offset=%d", base, offset), token, nil)
		if err != nil && ctx.Err() == nil && time.Now().Before(waitUntil) {
			if !waited {
				fmt.Fprintf(out, "admetric loadgen: waiting for %s to answer (%v)\n", base, err)
				waited = true
			}
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		switch {
		case err != nil:
			return nil, fmt.Errorf("listing the ads: %w (is the service running? go run ./cmd/admetric)", err)
		case status != http.StatusOK:
			return nil, fmt.Errorf("listing the ads: GET /ads answered %d: %s", status, truncate(string(body), 200))
		}
		if err := json.Unmarshal(body, &page); err != nil {
			return nil, fmt.Errorf("listing the ads: GET /ads answered something else than a page of ads: %w", err)
		}
		all = append(all, page.Ads...)
		offset += len(page.Ads)
		if len(page.Ads) == 0 || offset >= page.Total {
			return all, nil
		}
	}
}

// loadgenDurations are the lengths of the ads loadgen creates, in seconds.
var loadgenDurations = []float64{6, 10, 15, 20, 30}

// createAds creates ads loadgen-1, loadgen-2, ... (skipping IDs listed)
// until there are opts.Ads, and returns their IDs.
func createAds(ctx context.Context, client *http.Client, opts loadgenOptions, listed []listedAd) ([]string, error) {
	have := map[string]bool{}
	for _, a := range listed {
		have[a.ID] = true
	}
	var created []string
	for n := 1; len(listed)+len(created) < opts.Ads; n++ {
		id := "loadgen-" + strconv.Itoa(n)
		if have[id] {
			continue
		}
		body, _ := json.Marshal(map[string]any{
			"id": id, "title": "Loadgen ad " + strconv.Itoa(n), "advertiser": "AdMetric loadgen",
			"video_url":        "https://cdn.example.com/loadgen/" + id + ".mp4",
			"click_url":        "https://example.com/loadgen/" + strconv.Itoa(n),
			"duration_seconds": loadgenDurations[(n-1)%len(loadgenDurations)],
		})
		status, answer, err := request(ctx, client, http.MethodPost, opts.URL+"/ads", opts.AdminToken, body)
		switch {
		case err != nil:
			return created, fmt.Errorf("creating ad %s: %w", id, err)
		case status == http.StatusCreated, status == http.StatusConflict: // made, or made meanwhile
		default:
			return created, fmt.Errorf("creating ad %s: POST /ads answered %d: %s", id, status, truncate(string(answer), 200))
		}
		created = append(created, id)
	}
	return created, nil
}

// request sends a request of the set-up (the ads list, ad creation).
func request(ctx context.Context, client *http.Client, method, u, token string, body []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("User-Agent", loadgenUserAgent)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	return resp.StatusCode, answer, err
}

// startProgress shows the run's progress on out until the returned stop is
// called: a progress bar when out is a terminal, else a line every
// plainProgressEvery; nothing with -quiet.
func startProgress(out io.Writer, opts loadgenOptions, t *tally, start time.Time) (stop func()) {
	if opts.Quiet {
		return func() {}
	}
	f, isFile := out.(*os.File)
	terminal := isFile && term.IsTerminal(int(f.Fd()))
	every := plainProgressEvery
	var bar *progressbar.ProgressBar
	if terminal {
		every = 200 * time.Millisecond
		expected := int64(-1) // a spinner: no end
		if opts.Duration > 0 {
			expected = int64(opts.Rate * opts.Duration.Seconds())
		}
		bar = progressbar.NewOptions64(expected, progressbar.OptionSetWriter(out), progressbar.OptionSetWidth(24),
			progressbar.OptionShowCount(), progressbar.OptionSetElapsedTime(true),
			progressbar.OptionThrottle(100*time.Millisecond), progressbar.OptionSetPredictTime(false))
	}
	show := func() {
		sent, accepted, refused := t.progress()
		elapsed := time.Since(start)
		if bar == nil {
			fmt.Fprintln(out, "admetric loadgen: "+progressLine(elapsed, sent, accepted, refused))
			return
		}
		bar.Describe(fmt.Sprintf("accepted %d  refused %d  %.1f events/s  sent", accepted, refused, perSecond(sent, elapsed)))
		_ = bar.Set64(int64(sent))
	}
	done, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-done:
				if bar != nil {
					show()
					_ = bar.Exit()
					fmt.Fprintln(out)
				}
				return
			case <-tick.C:
				show()
			}
		}
	}()
	return func() {
		close(done)
		<-finished
	}
}

// plainProgressEvery is how often the progress line is written when the
// output is not a terminal.
const plainProgressEvery = 5 * time.Second

// progressLine is the plain progress line.
func progressLine(elapsed time.Duration, sent, accepted, refused int) string {
	return fmt.Sprintf("%s  sent %d  accepted %d  refused %d  %.1f events/s",
		elapsed.Round(time.Second), sent, accepted, refused, perSecond(sent, elapsed))
}

// perSecond is n over elapsed, 0 before any time has passed.
func perSecond(n int, elapsed time.Duration) float64 {
	if s := elapsed.Seconds(); s > 0 {
		return float64(n) / s
	}
	return 0
}
