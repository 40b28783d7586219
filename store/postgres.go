package store

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"
	"github.com/uptrace/bun/driver/pgdriver"
	"github.com/uptrace/bun/migrate"

	"github.com/admetric/admetric/ingest/event"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// OpenPostgres opens a bun handle on dsn and checks that the server answers.
// The caller closes it.
func OpenPostgres(ctx context.Context, dsn string) (*bun.DB, error) {
	connector, err := newConnector(dsn)
	if err != nil {
		return nil, err
	}
	sqldb := sql.OpenDB(connector)
	sqldb.SetMaxOpenConns(16)
	sqldb.SetMaxIdleConns(8)
	sqldb.SetConnMaxIdleTime(5 * time.Minute)
	db := bun.NewDB(sqldb, pgdialect.New())
	if err := db.PingContext(ctx); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("store: postgres: %w", err)
	}
	return db, nil
}

// ErrInvalidDSN is returned for a PostgreSQL URL the driver cannot use.
var ErrInvalidDSN = errors.New("store: invalid postgres URL")

// newConnector builds the driver's connector. pgdriver panics on a URL option it
// cannot parse (sslmode=bogus, connect_timeout=abc); that becomes ErrInvalidDSN
// so a typo in configuration is an error message, not a crash.
func newConnector(dsn string) (c *pgdriver.Connector, err error) {
	defer func() {
		if r := recover(); r != nil {
			c, err = nil, fmt.Errorf("%w: %v", ErrInvalidDSN, r)
		}
	}()
	return pgdriver.NewConnector(
		pgdriver.WithDSN(dsn),
		pgdriver.WithTimeout(5*time.Second),
		pgdriver.WithApplicationName("admetric"),
	), nil
}

// migrationLockID is the pg_advisory_lock key held while migrating, so several
// instances starting at once migrate one after another. (bun's own Lock is a
// row that a crashed process would leave behind.)
const migrationLockID = 0x61646d6574726963 // "admetric"

// Migrate applies the embedded SQL migrations that are not applied yet and
// returns the names of those it applied.
func Migrate(ctx context.Context, db *bun.DB) ([]string, error) {
	migrations := migrate.NewMigrations()
	if err := migrations.Discover(migrationFiles); err != nil {
		return nil, fmt.Errorf("store: migrations: %w", err)
	}
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: migrate: %w", err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "SELECT pg_advisory_lock(?)", migrationLockID); err != nil {
		return nil, fmt.Errorf("store: migrate lock: %w", err)
	}
	defer func() {
		_, _ = conn.ExecContext(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock(?)", migrationLockID)
	}()
	m := migrate.NewMigrator(db, migrations, migrate.WithMarkAppliedOnSuccess(true))
	if err := m.Init(ctx); err != nil {
		return nil, fmt.Errorf("store: migrate init: %w", err)
	}
	group, err := m.Migrate(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: migrate: %w", err)
	}
	var names []string
	for _, mig := range group.Migrations {
		names = append(names, mig.Name)
	}
	return names, nil
}

// Ad is an advertisement and its metadata.
type Ad struct {
	bun.BaseModel `bun:"table:ads"`

	ID              string    `bun:"id,pk" json:"id"`
	Title           string    `bun:"title,notnull" json:"title"`
	Advertiser      string    `bun:"advertiser,notnull" json:"advertiser"`
	VideoURL        string    `bun:"video_url,notnull" json:"video_url"`
	ClickURL        string    `bun:"click_url,notnull" json:"click_url"`
	DurationSeconds float64   `bun:"duration_seconds,notnull" json:"duration_seconds"`
	CreatedAt       time.Time `bun:"created_at,notnull,default:current_timestamp" json:"created_at"`
	UpdatedAt       time.Time `bun:"updated_at,notnull,default:current_timestamp" json:"updated_at"`
}

// Sentinel errors of the ads queries.
var (
	ErrNotFound = errors.New("store: not found")
	ErrExists   = errors.New("store: already exists")
)

// Ads queries the ads table. Safe for concurrent use.
type Ads struct{ db *bun.DB }

// NewAds returns the ads queries on db.
func NewAds(db *bun.DB) *Ads { return &Ads{db: db} }

// IDs returns every ad ID.
func (a *Ads) IDs(ctx context.Context) ([]string, error) {
	var ids []string
	if err := a.db.NewSelect().Model((*Ad)(nil)).Column("id").Order("id").Scan(ctx, &ids); err != nil {
		return nil, fmt.Errorf("store: ad ids: %w", err)
	}
	return ids, nil
}

