package api

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/admetric/admetric/store/postgres"
)

// Catalog is the in-memory copy of the ads table. Event intake checks ads
// against it, so that validating an event costs no database round trip, and
// GET /ads is served from it, so both keep working while PostgreSQL is down. It
// is refreshed from the table; the ad handlers of this process also update it
// at once. Safe for concurrent use.
type Catalog struct {
	ads    *postgres.Ads
	logger *slog.Logger

	mu     sync.RWMutex
	byID   map[string]postgres.Ad
	sorted []string // the IDs of byID in order; nil when it must be rebuilt
	// changed records Put (the ad) and Remove (nil) calls made while a
	// refresh is reading the table, so the refresh does not undo them; nil
	// otherwise.
	changed map[string]*postgres.Ad
}

// NewCatalog returns an empty catalog loading from ads.
func NewCatalog(ads *postgres.Ads, logger *slog.Logger) *Catalog {
	return &Catalog{ads: ads, logger: logger, byID: make(map[string]postgres.Ad)}
}

// Refresh reloads every ad from PostgreSQL. Puts and removes made while it
// reads are applied on top of what it read. Refreshes must not overlap.
func (c *Catalog) Refresh(ctx context.Context) error {
	c.mu.Lock()
	c.changed = make(map[string]*postgres.Ad)
	c.mu.Unlock()
	ads, err := c.ads.All(ctx)
	c.mu.Lock()
	defer c.mu.Unlock()
	changed := c.changed
	c.changed = nil
	if err != nil {
		return err
	}
	next := make(map[string]postgres.Ad, len(ads))
	for _, ad := range ads {
		next[ad.ID] = ad
	}
	for id, ad := range changed {
		if ad != nil {
			next[id] = *ad
		} else {
			delete(next, id)
		}
	}
	c.byID, c.sorted = next, nil
	return nil
}

// Run refreshes the catalog every interval until ctx ends. A failed refresh
// keeps the previous set and is logged; the next tick tries again.
func (c *Catalog) Run(ctx context.Context, every time.Duration) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := c.Refresh(ctx); err != nil && ctx.Err() == nil {
				c.logger.Warn("catalog refresh failed; serving the last known ads", "err", err)
			}
		}
	}
}

// Exists reports whether id is a known ad.
func (c *Catalog) Exists(id string) bool {
	c.mu.RLock()
	_, ok := c.byID[id]
	c.mu.RUnlock()
	return ok
}

// Duration returns the ad's video length in seconds, 0 for an unknown ad.
func (c *Catalog) Duration(id string) float64 {
	c.mu.RLock()
	ad := c.byID[id]
	c.mu.RUnlock()
	return ad.DurationSeconds
}

// Get returns the ad with id, if known.
func (c *Catalog) Get(id string) (postgres.Ad, bool) {
	c.mu.RLock()
	ad, ok := c.byID[id]
	c.mu.RUnlock()
	return ad, ok
}

// ClickThrough returns the ad's click URL; ok is false for an unknown ad or
// one without a click URL, or with one stored before ads were checked that
// the checks refuse (it would make the redirect an open one). It implements
// ingest.ClickThroughs.
func (c *Catalog) ClickThrough(adID string) (url string, ok bool) {
	ad, found := c.Get(adID)
	if !found || ad.ClickURL == "" || checkURL(ad.ClickURL) != "" {
		return "", false
	}
	return ad.ClickURL, true
}

// Put records a created or updated ad.
func (c *Catalog) Put(ad postgres.Ad) {
	c.mu.Lock()
	if _, known := c.byID[ad.ID]; !known {
		c.sorted = nil
	}
	c.byID[ad.ID] = ad
	if c.changed != nil {
		c.changed[ad.ID] = &ad
	}
	c.mu.Unlock()
}

// Remove forgets a deleted ad.
func (c *Catalog) Remove(id string) {
	c.mu.Lock()
	delete(c.byID, id)
	c.sorted = nil
	if c.changed != nil {
		c.changed[id] = nil
	}
	c.mu.Unlock()
}

// IDs returns the known ad IDs, sorted. The caller owns the slice.
func (c *Catalog) IDs() []string {
	return slices.Clone(c.order())
}

// List returns the ads ordered by ID after the first offset, at most limit,
// and how many there are in all.
func (c *Catalog) List(limit, offset int) ([]postgres.Ad, int) {
	ids := c.order()
	lo := min(offset, len(ids))
	page := ids[lo:min(lo+limit, len(ids))]
	out := make([]postgres.Ad, 0, len(page))
	c.mu.RLock()
	for _, id := range page {
		if ad, ok := c.byID[id]; ok { // removed since order() read it: skip
			out = append(out, ad)
		}
	}
	c.mu.RUnlock()
	return out, len(ids)
}

// order returns the sorted IDs, rebuilding them after a change. The slice is
// shared: callers must not modify it.
func (c *Catalog) order() []string {
	c.mu.RLock()
	sorted := c.sorted
	c.mu.RUnlock()
	if sorted != nil {
		return sorted
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sorted == nil {
		c.sorted = make([]string, 0, len(c.byID))
		for id := range c.byID {
			c.sorted = append(c.sorted, id)
		}
		slices.Sort(c.sorted)
	}
	return c.sorted
}
