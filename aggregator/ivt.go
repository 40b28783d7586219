package aggregator

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/admetric/admetric/ingest/event"
)

// Rules configure the invalid-traffic rules a Judge applies. The intake
// decides the two rules that need no memory and know what the stream does
// not (signature: the pixel's; playback: the ad's duration); a Judge, in
// the rollup writer, decides the rest in stream order.
type Rules struct {
	// Bots marks the events of bots' user agents (reason bot); nil turns
	// the rule off.
	Bots *Bots
	// DuplicateClickWindow: a visitor's click on an ad less than this after
	// (or before) the last click of theirs on it that counted is a
	// duplicate_click. Default 30s; negative turns the rule off.
	DuplicateClickWindow time.Duration
	// RatePerMinute: a visitor's events on an ad beyond this many in one
	// minute (of event time) are invalid (rate). Default 30; negative turns
	// the rule off.
	RatePerMinute int
	// ServingWindow is how long a VAST serving's impression is remembered
	// for its clicks: a serving's click with no impression of the serving
	// within it is a click_without_impression. It should be the serving's
	// tracking lifetime (a later pixel has an expired signature anyway).
	// Default 20m; negative turns the rule off.
	ServingWindow time.Duration
}

func (r Rules) withDefaults() Rules {
	if r.DuplicateClickWindow == 0 {
		r.DuplicateClickWindow = 30 * time.Second
	}
	if r.RatePerMinute == 0 {
		r.RatePerMinute = 30
	}
	if r.ServingWindow == 0 {
		r.ServingWindow = 20 * time.Minute
	}
	return r
}

// judgeShards is how many KV values a partition's judge state is spread
// over, so that each stays below the server's payload limit (1 MiB, two
// generations in a value) and a commit rewrites only the shards it
// changed: a million visitor-ad pairs in a minute take 24 MiB (about 24
// bytes a pair), 375 KiB a shard.
const judgeShards = 64

// pair names one visitor on one ad.
type pair struct{ ad, visitor uint64 }

// minuteCount counts a pair's events in one minute of event time.
type minuteCount struct {
	minute int64 // Unix minutes
	n      uint32
}

// judgeShard is one shard of a Judge's state, with the encoding of its
// state as of the last commit that wrote it (committed), kept so that the
// next write carries both generations (see Judge.Writes).
type judgeShard struct {
	clicks   map[pair]int64 // the last counted click, Unix ms
	rates    map[pair]minuteCount
	servings map[uint64]int64 // a serving's impression, Unix ms
	dirty    bool
	// committed is this shard's last committed generation, encoded: an
	// empty one at sequence 0 before any.
	committed []byte
}

func newJudgeShard() *judgeShard {
	s := &judgeShard{clicks: map[pair]int64{}, rates: map[pair]minuteCount{}, servings: map[uint64]int64{}}
	s.committed = s.encode(0) // before any write, the state is empty
	return s
}

// emptyHead is the head's generation before any write.
var emptyHead = []byte{0, 0}

// A Judge decides which events of one partition are invalid traffic, in
// stream order, from the rules and what it remembers of the events before
// (a state it gives as KV values to commit with the rollups, and reads
// back). Its decisions are a function of the stream alone: the same events
// in the same order give the same decisions whatever the batches, crashes
// or takeovers in between. Windows are in event time, and what they keep
// expires against the partition's watermark (the latest event time judged),
// checked at every decision rather than when entries are dropped, so that
// when the drop happens (at a commit) does not matter.
//
// A Judge is not safe for concurrent use.
type Judge struct {
	rules     Rules
	partition int
	seq       uint64 // the last stream sequence judged
	watermark int64  // the latest event time judged, Unix ms
	shards    [judgeShards]*judgeShard
	// headCommitted is the head's last committed generation.
	headCommitted []byte
	headDirty     bool
	agents        map[string]bool // Bots.Match's answers
}

// NewJudge returns the judge of partition with an empty state (at sequence 0).
func NewJudge(rules Rules, partition int) *Judge {
	j := &Judge{rules: rules.withDefaults(), partition: partition, headCommitted: emptyHead, agents: map[string]bool{}}
	for i := range j.shards {
		j.shards[i] = newJudgeShard()
	}
	return j
}

// Seq is the stream sequence of the last event judged.
func (j *Judge) Seq() uint64 { return j.seq }

// ErrOutOfOrder is returned by Decide for an event at or below the last
// sequence judged: its decision would depend on events after it.
var ErrOutOfOrder = errors.New("aggregator: event judged out of stream order")