// All returns every ad, ordered by ID.
func (a *Ads) All(ctx context.Context) ([]Ad, error) {
	var ads []Ad
	if err := a.db.NewSelect().Model(&ads).Order("id").Scan(ctx); err != nil {
		return nil, fmt.Errorf("store: all ads: %w", err)
	}
	return ads, nil
}

// Get returns one ad, or ErrNotFound.
func (a *Ads) Get(ctx context.Context, id string) (*Ad, error) {
	ad := new(Ad)
	err := a.db.NewSelect().Model(ad).Where("id = ?", id).Scan(ctx)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: ad %q", ErrNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("store: get ad: %w", err)
	}
	return ad, nil
}

// ErrInvalidAdID is returned for an ad ID that cannot be a subject token.
var ErrInvalidAdID = errors.New("store: invalid ad id")

// ValidateAdID checks an ad ID against the event rules (1 to 64 of
// [A-Za-z0-9_-]); the error wraps ErrInvalidAdID and says what is wrong.
func ValidateAdID(id string) error {
	if err := event.ValidateAdID(id); err != nil {
		var fe *event.FieldError
		if errors.As(err, &fe) {
			return fmt.Errorf("%w: %s", ErrInvalidAdID, fe.Message)
		}
		return fmt.Errorf("%w: %w", ErrInvalidAdID, err)
	}
	return nil
}

// Create inserts ad (its timestamps set by the database), or gives ErrExists,
// or an error wrapping ErrInvalidAdID.
func (a *Ads) Create(ctx context.Context, ad *Ad) error {
	if err := ValidateAdID(ad.ID); err != nil {
		return err
	}
	_, err := a.db.NewInsert().Model(ad).ExcludeColumn("created_at", "updated_at").Returning("*").Exec(ctx)
	if isUniqueViolation(err) {
		return fmt.Errorf("%w: ad %q", ErrExists, ad.ID)
	}
	if err != nil {
		return fmt.Errorf("store: create ad: %w", err)
	}
	return nil
}

