package store

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// Catalog is the in-memory set of known ad IDs that event intake checks against,
// so that validating an event costs no database round trip and keeps working
// while PostgreSQL is down. It is refreshed from the ads table; the ad handlers
// of this process also update it at once. Safe for concurrent use.
type Catalog struct {
	ads    *Ads
	logger *slog.Logger

	mu  sync.RWMutex
	ids map[string]struct{}
	// changed records Add (true) and Remove (false) calls made while a refresh
	// is reading the table, so the refresh does not undo them; nil otherwise.
	changed map[string]bool
}

// NewCatalog returns an empty catalog loading from ads.
func NewCatalog(ads *Ads, logger *slog.Logger) *Catalog {
	return &Catalog{ads: ads, logger: logger, ids: make(map[string]struct{})}
}

// Refresh reloads every ad ID from PostgreSQL. Adds and removes made while it
// reads are applied on top of what it read. Refreshes must not overlap.
func (c *Catalog) Refresh(ctx context.Context) error {
	c.mu.Lock()
	c.changed = make(map[string]bool)
	c.mu.Unlock()
	ids, err := c.ads.IDs(ctx)
	c.mu.Lock()
	defer c.mu.Unlock()
	changed := c.changed
	c.changed = nil
	if err != nil {
		return err
	}
	next := make(map[string]struct{}, len(ids))
	for _, id := range ids {
		next[id] = struct{}{}
	}
	for id, added := range changed {
		if added {
			next[id] = struct{}{}
		} else {
			delete(next, id)
		}
	}
	c.ids = next
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
	_, ok := c.ids[id]
	c.mu.RUnlock()
	return ok
}

// Add records a newly created ad.
func (c *Catalog) Add(id string) {
	c.mu.Lock()
	c.ids[id] = struct{}{}
	if c.changed != nil {
		c.changed[id] = true
	}
	c.mu.Unlock()
}

// Remove forgets a deleted ad.
func (c *Catalog) Remove(id string) {
	c.mu.Lock()
	delete(c.ids, id)
	if c.changed != nil {
		c.changed[id] = false
	}
	c.mu.Unlock()
}

// IDs returns the known ad IDs, sorted.
func (c *Catalog) IDs() []string {
	c.mu.RLock()
	out := make([]string, 0, len(c.ids))
	for id := range c.ids {
		out = append(out, id)
	}
	c.mu.RUnlock()
	slices.Sort(out)
	return out
}
