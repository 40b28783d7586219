package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/uptrace/bun"
)

// Ad is an advertisement and its metadata.
type Ad struct {
	bun.BaseModel `bun:"table:ads"`

	ID              string  `bun:"id,pk" json:"id"`
	Title           string  `bun:"title,notnull" json:"title"`
	Advertiser      string  `bun:"advertiser,notnull" json:"advertiser"`
	VideoURL        string  `bun:"video_url,notnull" json:"video_url"`
	ClickURL        string  `bun:"click_url,notnull" json:"click_url"`
	DurationSeconds float64 `bun:"duration_seconds,notnull" json:"duration_seconds"`
	// VideoType, VideoWidth, VideoHeight and VideoDelivery describe the media
	// file at VideoURL, as a VAST MediaFile does: its MIME type, its size in
	// pixels and "progressive" or "streaming".
	VideoType     string `bun:"video_type,notnull" json:"video_type"`
	VideoWidth    int    `bun:"video_width,notnull" json:"video_width"`
	VideoHeight   int    `bun:"video_height,notnull" json:"video_height"`
	VideoDelivery string `bun:"video_delivery,notnull" json:"video_delivery"`
	// VASTTagURL, when set, is a third party's VAST tag that serves the ad:
	// AdMetric wraps it instead of naming a media file of its own.
	VASTTagURL string    `bun:"vast_tag_url,notnull" json:"vast_tag_url"`
	CreatedAt  time.Time `bun:"created_at,notnull,default:current_timestamp" json:"created_at"`
	UpdatedAt  time.Time `bun:"updated_at,notnull,default:current_timestamp" json:"updated_at"`
}

// Sentinel errors of the ads queries.
var (
	ErrNotFound = errors.New("postgres: not found")
	ErrExists   = errors.New("postgres: already exists")
)

// Ads queries the ads table. Safe for concurrent use.
type Ads struct{ db *bun.DB }

// NewAds returns the ads queries on db.
func NewAds(db *bun.DB) *Ads { return &Ads{db: db} }

// IDs returns every ad ID.
func (a *Ads) IDs(ctx context.Context) ([]string, error) {
	var ids []string
	if err := a.db.NewSelect().Model((*Ad)(nil)).Column("id").Order("id").Scan(ctx, &ids); err != nil {
		return nil, fmt.Errorf("postgres: ad ids: %w", err)
	}
	return ids, nil
}

// All returns every ad, ordered by ID.
func (a *Ads) All(ctx context.Context) ([]Ad, error) {
	var ads []Ad
	if err := a.db.NewSelect().Model(&ads).Order("id").Scan(ctx); err != nil {
		return nil, fmt.Errorf("postgres: all ads: %w", err)
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
		return nil, fmt.Errorf("postgres: get ad: %w", err)
	}
	return ad, nil
}

// Media defaults, the same as the columns': an ad that names none of its
// media file's attributes gets these.
const (
	DefaultVideoType     = "video/mp4"
	DefaultVideoWidth    = 1280
	DefaultVideoHeight   = 720
	DefaultVideoDelivery = "progressive"
)

// fillMediaDefaults sets every media attribute of ad left at its zero value
// to its default.
func (ad *Ad) fillMediaDefaults() {
	if ad.VideoType == "" {
		ad.VideoType = DefaultVideoType
	}
	if ad.VideoWidth == 0 {
		ad.VideoWidth = DefaultVideoWidth
	}
	if ad.VideoHeight == 0 {
		ad.VideoHeight = DefaultVideoHeight
	}
	if ad.VideoDelivery == "" {
		ad.VideoDelivery = DefaultVideoDelivery
	}
}

// Create inserts ad (its timestamps set by the database), or gives ErrExists.
// Media attributes left at their zero values take their defaults.
// The caller validates ad.ID (event.ValidateAdID): it becomes a subject and
// KV key token.
func (a *Ads) Create(ctx context.Context, ad *Ad) error {
	ad.fillMediaDefaults()
	_, err := a.db.NewInsert().Model(ad).ExcludeColumn("created_at", "updated_at").Returning("*").Exec(ctx)
	if isUniqueViolation(err) {
		return fmt.Errorf("%w: ad %q", ErrExists, ad.ID)
	}
	if err != nil {
		return fmt.Errorf("postgres: create ad: %w", err)
	}
	return nil
}

// Update replaces ad's metadata, or gives ErrNotFound. Media attributes left
// at their zero values take their defaults.
func (a *Ads) Update(ctx context.Context, ad *Ad) error {
	ad.fillMediaDefaults()
	res, err := a.db.NewUpdate().Model(ad).
		Column("title", "advertiser", "video_url", "click_url", "duration_seconds",
			"video_type", "video_width", "video_height", "video_delivery", "vast_tag_url").
		Set("updated_at = now()").
		WherePK().Returning("*").Exec(ctx)
	if err != nil {
		return fmt.Errorf("postgres: update ad: %w", err)
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
		return fmt.Errorf("postgres: delete ad: %w", err)
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
		return 0, fmt.Errorf("postgres: count ads: %w", err)
	}
	if n > 0 {
		return 0, nil
	}
	media := func(ad Ad) Ad {
		ad.fillMediaDefaults()
		return ad
	}
	demo := []Ad{
		media(Ad{ID: "summer-sale-15s", Title: "Summer sale", Advertiser: "Acme Outdoor", VideoURL: "https://cdn.example.com/ads/summer-sale-15s.mp4", ClickURL: "https://shop.example.com/summer", DurationSeconds: 15}),
		media(Ad{ID: "new-phone-30s", Title: "The new phone", Advertiser: "Globex", VideoURL: "https://cdn.example.com/ads/new-phone-30s.mp4", ClickURL: "https://globex.example.com/phone", DurationSeconds: 30}),
		media(Ad{ID: "coffee-6s", Title: "Morning coffee bumper", Advertiser: "Bean & Co", VideoURL: "https://cdn.example.com/ads/coffee-6s.mp4", ClickURL: "https://bean.example.com", DurationSeconds: 6}),
		media(Ad{ID: "car-launch-20s", Title: "Electric car launch", Advertiser: "Initech Motors", VideoURL: "https://cdn.example.com/ads/car-launch-20s.mp4", ClickURL: "https://initech.example.com/ev", DurationSeconds: 20}),
	}
	res, err := a.db.NewInsert().Model(&demo).ExcludeColumn("created_at", "updated_at").On("CONFLICT (id) DO NOTHING").Exec(ctx)
	if err != nil {
		return 0, fmt.Errorf("postgres: seed demo ads: %w", err)
	}
	inserted, _ := res.RowsAffected()
	return int(inserted), nil
}