// Update replaces ad's metadata, or gives ErrNotFound.
func (a *Ads) Update(ctx context.Context, ad *Ad) error {
	res, err := a.db.NewUpdate().Model(ad).
		Column("title", "advertiser", "video_url", "click_url", "duration_seconds").
		Set("updated_at = now()").
		WherePK().Returning("*").Exec(ctx)
	if err != nil {
		return fmt.Errorf("store: update ad: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("%w: ad %q", ErrNotFound, ad.ID)
	}
	return nil
}

// Delete removes an ad, or gives ErrNotFound. Its archived events stay.
func (a *Ads) Delete(ctx context.Context, id string) error {
	res, err := a.db.NewDelete().Model((*Ad)(nil)).Where("id = ?", id).Exec(ctx)
	if err != nil {
		return fmt.Errorf("store: delete ad: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("%w: ad %q", ErrNotFound, id)
	}
	return nil
}

// SeedDemoAds inserts a few demo ads when the ads table is empty and reports
// how many it inserted.
func (a *Ads) SeedDemoAds(ctx context.Context) (int, error) {
	n, err := a.db.NewSelect().Model((*Ad)(nil)).Count(ctx)
	if err != nil {
		return 0, fmt.Errorf("store: count ads: %w", err)
	}
	if n > 0 {
		return 0, nil
	}
	demo := []Ad{
		{ID: "summer-sale-15s", Title: "Summer sale", Advertiser: "Acme Outdoor", VideoURL: "https://cdn.example.com/ads/summer-sale-15s.mp4", ClickURL: "https://shop.example.com/summer", DurationSeconds: 15},
		{ID: "new-phone-30s", Title: "The new phone", Advertiser: "Globex", VideoURL: "https://cdn.example.com/ads/new-phone-30s.mp4", ClickURL: "https://globex.example.com/phone", DurationSeconds: 30},
		{ID: "coffee-6s", Title: "Morning coffee bumper", Advertiser: "Bean & Co", VideoURL: "https://cdn.example.com/ads/coffee-6s.mp4", ClickURL: "https://bean.example.com", DurationSeconds: 6},
		{ID: "car-launch-20s", Title: "Electric car launch", Advertiser: "Initech Motors", VideoURL: "https://cdn.example.com/ads/car-launch-20s.mp4", ClickURL: "https://initech.example.com/ev", DurationSeconds: 20},
	}
	res, err := a.db.NewInsert().Model(&demo).ExcludeColumn("created_at", "updated_at").On("CONFLICT (id) DO NOTHING").Exec(ctx)
	if err != nil {
		return 0, fmt.Errorf("store: seed demo ads: %w", err)
	}
	inserted, _ := res.RowsAffected()
	return int(inserted), nil
}

// IsDataError reports whether PostgreSQL refused a statement for the data in it
// (SQLSTATE class 22 data exception, class 23 integrity violation, or a syntax
// error from a value no validation foresaw): retrying cannot help.
func IsDataError(err error) bool {
	var pgErr pgdriver.Error
	if !errors.As(err, &pgErr) {
		return false
	}
	code := pgErr.Field('C')
	return strings.HasPrefix(code, "22") || strings.HasPrefix(code, "23") || code == "42601"
}

func isUniqueViolation(err error) bool {
	var pgErr pgdriver.Error
	return errors.As(err, &pgErr) && pgErr.Field('C') == "23505"
}

// ArchivedEvent is one row of the events archive.
type ArchivedEvent struct {
	bun.BaseModel `bun:"table:events"`

	EventID    string    `bun:"event_id,pk"`
	Type       string    `bun:"type,notnull"`
	AdID       string    `bun:"ad_id,notnull"`
	OccurredAt time.Time `bun:"occurred_at,notnull"`
	// IP is empty when the event carried none; it is stored as NULL.
	IP         string `bun:"ip,nullzero,type:inet"`
	UserAgent  string `bun:"user_agent,notnull"`
	PlaybackMS int64  `bun:"playback_ms,notnull"`
	StreamSeq  uint64 `bun:"stream_seq,notnull"`
	// Partition is the stream partition the event was stored in; -1 when not known.
	Partition int `bun:"partition,notnull"`
}

// Archive writes the events table. Safe for concurrent use.
type Archive struct{ db *bun.DB }

// NewArchive returns the archive on db.
func NewArchive(db *bun.DB) *Archive { return &Archive{db: db} }

// Insert writes events in one multi-row INSERT, skipping any event_id already
// archived, and returns how many rows were new.
func (a *Archive) Insert(ctx context.Context, events []ArchivedEvent) (int, error) {
	if len(events) == 0 {
		return 0, nil
	}
	res, err := a.db.NewInsert().Model(&events).On("CONFLICT (event_id) DO NOTHING").Exec(ctx)
	if err != nil {
		return 0, fmt.Errorf("store: archive %d events: %w", len(events), err)
	}
	n, _ := res.RowsAffected()
	return int(n), nil
}

// Ping checks that PostgreSQL answers.
func Ping(ctx context.Context, db *bun.DB) error {
	if err := db.PingContext(ctx); err != nil {
		return fmt.Errorf("store: postgres: %w", err)
	}
	return nil
}

// Count returns how many archived events occurred in [from, to).
func (a *Archive) Count(ctx context.Context, from, to time.Time) (int, error) {
	n, err := a.db.NewSelect().Model((*ArchivedEvent)(nil)).
		Where("occurred_at >= ? AND occurred_at < ?", from, to).Count(ctx)
	if err != nil {
		return 0, fmt.Errorf("store: count archived events: %w", err)
	}
	return int(n), nil
}

// AdIDs returns the distinct ads with archived events in [from, to).
func (a *Archive) AdIDs(ctx context.Context, from, to time.Time) ([]string, error) {
	var ids []string
	err := a.db.NewSelect().Model((*ArchivedEvent)(nil)).ColumnExpr("DISTINCT ad_id").
		Where("occurred_at >= ? AND occurred_at < ?", from, to).Order("ad_id").Scan(ctx, &ids)
	if err != nil {
		return nil, fmt.Errorf("store: archived ad ids: %w", err)
	}
	return ids, nil
}

// Scan calls fn with every event archived for [from, to), in stream order,
// reading the rows as it goes rather than all at once. fn's error stops it.
func (a *Archive) Scan(ctx context.Context, from, to time.Time, fn func(*ArchivedEvent) error) error {
	rows, err := a.db.NewSelect().Model((*ArchivedEvent)(nil)).
		Where("occurred_at >= ? AND occurred_at < ?", from, to).Order("stream_seq", "event_id").Rows(ctx)
	if err != nil {
		return fmt.Errorf("store: scan archived events: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var ev ArchivedEvent
		if err := a.db.ScanRow(ctx, rows, &ev); err != nil {
			return fmt.Errorf("store: scan archived event: %w", err)
		}
		if err := fn(&ev); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("store: scan archived events: %w", err)
	}
	return nil
}
