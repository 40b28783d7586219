package main

import (
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"time"

	"github.com/admetric/admetric/ingest/event"
)

// The viewing model of admetric loadgen: who watches which ad, and how far.
// The figures are of the order the industry reports for in-stream video ads
// (view-through rates of 70-80%, click-through rates of 1-3%); they make
// the dashboard's funnel look like one, nothing more.
const (
	// startRate is the share of impressions whose video starts (the rest:
	// autoplay blocked, the player scrolled out of view).
	startRate = 0.92
	// skipOffset is the playback time, in seconds, after which a viewer may
	// skip (as with YouTube's skippable ads).
	skipOffset = 5.0
	// skipShare is the share of the viewers who leave where they could skip
	// that press skip; the others close the page or scroll away.
	skipShare = 0.6
	// defaultAdDuration is the length assumed of an ad without one, in seconds.
	defaultAdDuration = 15.0
	// zipfS is the exponent of ad popularity: with 1.1 the most popular ad
	// of 20 draws about a quarter of the sessions, the last about 2%.
	zipfS = 1.1
	// botClickRate is the share of crawler sessions that "click".
	botClickRate = 0.2
)

// leaveRate is, for each quarter of the video, the share of the viewers who
// reached it that leave before its end.
var leaveRate = [4]float64{0.10, 0.07, 0.05, 0.04}

// quartiles are the events at the end of each quarter of the video.
var quartiles = [4]event.Type{event.FirstQuartile, event.Midpoint, event.ThirdQuartile, event.Complete}

// step is one event of a viewing session.
type step struct {
	Type event.Type
	// At is when it happens, in seconds after the impression at normal
	// playback speed.
	At float64
	// Playback is the playback position, in seconds (0 for the impression
	// and the start).
	Playback float64
}

// planSession lays out one viewing of an ad of d seconds, in time order:
// the impression; the start, unless the video never plays; each quartile
// the viewer stays for; a skip or nothing where they leave; and with
// probability ctr per impression a click, at a random moment of what they
// watch, which ends the session (the player pauses while the advertiser's
// page opens).
func planSession(r *rand.Rand, d, ctr float64) []step {
	steps := []step{{Type: event.Impression}}
	if r.Float64() >= startRate {
		return steps
	}
	delay := 0.2 + 1.3*r.Float64() // the player loads the media
	steps = append(steps, step{Type: event.Start, At: delay})
	// How far the viewer watches (to the end unless they leave), and how
	// they leave.
	watched, full, leave := roundMillis(d), true, event.Type("")
	for q := range quartiles {
		if r.Float64() >= leaveRate[q] {
			continue
		}
		from, to := d*float64(q)/4, d*float64(q+1)/4
		watched, full = from+(to-from)*r.Float64(), false
		if to > skipOffset && r.Float64() < skipShare {
			watched = math.Max(watched, skipOffset)
			leave = event.Skip
		}
		// Before the quartile, also once rounded.
		watched = math.Max(0, math.Min(roundMillis(watched), roundMillis(to)-0.001))
		break
	}
	// Clicks only come from viewers whose video started: among them the
	// chance is ctr/startRate, so that clicks per impression are ctr.
	click := -1.0
	if r.Float64() < math.Min(1, ctr/startRate) {
		click = roundMillis(watched * r.Float64())
	}
	for q, typ := range quartiles {
		at := roundMillis(d * float64(q+1) / 4)
		if click >= 0 && click < at {
			break
		}
		if at > watched || at == watched && !full {
			break
		}
		steps = append(steps, step{Type: typ, At: delay + at, Playback: at})
	}
	switch {
	case click >= 0:
		steps = append(steps, step{Type: event.Click, At: delay + click, Playback: click})
	case leave != "":
		steps = append(steps, step{Type: leave, At: delay + watched, Playback: watched})
	}
	return steps
}

// planBotSession lays out a crawler's visit: the impression and, now and
// then, a click a moment later.
func planBotSession(r *rand.Rand, d float64) []step {
	steps := []step{{Type: event.Impression}}
	if r.Float64() < botClickRate {
		at := roundMillis(math.Min(d, 0.5+1.5*r.Float64()))
		steps = append(steps, step{Type: event.Click, At: at, Playback: at})
	}
	return steps
}

// withoutClick returns steps without their click (always the last step).
func withoutClick(steps []step) []step {
	if n := len(steps); n > 0 && steps[n-1].Type == event.Click {
		return steps[:n-1]
	}
	return steps
}

func roundMillis(s float64) float64 { return math.Round(s*1000) / 1000 }

// adPicker draws ads by Zipf popularity: rank k (from 0) is drawn with a
// probability proportional to 1/(k+1)^zipfS. Which ad has which rank is
// shuffled by the seed, so that the most popular ad is not always the
// first listed.
type adPicker struct {
	zipf  *rand.Zipf
	order []int // rank → index of the ad
}

// newAdPicker returns a picker over n ads (n ≥ 1) drawing from r.
func newAdPicker(r *rand.Rand, n int) adPicker {
	return adPicker{zipf: rand.NewZipf(r, zipfS, 1, uint64(n-1)), order: r.Perm(n)}
}

// pick returns the index of an ad.
func (p adPicker) pick() int { return p.order[p.zipf.Uint64()] }

// visitor is a viewer: what the service's visitor hash is made of.
type visitor struct {
	IP        string
	UserAgent string
	Bot       bool
}

