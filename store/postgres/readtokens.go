package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/uptrace/bun"
)

// ReadToken is a scoped read token: it lets its holder read the ads in AdIDs
// and no others. Only the token's SHA-256 is stored; the token itself is
// shown once, when it is made.
type ReadToken struct {
	bun.BaseModel `bun:"table:read_tokens"`

	ID    string   `bun:"id,pk,type:uuid"`
	Name  string   `bun:"name,notnull"`
	AdIDs []string `bun:"ad_ids,array,notnull"`
	// Hash is the SHA-256 of the token.
	Hash      []byte     `bun:"token_hash,notnull"`
	CreatedAt time.Time  `bun:"created_at,notnull,default:current_timestamp"`
	ExpiresAt *time.Time `bun:"expires_at"` // nil: never expires
}

// ReadTokens queries the read_tokens table. Safe for concurrent use.
type ReadTokens struct{ db *bun.DB }

// NewReadTokens returns the read token queries on db.
func NewReadTokens(db *bun.DB) *ReadTokens { return &ReadTokens{db: db} }

// All returns every read token, expired ones included, oldest first.
func (r *ReadTokens) All(ctx context.Context) ([]ReadToken, error) {
	var tokens []ReadToken
	if err := r.db.NewSelect().Model(&tokens).Order("created_at", "id").Scan(ctx); err != nil {
		return nil, fmt.Errorf("postgres: read tokens: %w", err)
	}
	return tokens, nil
}

// Create inserts t; its CreatedAt is set by the database. The caller chooses
// the ID (a UUID) and the hash.
func (r *ReadTokens) Create(ctx context.Context, t *ReadToken) error {
	if _, err := r.db.NewInsert().Model(t).ExcludeColumn("created_at").Returning("*").Exec(ctx); err != nil {
		if isUniqueViolation(err) {
			return fmt.Errorf("%w: read token %q", ErrExists, t.ID)
		}
		return fmt.Errorf("postgres: create read token: %w", err)
	}
	return nil
}

// Delete removes the read token with id, or gives ErrNotFound. The caller
// passes a UUID.
func (r *ReadTokens) Delete(ctx context.Context, id string) error {
	res, err := r.db.NewDelete().Model((*ReadToken)(nil)).Where("id = ?", id).Exec(ctx)
	if err != nil {
		return fmt.Errorf("postgres: delete read token: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("%w: read token %q", ErrNotFound, id)
	}
	return nil
}
