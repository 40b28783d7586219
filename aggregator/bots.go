package aggregator

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"regexp"
	"regexp/syntax"
	"strings"

	"github.com/coregx/ahocorasick"
)

// crawlerUserAgents is the crawler-user-agents list (see
// scripts/update-crawlers): a JSON array of objects whose "pattern" is a
// regular expression matching one crawler's user agents.
//
//go:embed crawlers/crawler-user-agents.json
var crawlerUserAgents []byte

// ownBotWords are what the list misses, matched case-insensitively
// anywhere in a user agent: browser automation and generic crawler words.
// "bot" alone is not one of them: phones (CUBOT) and apps carry it.
var ownBotWords = []string{
	"headless", "phantomjs", "puppeteer", "playwright", "selenium", "webdriver",
	"spider", "crawler", "scraper", "lighthouse",
}

// Bots tells the user agents of crawlers, spiders, monitors and headless
// browsers from those of people. It is safe for concurrent use.
//
// Matching 1,500 regular expressions one by one costs milliseconds per user
// agent (2.3 ms as one alternation with Go's regexp). Almost every pattern is
// a literal or holds one that any match must contain, so an Aho-Corasick
// automaton over those literals finds in one pass the few patterns worth
// running; patterns that are their literal need no regexp at all.
type Bots struct {
	literals *ahocorasick.Automaton
	// byLiteral maps an automaton pattern to the crawler patterns it stands
	// for: nil regexp when the literal is the whole pattern.
	byLiteral [][]*regexp.Regexp
	// always are the patterns without a required literal, run every time.
	always []*regexp.Regexp
	count  int // patterns in all
}

// LoadBots builds the matcher from the embedded crawler list and extra,
// more regular expressions (Go syntax) that mark a user agent as a bot.
func LoadBots(extra []string) (*Bots, error) {
	var list []struct {
		Pattern string `json:"pattern"`
	}
	if err := json.Unmarshal(crawlerUserAgents, &list); err != nil {
		return nil, fmt.Errorf("aggregator: crawler list: %w", err)
	}
	patterns := make([]string, 0, len(list)+len(extra))
	for _, c := range list {
		patterns = append(patterns, c.Pattern)
	}
	patterns = append(patterns, extra...)

	b := &Bots{}
	index := map[string]int{}
	var lits []string
	for _, p := range patterns {
		re, err := regexp.Compile(p)
		if err != nil {
			return nil, fmt.Errorf("aggregator: bot pattern %q: %w", p, err)
		}
		required, whole := requiredLiterals(p)
		if len(required) == 0 {
			b.always = append(b.always, re)
			continue
		}
		if whole {
			re = nil
		}
		for _, lit := range required {
			i, ok := index[lit]
			if !ok {
				i = len(lits)
				index[lit] = i
				lits = append(lits, lit)
				b.byLiteral = append(b.byLiteral, nil)
			}
			b.byLiteral[i] = append(b.byLiteral[i], re)
		}
	}
	ac, err := ahocorasick.NewBuilder().AddStrings(lits).Build()
	if err != nil {
		return nil, fmt.Errorf("aggregator: bot literals: %w", err)
	}
	b.literals, b.count = ac, len(patterns)
	return b, nil
}

// Match reports whether ua is a bot's: empty, on the crawler list, or
// holding one of ownBotWords.
func (b *Bots) Match(ua string) bool {
	if strings.TrimSpace(ua) == "" {
		return true
	}
	lower := strings.ToLower(ua)
	for _, w := range ownBotWords {
		if strings.Contains(lower, w) {
			return true
		}
	}
	for _, m := range b.literals.FindAllOverlapping([]byte(ua)) {
		for _, re := range b.byLiteral[m.PatternID] {
			if re == nil || re.MatchString(ua) {
				return true
			}
		}
	}
	for _, re := range b.always {
		if re.MatchString(ua) {
			return true
		}
	}
	return false
}

// requiredLiterals returns literals one of which every match of pattern
// contains, none when it cannot tell; whole reports that the pattern
// matches exactly where its single literal occurs.
func requiredLiterals(pattern string) (lits []string, whole bool) {
	re, err := syntax.Parse(pattern, syntax.Perl)
	if err != nil {
		return nil, false
	}
	re = re.Simplify()
	if re.Op == syntax.OpLiteral && re.Flags&syntax.FoldCase == 0 {
		return []string{string(re.Rune)}, true
	}
	return required(re), false
}

// required is requiredLiterals' walk: a concatenation needs its longest
// required literal, an alternation one of each branch's.
func required(re *syntax.Regexp) []string {
	switch re.Op {
	case syntax.OpLiteral:
		if re.Flags&syntax.FoldCase != 0 || len(re.Rune) < 2 {
			return nil
		}
		return []string{string(re.Rune)}
	case syntax.OpCapture, syntax.OpPlus:
		return required(re.Sub[0])
	case syntax.OpRepeat:
		if re.Min >= 1 {
			return required(re.Sub[0])
		}
	case syntax.OpConcat:
		var best []string
		for _, s := range re.Sub {
			if l := required(s); len(l) == 1 && (len(best) != 1 || len(l[0]) > len(best[0])) {
				best = l
			} else if len(l) > 1 && best == nil {
				best = l
			}
		}
		return best
	case syntax.OpAlternate:
		var all []string
		for _, s := range re.Sub {
			l := required(s)
			if l == nil {
				return nil
			}
			all = append(all, l...)
		}
		return all
	}
	return nil
}
