package aggregator

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/admetric/admetric/ingest/event"
)

const human = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"

var t0 = time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)

// ev is a step of a judged stream: an event at t0+at.
type ev struct {
	typ     event.Type
	ad      string
	visitor uint64
	at      time.Duration
	ua      string
	serving string // a VAST serving's event (its derived ID)
	reason  event.InvalidReason
}

func (e ev) record(seq uint64) Record {
	ua := e.ua
	if ua == "" {
		ua = human
	}
	r := Record{Seq: seq, Visitor: e.visitor, Event: event.Event{
		EventID: fmt.Sprintf("e%d", seq), Type: e.typ, AdID: e.ad, Timestamp: t0.Add(e.at), UserAgent: ua,
		InvalidReason: e.reason,
	}}
	if e.ad == "" {
		r.Event.AdID = "ad-1"
	}
	if e.serving != "" {
		r.Event.ServingID = e.serving
		r.Event.EventID = e.serving + "." + string(e.typ) // the ID a serving's pixel derives
	}
	return r
}

// judge runs steps through a fresh judge and returns each decision.
func judge(t *testing.T, rules Rules, steps []ev) []event.InvalidReason {
	t.Helper()
	j := NewJudge(rules, 0)
	got := make([]event.InvalidReason, len(steps))
	for i, s := range steps {
		r := s.record(uint64(i + 1))
		if err := j.Decide(&r); err != nil {
			t.Fatal(err)
		}
		got[i] = r.Event.InvalidReason
	}
	return got
}