// Decide sets rec's InvalidReason from the rules, unless the intake set one,
// and remembers rec for the decisions after it. Events must come in
// ascending stream sequence.
func (j *Judge) Decide(rec *Record) error {
	if rec.Seq <= j.seq {
		return fmt.Errorf("%w: %d after %d", ErrOutOfOrder, rec.Seq, j.seq)
	}
	j.seq = rec.Seq
	e := &rec.Event
	t := e.Timestamp.UnixMilli()
	if t > j.watermark {
		j.watermark = t
		j.headDirty = true
	}
	r := j.rules
	p := pair{ad: hashString(e.AdID), visitor: rec.Visitor}
	var overRate bool
	if r.RatePerMinute > 0 && rec.Visitor != 0 {
		overRate = j.count(p, t)
	}
	if e.InvalidReason == "" && r.Bots != nil && j.bot(e.UserAgent) {
		e.InvalidReason = event.Bot
	}
	served := r.ServingWindow > 0 && e.FromServing()
	if e.InvalidReason == "" && served && e.Type == event.Click && !j.impressed(e.ServingID) {
		e.InvalidReason = event.ClickWithoutImpression
	}
	if e.InvalidReason == "" && e.Type == event.Click && r.DuplicateClickWindow > 0 && rec.Visitor != 0 {
		if j.duplicate(p, t) {
			e.InvalidReason = event.DuplicateClick
		}
	}
	if e.InvalidReason == "" && overRate {
		e.InvalidReason = event.Rate
	}
	if e.InvalidReason == "" && served && e.Type == event.Impression {
		h := hashString(e.ServingID)
		s := j.shards[h%judgeShards]
		s.servings[h] = t
		s.dirty = true
	}
	return nil
}

// bot reports whether ua is a bot's, from the judge's own cache of the
// answers: players send the same few user agents over and over.
func (j *Judge) bot(ua string) bool {
	if is, ok := j.agents[ua]; ok {
		return is
	}
	if len(j.agents) >= maxCachedAgents {
		clear(j.agents)
	}
	is := j.rules.Bots.Match(ua)
	j.agents[ua] = is
	return is
}

// maxCachedAgents bounds Judge.agents: a flood of made-up user agents
// starts it over rather than growing it.
const maxCachedAgents = 10_000

// count adds an event at t to p's minute and reports whether it is beyond
// the rate. A late event for an earlier minute than the one remembered is
// not counted (only one minute is kept per pair).
func (j *Judge) count(p pair, t int64) bool {
	s := j.shards[p.shard()]
	minute := floorDiv(t, 60_000)
	c, ok := s.rates[p]
	live := ok && c.minute >= floorDiv(j.watermark, 60_000)-1
	switch {
	case !live || minute > c.minute:
		c = minuteCount{minute: minute, n: 1}
	case minute == c.minute:
		c.n++
	default:
		return false
	}
	s.rates[p] = c
	s.dirty = true
	return c.n > uint32(j.rules.RatePerMinute)
}

// duplicate reports whether a click of p at t falls within the window of
// p's last counted click, and otherwise makes it the counted one.
func (j *Judge) duplicate(p pair, t int64) bool {
	s := j.shards[p.shard()]
	w := j.rules.DuplicateClickWindow.Milliseconds()
	if last, ok := s.clicks[p]; ok && last >= j.watermark-w && abs(t-last) < w {
		return true
	}
	s.clicks[p] = t
	s.dirty = true
	return false
}

// impressed reports whether serving had a valid impression within the
// serving window.
func (j *Judge) impressed(serving string) bool {
	h := hashString(serving)
	t, ok := j.shards[h%judgeShards].servings[h]
	return ok && t >= j.watermark-j.rules.ServingWindow.Milliseconds()
}

// Entries is how many entries the state holds: clicks, minute counts and
// servings.
func (j *Judge) Entries() (clicks, rates, servings int) {
	for _, s := range j.shards {
		clicks += len(s.clicks)
		rates += len(s.rates)
		servings += len(s.servings)
	}
	return clicks, rates, servings
}

// expire drops what no decision can use any more.
func (j *Judge) expire(s *judgeShard) {
	clickFloor := j.watermark - j.rules.DuplicateClickWindow.Milliseconds()
	maps.DeleteFunc(s.clicks, func(_ pair, t int64) bool { return t < clickFloor })
	minuteFloor := floorDiv(j.watermark, 60_000) - 1
	maps.DeleteFunc(s.rates, func(_ pair, c minuteCount) bool { return c.minute < minuteFloor })
	servingFloor := j.watermark - j.rules.ServingWindow.Milliseconds()
	maps.DeleteFunc(s.servings, func(_ uint64, t int64) bool { return t < servingFloor })
}

