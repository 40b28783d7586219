package rollupcache

import (
	"context"
	"time"

	"github.com/admetric/admetric/store/rollup"
)

// How the cache learns how current it is: every currentProbeEvery it asks
// each bucket's stream for its last sequence, bounded by currentProbeTimeout.
const (
	currentProbeEvery   = time.Second
	currentProbeTimeout = time.Second
)

// currentProbe is a question put to one bucket's stream: at, its last
// sequence was last. Once the watch has applied every update up to last,
// the cache holds everything that bucket held at.
type currentProbe struct {
	at      time.Time
	last    uint64
	pending bool
}

// CurrentAsOf returns the last moment at which the cache is known to have
// held every update of every rollup bucket: what an answer from it (or
// from a snapshot of it) reflects at least. Zero until that was known once.
// While NATS is unreachable it stays where it was, however long the outage.
func (c *Cache) CurrentAsOf() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	var oldest time.Time
	for u := range c.current {
		if c.current[u].IsZero() {
			return time.Time{}
		}
		if oldest.IsZero() || c.current[u].Before(oldest) {
			oldest = c.current[u]
		}
	}
	return oldest
}

// probeCurrent asks every bucket's stream for its last sequence now, then
// every currentProbeEvery, until ctx ends.
func (c *Cache) probeCurrent(ctx context.Context) {
	t := time.NewTicker(currentProbeEvery)
	defer t.Stop()
	for {
		for u := range c.r.Layout() {
			c.probe(ctx, rollup.Unit(u))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// probe asks unit's stream for its last sequence. A failure (NATS down)
// leaves what the cache knows as it was.
func (c *Cache) probe(ctx context.Context, u rollup.Unit) {
	at := time.Now()
	pctx, cancel := context.WithTimeout(ctx, currentProbeTimeout)
	last, err := c.r.LastSeq(pctx, u)
	cancel()
	if err != nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch next := c.watch[u].next; {
	case next > last+1:
		// The stream is behind what the cache applied: it was made anew,
		// and a watch still running on the old numbering would never see
		// it. Restarting the watch drops what the cache holds of it (see
		// watchOnce); until it has caught up again, nothing is current.
		if w := c.watch[u].cancel; w != nil {
			w()
		}
		c.probes[u].pending = false
		return
	case next == last+1:
		c.caughtUp(u, at)
		return
	}
	// Behind: the answer counts once the watch gets there. An older
	// question still open is answered first, so it is kept.
	if !c.probes[u].pending {
		c.probes[u] = currentProbe{at: at, last: last, pending: true}
	}
}

// caughtUp records that the cache held every update unit's bucket had at at.
// c.mu must be held.
func (c *Cache) caughtUp(u rollup.Unit, at time.Time) {
	if at.After(c.current[u]) {
		c.current[u] = at
	}
}

// answerProbe settles unit's open probe once the watch has passed it.
// c.mu must be held.
func (c *Cache) answerProbe(u rollup.Unit) {
	if p := &c.probes[u]; p.pending && c.watch[u].next > p.last {
		c.caughtUp(u, p.at)
		p.pending = false
	}
}

// warmedAsOf records that unit's entries are only as current as a
// snapshot taken at asOf. c.mu must be held.
func (c *Cache) warmedAsOf(u rollup.Unit, asOf time.Time) {
	if c.current[u].IsZero() || asOf.Before(c.current[u]) {
		c.current[u] = asOf
	}
	c.probes[u].pending = false
}