func TestJudgeRules(t *testing.T) {
	t.Parallel()
	bots := loadTestBots(t)
	click := func(at time.Duration) ev { return ev{typ: event.Click, visitor: 7, at: at} }
	ms := time.Millisecond
	tests := []struct {
		name  string
		rules Rules
		steps []ev
		want  []event.InvalidReason
	}{
		{"a click 29.9 s after the last is a duplicate", Rules{}, []ev{click(0), click(29_900 * ms)},
			[]event.InvalidReason{"", event.DuplicateClick}},
		{"a click 30.1 s after is not", Rules{}, []ev{click(0), click(30_100 * ms)},
			[]event.InvalidReason{"", ""}},
		{"exactly 30 s after is not", Rules{}, []ev{click(0), click(30 * time.Second)},
			[]event.InvalidReason{"", ""}},
		{"the window runs from the last click that counted", Rules{}, []ev{click(0), click(20 * time.Second), click(35 * time.Second), click(50 * time.Second)},
			[]event.InvalidReason{"", event.DuplicateClick, "", event.DuplicateClick}},
		{"a late click within the window before the counted one", Rules{}, []ev{click(40 * time.Second), click(15 * time.Second)},
			[]event.InvalidReason{"", event.DuplicateClick}},
		{"another visitor or another ad is not a duplicate", Rules{}, []ev{click(0), {typ: event.Click, visitor: 8, at: time.Second}, {typ: event.Click, visitor: 7, ad: "ad-2", at: 2 * time.Second}},
			[]event.InvalidReason{"", "", ""}},
		{"a click without a visitor is never a duplicate", Rules{}, []ev{{typ: event.Click}, {typ: event.Click, at: time.Second}},
			[]event.InvalidReason{"", ""}},
		{"window of 5 s", Rules{DuplicateClickWindow: 5 * time.Second}, []ev{click(0), click(4_900 * ms), click(5_100 * ms)},
			[]event.InvalidReason{"", event.DuplicateClick, ""}},
		{"duplicate rule off", Rules{DuplicateClickWindow: -1}, []ev{click(0), click(time.Second)},
			[]event.InvalidReason{"", ""}},
		{"the 4th event of a minute beyond a rate of 3", Rules{RatePerMinute: 3}, []ev{
			{typ: event.Impression, visitor: 7}, {typ: event.Start, visitor: 7, at: time.Second}, {typ: event.Midpoint, visitor: 7, at: 2 * time.Second},
			{typ: event.Complete, visitor: 7, at: 59_900 * ms}, {typ: event.Impression, visitor: 7, at: 60 * time.Second}},
			[]event.InvalidReason{"", "", "", event.Rate, ""}},
		{"30 a minute pass, the 31st does not", Rules{}, repeat(31, func(i int) ev { return ev{typ: event.Impression, visitor: 7, at: time.Duration(i) * time.Second} }),
			append(make([]event.InvalidReason, 30), event.Rate)},
		{"rate rule off", Rules{RatePerMinute: -1}, repeat(40, func(i int) ev { return ev{typ: event.Impression, visitor: 7, at: time.Duration(i) * time.Second} }),
			make([]event.InvalidReason, 40)},
		{"bots", Rules{Bots: bots}, []ev{{typ: event.Impression, visitor: 1, ua: "Googlebot/2.1 (+http://www.google.com/bot.html)"},
			{typ: event.Impression, visitor: 2, ua: " "}, {typ: event.Click, visitor: 3}},
			[]event.InvalidReason{event.Bot, event.Bot, ""}},
		{"no bot rule without a list", Rules{}, []ev{{typ: event.Impression, visitor: 1, ua: "curl/8.5.0"}},
			[]event.InvalidReason{""}},
		{"a serving's click after its impression", Rules{}, []ev{{typ: event.Impression, visitor: 1, serving: "sv1"}, {typ: event.Click, visitor: 1, serving: "sv1", at: time.Second}},
			[]event.InvalidReason{"", ""}},
		{"a serving's click without one", Rules{}, []ev{{typ: event.Impression, visitor: 1, serving: "sv1"}, {typ: event.Click, visitor: 1, serving: "sv2", at: time.Second}},
			[]event.InvalidReason{"", event.ClickWithoutImpression}},
		{"a click before its serving's impression in the stream", Rules{}, []ev{{typ: event.Click, visitor: 1, serving: "sv1"}, {typ: event.Impression, visitor: 1, serving: "sv1"}},
			[]event.InvalidReason{event.ClickWithoutImpression, ""}},
		{"a serving remembered for the window", Rules{ServingWindow: time.Minute}, []ev{{typ: event.Impression, visitor: 1, serving: "sv1"},
			{typ: event.Click, visitor: 1, serving: "sv1", at: 59 * time.Second}, {typ: event.Impression, visitor: 2, serving: "sv2", at: 61 * time.Second},
			{typ: event.Click, visitor: 3, serving: "sv1", at: 61 * time.Second}},
			[]event.InvalidReason{"", "", "", event.ClickWithoutImpression}},
		{"an invalid impression does not open its serving", Rules{Bots: bots}, []ev{{typ: event.Impression, visitor: 1, serving: "sv1", ua: "HeadlessChrome"},
			{typ: event.Click, visitor: 1, serving: "sv1"}},
			[]event.InvalidReason{event.Bot, event.ClickWithoutImpression}},
		{"a plain click naming no serving needs no impression", Rules{}, []ev{{typ: event.Click, visitor: 1}},
			[]event.InvalidReason{""}},
		{"the intake's reason stands", Rules{Bots: bots}, []ev{{typ: event.Click, visitor: 1, ua: "curl/8", reason: event.BadSignature}, {typ: event.Click, visitor: 1, at: time.Second, reason: event.Playback}},
			[]event.InvalidReason{event.BadSignature, event.Playback}},
		{"a duplicate beyond the rate is a duplicate", Rules{RatePerMinute: 1}, []ev{click(0), click(time.Second)},
			[]event.InvalidReason{"", event.DuplicateClick}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := judge(t, tc.rules, tc.steps); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("decisions %q, want %q", got, tc.want)
			}
		})
	}
}