// newVisitors returns a pool of n viewers with browsers' user agents, each
// (address, user agent) pair distinct while the pool is not larger than
// there are pairs. Addresses are from the documentation ranges (RFC 5737's
// three IPv4 /24s, shared as households share one, and RFC 3849's IPv6
// 2001:db8::/32).
func newVisitors(r *rand.Rand, n int) []visitor {
	pool := make([]visitor, 0, n)
	seen := make(map[visitor]bool, n)
	for len(pool) < n {
		var v visitor
		for try := 0; try < 10; try++ {
			v = visitor{IP: visitorIP(r), UserAgent: browserUA(r)}
			if !seen[v] {
				break
			}
		}
		seen[v] = true
		pool = append(pool, v)
	}
	return pool
}

var testNets = [3][3]byte{{192, 0, 2}, {198, 51, 100}, {203, 0, 113}}

// visitorIP returns a documentation address: IPv4 seven times in ten.
func visitorIP(r *rand.Rand) string {
	if r.Float64() < 0.7 {
		n := testNets[r.IntN(len(testNets))]
		return netip.AddrFrom4([4]byte{n[0], n[1], n[2], byte(1 + r.IntN(254))}).String()
	}
	var a [16]byte
	a[0], a[1], a[2], a[3] = 0x20, 0x01, 0x0d, 0xb8
	for i := 4; i < 16; i++ {
		a[i] = byte(r.IntN(256))
	}
	return netip.AddrFrom16(a).String()
}

// chromeBuilds are Chrome's major versions and their build numbers.
var chromeBuilds = []struct{ major, build int }{
	{128, 6613}, {129, 6668}, {130, 6723}, {131, 6778}, {132, 6834}, {133, 6943}, {134, 6998},
}

var androidDevices = []string{"Pixel 7", "Pixel 8 Pro", "SM-S918B", "SM-A546B", "2201116SG", "CPH2449"}

// browserUA returns the user agent of a real browser, in about the shares
// of desktop and mobile browsers on the web; the version numbers vary, so
// that visitors seen from one address (a pixel without X-Forwarded-For) stay
// mostly apart.
func browserUA(r *rand.Rand) string {
	chrome := func() string {
		b := chromeBuilds[r.IntN(len(chromeBuilds))]
		return fmt.Sprintf("%d.0.%d.%d", b.major, b.build, r.IntN(200))
	}
	switch x := r.Float64(); {
	case x < 0.35:
		return "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/" + chrome() + " Safari/537.36"
	case x < 0.47:
		return "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/" + chrome() + " Safari/537.36"
	case x < 0.67:
		return fmt.Sprintf("Mozilla/5.0 (Linux; Android %d; %s) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/%s Mobile Safari/537.36",
			12+r.IntN(4), androidDevices[r.IntN(len(androidDevices))], chrome())
	case x < 0.82:
		major, minor := 16+r.IntN(3), r.IntN(7)
		return fmt.Sprintf("Mozilla/5.0 (iPhone; CPU iPhone OS %d_%d_%d like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/%d.%d Mobile/15E148 Safari/604.1",
			major, minor, r.IntN(3), major, minor)
	case x < 0.87:
		major, minor := 16+r.IntN(3), r.IntN(7)
		return fmt.Sprintf("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/%d.%d Safari/605.1.15", major, minor)
	case x < 0.94:
		b := chromeBuilds[r.IntN(len(chromeBuilds))]
		return fmt.Sprintf("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/%d.0.0.0 Safari/537.36 Edg/%d.0.%d.%d",
			b.major, b.major, 2700+r.IntN(300), r.IntN(120))
	default:
		v := 128 + r.IntN(8)
		os := []string{"Windows NT 10.0; Win64; x64", "Macintosh; Intel Mac OS X 10.15", "X11; Linux x86_64", "X11; Ubuntu; Linux x86_64"}[r.IntN(4)]
		return fmt.Sprintf("Mozilla/5.0 (%s; rv:%d.0) Gecko/20100101 Firefox/%d.0", os, v, v)
	}
}

// botUAs are crawlers, monitors and libraries the service's invalid-traffic
// rules know (aggregator/bots.go).
var botUAs = []string{
	"Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
	"Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
	"Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
	"Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
	"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/131.0.0.0 Safari/537.36",
	"python-requests/2.32.3",
	"curl/8.5.0",
}

// newBots returns the crawlers: each of botUAs from a few addresses.
func newBots(r *rand.Rand) []visitor {
	var bots []visitor
	for _, ua := range botUAs {
		for range 3 {
			bots = append(bots, visitor{IP: visitorIP(r), UserAgent: ua, Bot: true})
		}
	}
	return bots
}

// clickGuard keeps a visitor from clicking one ad twice within window:
// the service would count the second as a duplicate click, and loadgen's
// browser traffic is meant to be valid. Used by one goroutine.
type clickGuard struct {
	window time.Duration
	last   map[[2]int]time.Time // (visitor, ad) → their last click
}

// allow reports whether visitor v may click ad a at t, and if so records it.
func (g *clickGuard) allow(v, a int, t time.Time) bool {
	if g.last == nil {
		g.last = map[[2]int]time.Time{}
	}
	key := [2]int{v, a}
	if prev, ok := g.last[key]; ok && t.Sub(prev).Abs() < g.window {
		return false
	}
	if len(g.last) >= 1<<14 {
		for k, prev := range g.last {
			if t.Sub(prev).Abs() >= g.window {
				delete(g.last, k)
			}
		}
	}
	g.last[key] = t
	return true
}
