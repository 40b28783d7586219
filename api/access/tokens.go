package access

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/admetric/admetric/store/postgres"
)

// TokenStore is the read_tokens table (*postgres.ReadTokens).
type TokenStore interface {
	All(ctx context.Context) ([]postgres.ReadToken, error)
	Create(ctx context.Context, t *postgres.ReadToken) error
	Delete(ctx context.Context, id string) error
}

// Tokens is the in-memory copy of the scoped read tokens, looked up by hash
// on every guarded request. It is refreshed from the table, so that a token
// revoked through another process stops working within the refresh
// interval; the token handlers of this process update it at once. Expiry is
// checked at each use. Safe for concurrent use.
type Tokens struct {
	store  TokenStore
	logger *slog.Logger

	mu     sync.RWMutex
	byHash map[Hash]postgres.ReadToken
	// changed records the tokens put (the token) and removed (nil) while a
	// refresh reads the table, by ID, so that the refresh does not undo them;
	// nil otherwise.
	changed map[string]*postgres.ReadToken
}

// NewTokens returns an empty token set loading from store.
func NewTokens(store TokenStore, logger *slog.Logger) *Tokens {
	return &Tokens{store: store, logger: logger, byHash: make(map[Hash]postgres.ReadToken)}
}

// Refresh reloads every token from the table. Puts and removes made while it
// reads are applied on top of what it read. Refreshes must not overlap.
func (t *Tokens) Refresh(ctx context.Context) error {
	t.mu.Lock()
	t.changed = make(map[string]*postgres.ReadToken)
	t.mu.Unlock()
	all, err := t.store.All(ctx)
	t.mu.Lock()
	defer t.mu.Unlock()
	changed := t.changed
	t.changed = nil
	if err != nil {
		return err
	}
	byID := make(map[string]postgres.ReadToken, len(all))
	for _, tok := range all {
		byID[tok.ID] = tok
	}
	for id, tok := range changed {
		if tok != nil {
			byID[id] = *tok
		} else {
			delete(byID, id)
		}
	}
	next := make(map[Hash]postgres.ReadToken, len(byID))
	for _, tok := range byID {
		var h Hash
		if copy(h[:], tok.Hash) != len(h) {
			continue // the table's CHECK makes this impossible
		}
		next[h] = tok
	}
	t.byHash = next
	return nil
}

// Run refreshes the tokens every interval until ctx ends. A failed refresh
// keeps the previous set and is logged; the next tick tries again.
func (t *Tokens) Run(ctx context.Context, every time.Duration) error {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			if err := t.Refresh(ctx); err != nil && ctx.Err() == nil {
				t.logger.Warn("read token refresh failed; keeping the last known tokens", "err", err)
			}
		}
	}
}

// Lookup returns the scope of the token whose hash is h, if it is known and
// not expired at now.
//
// The map lookup's timing depends on h, a SHA-256 of what the client sent,
// never on a stored token: learning how a guess's hash compares with stored
// hashes does not lead to a token (that would take inverting SHA-256 over
// 256 random bits), which is why a high-entropy token may be found by its
// hash.
func (t *Tokens) Lookup(h Hash, now time.Time) (Scope, bool) {
	t.mu.RLock()
	tok, ok := t.byHash[h]
	t.mu.RUnlock()
	if !ok || (tok.ExpiresAt != nil && !now.Before(*tok.ExpiresAt)) {
		return Only(), false
	}
	return Only(tok.AdIDs...), true
}

// List returns every token, expired ones included, oldest first.
func (t *Tokens) List() []postgres.ReadToken {
	t.mu.RLock()
	out := make([]postgres.ReadToken, 0, len(t.byHash))
	for _, tok := range t.byHash {
		out = append(out, tok)
	}
	t.mu.RUnlock()
	slices.SortFunc(out, func(a, b postgres.ReadToken) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	return out
}

// Create stores tok and makes it usable here at once.
func (t *Tokens) Create(ctx context.Context, tok *postgres.ReadToken) error {
	if err := t.store.Create(ctx, tok); err != nil {
		return err
	}
	var h Hash
	copy(h[:], tok.Hash)
	t.mu.Lock()
	t.byHash[h] = *tok
	if t.changed != nil {
		c := *tok
		t.changed[tok.ID] = &c
	}
	t.mu.Unlock()
	return nil
}

// Revoke deletes the token with id and stops it here at once; it gives
// postgres.ErrNotFound for an ID the table does not hold (and forgets it
// here too: another process revoked it since the last refresh).
func (t *Tokens) Revoke(ctx context.Context, id string) error {
	err := t.store.Delete(ctx, id)
	if err != nil && !errors.Is(err, postgres.ErrNotFound) {
		return err
	}
	t.mu.Lock()
	for h, tok := range t.byHash {
		if tok.ID == id {
			delete(t.byHash, h)
		}
	}
	if t.changed != nil {
		t.changed[id] = nil
	}
	t.mu.Unlock()
	return err
}