func repeat(n int, f func(int) ev) []ev {
	out := make([]ev, n)
	for i := range out {
		out[i] = f(i)
	}
	return out
}

func TestJudgeRefusesEventsOutOfOrder(t *testing.T) {
	t.Parallel()
	j := NewJudge(Rules{}, 0)
	r := ev{typ: event.Click, visitor: 1}.record(5)
	if err := j.Decide(&r); err != nil {
		t.Fatal(err)
	}
	if err := j.Decide(&r); !errors.Is(err, ErrOutOfOrder) {
		t.Errorf("the same sequence again: %v, want ErrOutOfOrder", err)
	}
}

// randomStream is a load with bots, repeated clicks, bursts and servings.
func randomStream(rng *rand.Rand, n int) []ev {
	uas := []string{human, "Googlebot/2.1", human, human + " x"}
	types := []event.Type{event.Impression, event.Impression, event.Click, event.Start, event.Complete}
	steps := make([]ev, n)
	at := time.Duration(0)
	for i := range steps {
		at += time.Duration(rng.IntN(400)) * time.Millisecond
		late := time.Duration(rng.IntN(3)) * time.Duration(rng.IntN(20)) * time.Second
		s := ev{typ: types[rng.IntN(len(types))], ad: fmt.Sprintf("ad-%d", rng.IntN(4)), visitor: uint64(rng.IntN(6)),
			at: at - late, ua: uas[rng.IntN(len(uas))]}
		if rng.IntN(4) == 0 {
			s.serving = fmt.Sprintf("sv%d", rng.IntN(30))
			s.typ = []event.Type{event.Impression, event.Click}[rng.IntN(2)]
		}
		steps[i] = s
	}
	return steps
}

// Whatever the commits in between, a judge restarted from its committed
// state (the keys Writes gave, read back) decides as one that never
// stopped; a value whose newest generation is past the checkpoint (a
// commit key by key that stopped before its checkpoint) gives the
// generation before.
func TestJudgeStateRoundTrip(t *testing.T) {
	t.Parallel()
	rules := Rules{Bots: loadTestBots(t), RatePerMinute: 8, ServingWindow: 20 * time.Second}
	rng := rand.New(rand.NewPCG(3, 4))
	steps := randomStream(rng, 3000)
	want := judge(t, rules, steps)
	reasons := map[event.InvalidReason]int{}
	for _, r := range want {
		reasons[r]++
	}
	for _, r := range []event.InvalidReason{"", event.Bot, event.ClickWithoutImpression, event.DuplicateClick, event.Rate} {
		if reasons[r] == 0 {
			t.Fatalf("the stream has no %q decision (%v): it tests less than it says", r, reasons)
		}
	}
	t.Logf("decisions: %v", reasons)

	kv := map[string][]byte{}
	load := func(seq uint64) *Judge {
		t.Helper()
		shards := make([][]byte, judgeShards)
		for i := range shards {
			shards[i] = kv[JudgeShardKey(2, i)]
		}
		j, err := LoadJudge(rules, 2, seq, kv[JudgeHeadKey(2)], shards)
		if err != nil {
			t.Fatal(err)
		}
		return j
	}
	j := load(0)
	var committed uint64
	for i := 0; i < len(steps); {
		batch := 1 + rng.IntN(200)
		for ; batch > 0 && i < len(steps); batch-- {
			r := steps[i].record(uint64(i + 1))
			if err := j.Decide(&r); err != nil {
				t.Fatal(err)
			}
			if r.Event.InvalidReason != want[i] {
				t.Fatalf("event %d after restarts: %q, want %q", i, r.Event.InvalidReason, want[i])
			}
			i++
		}
		writes := j.Writes()
		switch rng.IntN(3) {
		case 0: // commit, then go on
			for _, w := range writes {
				kv[w.Key] = w.Data
			}
			committed = j.Seq()
		case 1: // commit, crash, restart from KV
			for _, w := range writes {
				kv[w.Key] = w.Data
			}
			committed = j.Seq()
			j = load(committed)
		case 2: // a key-by-key commit writes some values, crashes before its checkpoint
			for _, w := range writes {
				if rng.IntN(2) == 0 {
					kv[w.Key] = w.Data
				}
			}
			j = load(committed)
			i = int(committed) // redelivered from the checkpoint on
		}
	}
	clicks, rates, servings := j.Entries()
	t.Logf("state at the end: %d clicks, %d minute counts, %d servings, %d bytes committed", clicks, rates, servings, j.Size())
}