func (p pair) shard() uint64 { return (p.ad ^ p.visitor*0x9e3779b97f4a7c15) % judgeShards }

// hashString is FNV-1a: stable across processes and versions, as the
// committed state keys on it.
func hashString(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}

func abs(x int64) int64 {
	if x < 0 {
		return -x
	}
	return x
}

// JudgeHeadKey and JudgeShardKey are the keys, in the day bucket, of
// partition's judge state: the head (the sequence and watermark) and the
// shards.
func JudgeHeadKey(partition int) string { return fmt.Sprintf("_ivt.p%d", partition) }

// JudgeShardKey: see JudgeHeadKey.
func JudgeShardKey(partition, shard int) string { return fmt.Sprintf("_ivt.p%d.s%d", partition, shard) }

// StateWrite is one KV value of a judge's state.
type StateWrite struct {
	Key  string
	Data []byte
}

// Writes returns the state's values that changed since the last call, for
// the commit that makes seq (the last sequence judged) its checkpoint, and
// takes them as committed. Each value holds two generations, this one and
// the one before, so that a commit written key by key (one replica) that
// stops before its checkpoint leaves the generation of the checkpoint
// readable (see LoadJudge).
func (j *Judge) Writes() []StateWrite {
	var out []StateWrite
	for i, s := range j.shards {
		if !s.dirty {
			continue
		}
		j.expire(s)
		gen := s.encode(j.seq)
		out = append(out, StateWrite{Key: JudgeShardKey(j.partition, i), Data: twoGenerations(gen, s.committed)})
		s.committed, s.dirty = gen, false
	}
	if j.headDirty || len(out) > 0 {
		gen := binary.AppendUvarint(binary.AppendUvarint(nil, j.seq), uint64(j.watermark))
		out = append(out, StateWrite{Key: JudgeHeadKey(j.partition), Data: twoGenerations(gen, j.headCommitted)})
		j.headCommitted, j.headDirty = gen, false
	}
	return out
}

// Size is the bytes the state's committed generations take.
func (j *Judge) Size() int {
	n := len(j.headCommitted)
	for _, s := range j.shards {
		n += len(s.committed)
	}
	return n
}

// judgeCodec is the state values' format version.
const judgeCodec = 1

func twoGenerations(cur, prev []byte) []byte {
	b := []byte{judgeCodec}
	b = binary.AppendUvarint(b, uint64(len(cur)))
	b = append(b, cur...)
	return append(b, prev...)
}

// encode writes the shard as of seq: seq, then its clicks, minute counts and
// servings, each sorted so that the same state encodes the same.
func (s *judgeShard) encode(seq uint64) []byte {
	b := binary.AppendUvarint(nil, seq)
	b = binary.AppendUvarint(b, uint64(len(s.clicks)))
	for _, p := range slices.SortedFunc(maps.Keys(s.clicks), comparePairs) {
		b = appendPair(b, p)
		b = binary.AppendVarint(b, s.clicks[p])
	}
	b = binary.AppendUvarint(b, uint64(len(s.rates)))
	for _, p := range slices.SortedFunc(maps.Keys(s.rates), comparePairs) {
		b = appendPair(b, p)
		b = binary.AppendVarint(b, s.rates[p].minute)
		b = binary.AppendUvarint(b, uint64(s.rates[p].n))
	}
	b = binary.AppendUvarint(b, uint64(len(s.servings)))
	for _, h := range slices.Sorted(maps.Keys(s.servings)) {
		b = binary.BigEndian.AppendUint64(b, h)
		b = binary.AppendVarint(b, s.servings[h])
	}
	return b
}

func appendPair(b []byte, p pair) []byte {
	return binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(b, p.ad), p.visitor)
}

func comparePairs(a, b pair) int {
	if a.ad != b.ad {
		if a.ad < b.ad {
			return -1
		}
		return 1
	}
	switch {
	case a.visitor < b.visitor:
		return -1
	case a.visitor > b.visitor:
		return 1
	}
	return 0
}

// ErrJudgeState is returned for a judge state value that does not decode.
var ErrJudgeState = errors.New("aggregator: corrupt judge state")

