package aggregator

import (
	"encoding/json"
	"regexp"
	"testing"
)

// browsers are user agents of people's browsers and players, none a bot.
var browsers = []string{
	"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
	"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Safari/605.1.15",
	"Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
	"Mozilla/5.0 (iPhone; CPU iPhone OS 17_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Mobile/15E148 Safari/604.1",
	"Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
	"Mozilla/5.0 (Linux; Android 10; CUBOT P40) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36",
	"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
	"Mozilla/5.0 (SMART-TV; Linux; Tizen 6.0) AppleWebKit/537.36 (KHTML, like Gecko) 85.0.4183.93/6.0 TV Safari/537.36",
	"Roku/DVP-12.5 (12.5.0.4178-88)",
	"AppleCoreMedia/1.0.0.21G93 (iPhone; U; CPU OS 17_6 like Mac OS X; en_us)",
	"ExoPlayerLib/2.19.1",
}

func loadTestBots(t testing.TB) *Bots {
	t.Helper()
	b, err := LoadBots(nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Every example user agent the list gives for a crawler is a bot's, and
// the matcher agrees with running each pattern as a regular expression on
// every example and every browser.
func TestBotsMatchTheListsInstances(t *testing.T) {
	t.Parallel()
	b := loadTestBots(t)
	var list []struct {
		Pattern   string   `json:"pattern"`
		Instances []string `json:"instances"`
	}
	if err := json.Unmarshal(crawlerUserAgents, &list); err != nil {
		t.Fatal(err)
	}
	if len(list) < 1000 || b.count != len(list) {
		t.Fatalf("%d crawlers in the list, %d patterns in the matcher", len(list), b.count)
	}
	res := make([]*regexp.Regexp, len(list))
	for i, c := range list {
		res[i] = regexp.MustCompile(c.Pattern)
	}
	slow := func(ua string) bool {
		for _, re := range res {
			if re.MatchString(ua) {
				return true
			}
		}
		return false
	}
	instances := 0
	for _, c := range list {
		for _, ua := range c.Instances {
			instances++
			if !b.Match(ua) {
				t.Errorf("%q (pattern %q) is not taken for a bot", ua, c.Pattern)
			}
		}
	}
	for _, ua := range browsers {
		if b.Match(ua) || slow(ua) {
			t.Errorf("browser %q taken for a bot (matcher %v, list %v)", ua, b.Match(ua), slow(ua))
		}
	}
	t.Logf("%d patterns, %d instances", len(list), instances)
}

func TestBotsOwnRules(t *testing.T) {
	t.Parallel()
	b := loadTestBots(t)
	tests := []struct {
		ua  string
		bot bool
	}{
		{"", true},
		{"   ", true},
		{"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/131.0.0.0 Safari/537.36", true},
		{"Mozilla/5.0 (compatible; MyCompanySpider/1.0)", true},
		{"Mozilla/5.0 Puppeteer", true},
		{"curl/8.5.0", true},
		{"Go-http-client/1.1", true},
		{"python-requests/2.31.0", true},
		{"admetric-loadgen/1.0 (Windows NT 10.0; Win64; x64) Chrome/131.0", false},
	}
	for _, tc := range tests {
		if got := b.Match(tc.ua); got != tc.bot {
			t.Errorf("Match(%q) = %v, want %v", tc.ua, got, tc.bot)
		}
	}
	extra, err := LoadBots([]string{`^Acme-Monitor/\d`})
	if err != nil {
		t.Fatal(err)
	}
	if !extra.Match("Acme-Monitor/2 (+https://acme.example)") || extra.Match("Acme-Monitor") {
		t.Error("an extra pattern does not match as its regular expression does")
	}
	if _, err := LoadBots([]string{`(`}); err == nil {
		t.Error("a pattern that does not compile was accepted")
	}
}

func BenchmarkBotsMatch(b *testing.B) {
	bots := loadTestBots(b)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if bots.Match(browsers[i%len(browsers)]) {
			b.Fatal("a browser matched")
		}
		i++
	}
}