func TestLoadJudgeRejects(t *testing.T) {
	t.Parallel()
	j := NewJudge(Rules{}, 0)
	r := ev{typ: event.Click, visitor: 1}.record(10)
	if err := j.Decide(&r); err != nil {
		t.Fatal(err)
	}
	var head, shard []byte
	for _, w := range j.Writes() {
		if w.Key == JudgeHeadKey(0) {
			head = w.Data
		} else {
			shard = w.Data
		}
	}
	gens, err := generations(shard)
	if err != nil || len(gens) != 2 {
		t.Fatalf("a shard's first write: %d generations (%v), want 2", len(gens), err)
	}
	cur := gens[0]
	at := func(seq byte, g []byte) []byte { return append([]byte{seq}, g[1:]...) } // seq < 128: one byte
	tests := []struct {
		name        string
		seq         uint64
		head, shard []byte
	}{
		{"head's generations both past the checkpoint", 8, twoGenerations([]byte{10, 5}, []byte{9, 5}), nil},
		{"shard's generations both past the checkpoint", 10, head, twoGenerations(at(12, cur), at(11, cur))},
		{"unknown version", 10, append([]byte{9}, head[1:]...), nil},
		{"truncated shard", 10, head, twoGenerations(cur[:len(cur)-1], nil)},
		{"trailing bytes in a shard", 10, head, twoGenerations(append(slices.Clone(cur), 0), nil)},
		{"length past the end", 10, []byte{judgeCodec, 0x7f, 1}, nil},
		{"a count the bytes cannot hold", 10, head, twoGenerations([]byte{10, 0x80, 0x80, 0x04}, nil)},
	}
	for _, tc := range tests {
		shards := make([][]byte, judgeShards)
		shards[5] = tc.shard
		if _, err := LoadJudge(Rules{}, 0, tc.seq, tc.head, shards); !errors.Is(err, ErrJudgeState) {
			t.Errorf("%s: %v, want ErrJudgeState", tc.name, err)
		}
	}
	// A first write that stopped before its checkpoint leaves the empty
	// state before it.
	shards := make([][]byte, judgeShards)
	shards[5] = shard
	if j, err := LoadJudge(Rules{}, 0, 9, head, shards); err != nil || j.Seq() != 9 {
		t.Errorf("state first written at 10, checkpoint 9: %v (%v), want the empty state at 9", j, err)
	} else if c, r, s := j.Entries(); c+r+s != 0 {
		t.Errorf("state first written at 10, checkpoint 9: %d entries, want none", c+r+s)
	}
	if j, err := LoadJudge(Rules{}, 0, 500, nil, make([][]byte, judgeShards)); err != nil || j.Seq() != 500 {
		t.Errorf("no state at checkpoint 500 (rules turned on): %v (%v), want to judge from 501", j, err)
	}
}

func FuzzLoadJudge(f *testing.F) {
	j := NewJudge(Rules{}, 0)
	for _, s := range randomStream(rand.New(rand.NewPCG(1, 1)), 50) {
		r := s.record(j.Seq() + 1)
		_ = j.Decide(&r)
	}
	for _, w := range j.Writes() {
		f.Add(w.Data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		shards := make([][]byte, judgeShards)
		shards[3] = data
		_, _ = LoadJudge(Rules{}, 0, 1<<40, data, shards)
	})
}