// generations splits a state value into its generations, newest first.
func generations(data []byte) ([][]byte, error) {
	if len(data) == 0 || data[0] != judgeCodec {
		return nil, fmt.Errorf("%w: version", ErrJudgeState)
	}
	n, k := binary.Uvarint(data[1:])
	if k <= 0 || n > uint64(len(data)-1-k) {
		return nil, fmt.Errorf("%w: length", ErrJudgeState)
	}
	cur := data[1+k : 1+k+int(n)]
	gens := [][]byte{cur}
	if prev := data[1+k+int(n):]; len(prev) > 0 {
		gens = append(gens, prev)
	}
	return gens, nil
}

// pick returns the newest generation of a value at or below seq, and its
// sequence; nil when none is.
func pick(data []byte, seq uint64) ([]byte, uint64, error) {
	gens, err := generations(data)
	if err != nil {
		return nil, 0, err
	}
	for _, g := range gens {
		s, k := binary.Uvarint(g)
		if k <= 0 {
			return nil, 0, fmt.Errorf("%w: sequence", ErrJudgeState)
		}
		if s <= seq {
			return g, s, nil
		}
	}
	return nil, 0, nil
}

// LoadJudge rebuilds partition's judge as of checkpoint seq from the state
// values read at the keys JudgeHeadKey and JudgeShardKey name (absent keys
// nil). A value holds the generation of seq or of an earlier commit that
// did not change it; one only newer than seq (a commit that stopped before
// its checkpoint, key by key) would not do, and is an error, as is a head
// behind seq: the state of what came between is lost.
func LoadJudge(rules Rules, partition int, seq uint64, head []byte, shards [][]byte) (*Judge, error) {
	j := NewJudge(rules, partition)
	if head == nil {
		if seq != 0 {
			// Rollups folded before the rules were on: judge from here.
			j.seq = seq
		}
		return j, nil
	}
	g, s, err := pick(head, seq)
	if err != nil {
		return nil, err
	}
	if g == nil {
		return nil, fmt.Errorf("%w: p%d head newer than checkpoint %d", ErrJudgeState, partition, seq)
	}
	_, k := binary.Uvarint(g)
	wm, k2 := binary.Uvarint(g[k:])
	if k2 <= 0 {
		return nil, fmt.Errorf("%w: p%d head", ErrJudgeState, partition)
	}
	j.seq, j.watermark = max(s, seq), int64(wm)
	j.headCommitted = g
	for i, data := range shards {
		if i >= judgeShards || data == nil {
			continue
		}
		g, _, err := pick(data, seq)
		if err != nil {
			return nil, fmt.Errorf("p%d shard %d: %w", partition, i, err)
		}
		if g == nil {
			return nil, fmt.Errorf("%w: p%d shard %d newer than checkpoint %d", ErrJudgeState, partition, i, seq)
		}
		if err := j.shards[i].decode(g); err != nil {
			return nil, fmt.Errorf("p%d shard %d: %w", partition, i, err)
		}
		j.shards[i].committed = g
	}
	return j, nil
}

func (s *judgeShard) decode(g []byte) error {
	d := decoder{buf: g}
	d.uvarint() // seq
	for n := d.count(17); n > 0; n-- {
		p := d.pair()
		s.clicks[p] = d.varint()
	}
	for n := d.count(18); n > 0; n-- {
		p := d.pair()
		s.rates[p] = minuteCount{minute: d.varint(), n: uint32(d.uvarint())}
	}
	for n := d.count(9); n > 0; n-- {
		h := d.uint64()
		s.servings[h] = d.varint()
	}
	if d.err != nil || len(d.buf) != 0 {
		return fmt.Errorf("%w: shard", ErrJudgeState)
	}
	return nil
}

// decoder reads the state's encoding; the first failure sticks.
type decoder struct {
	buf []byte
	err error
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.buf)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.buf = d.buf[n:]
	return v
}

func (d *decoder) varint() int64 {
	v, n := binary.Varint(d.buf)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.buf = d.buf[n:]
	return v
}

func (d *decoder) uint64() uint64 {
	if len(d.buf) < 8 {
		d.fail()
		return 0
	}
	v := binary.BigEndian.Uint64(d.buf)
	d.buf = d.buf[8:]
	return v
}

func (d *decoder) pair() pair { return pair{ad: d.uint64(), visitor: d.uint64()} }

// count reads an entry count, failing one that the bytes left cannot hold
// at min bytes an entry, so that a corrupt count allocates nothing.
func (d *decoder) count(min int) uint64 {
	n := d.uvarint()
	if n > uint64(len(d.buf)/min+1) {
		d.fail()
		return 0
	}
	return n
}

func (d *decoder) fail() {
	if d.err == nil {
		d.err = ErrJudgeState
	}
	d.buf = nil
}
