package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/gin-gonic/gin"

	"github.com/admetric/admetric/api/access"
	"github.com/admetric/admetric/api/respond"
	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/store/postgres"
)

// AdCatalog is the in-memory copy of the ads table (*api.Catalog): intake
// checks ads against it and GET /ads is served from it, so both keep working
// while PostgreSQL is down. The ad handlers keep it current for this process.
// Implementations are safe for concurrent use.
type AdCatalog interface {
	Put(ad postgres.Ad)
	Remove(id string)
	Exists(id string) bool
	Get(id string) (postgres.Ad, bool)
	// IDs returns every ad ID, sorted; the caller owns the slice.
	IDs() []string
	// List returns a page of ads ordered by ID and how many there are.
	List(limit, offset int) ([]postgres.Ad, int)
}

// AdStore is the ads table.
type AdStore interface {
	Get(ctx context.Context, id string) (*postgres.Ad, error)
	Create(ctx context.Context, ad *postgres.Ad) error
	Update(ctx context.Context, ad *postgres.Ad) error
	Delete(ctx context.Context, id string) error
}

// AdHandlers serve GET /ads, GET /ads/:id and, with an admin token, POST, PUT and
// DELETE. Build with NewAdHandlers.
type AdHandlers struct {
	ads          AdStore
	catalog      AdCatalog
	managed      bool // an admin token was configured
	requireAdmin gin.HandlerFunc
	logger       *slog.Logger
}

// NewAdHandlers returns the ad handlers. An empty adminToken disables management
// (POST, PUT and DELETE answer 403).
func NewAdHandlers(ads AdStore, catalog AdCatalog, adminToken string, logger *slog.Logger) *AdHandlers {
	return &AdHandlers{ads: ads, catalog: catalog, managed: adminToken != "",
		requireAdmin: access.AdminOnly(adminToken, "ad management"), logger: logger.With("component", "api")}
}

// ManagementEnabled reports whether an admin token was configured.
func (h *AdHandlers) ManagementEnabled() bool { return h.managed }

// Register mounts the ad routes on r. readGuard, when given, stands before
// the reads (access.Guard.Require): they answer within the request's scope.
func (h *AdHandlers) Register(r gin.IRouter, readGuard ...gin.HandlerFunc) {
	r.GET("/ads", append(slices.Clip(readGuard), h.list)...)
	r.GET("/ads/:id", append(slices.Clip(readGuard), h.get)...)
	admin := r.Group("/ads", h.requireAdmin)
	admin.POST("", h.create)
	admin.PUT("/:id", h.update)
	admin.DELETE("/:id", h.delete)
}

type adList struct {
	Ads    []postgres.Ad `json:"ads"`
	Total  int           `json:"total"`
	Limit  int           `json:"limit"`
	Offset int           `json:"offset"`
}

const (
	defaultPageSize = 50
	maxPageSize     = 500
)

func (h *AdHandlers) list(c *gin.Context) {
	limit, qerr := queryInt(c, "limit", defaultPageSize, 1, maxPageSize)
	if qerr != nil {
		qerr.respond(c)
		return
	}
	offset, qerr := queryInt(c, "offset", 0, 0, math.MaxInt32)
	if qerr != nil {
		qerr.respond(c)
		return
	}
	var ads []postgres.Ad
	var total int
	if scope := access.ScopeOf(c); scope.All() {
		ads, total = h.catalog.List(limit, offset)
	} else {
		ads, total = h.scopedList(scope, limit, offset)
	}
	c.JSON(http.StatusOK, adList{Ads: ads, Total: total, Limit: limit, Offset: offset})
}

// scopedList is List over the ads of scope that the catalog knows.
func (h *AdHandlers) scopedList(scope access.Scope, limit, offset int) ([]postgres.Ad, int) {
	var known []postgres.Ad
	for _, id := range scope.IDs() {
		if ad, ok := h.catalog.Get(id); ok {
			known = append(known, ad)
		}
	}
	lo := min(offset, len(known))
	return slices.Clip(known[lo:min(lo+limit, len(known))]), len(known)
}

func (h *AdHandlers) get(c *gin.Context) {
	id, ok := pathID(c)
	if !ok {
		return
	}
	if !access.ScopeOf(c).Allows(id) {
		respond.Error(c, http.StatusForbidden, "Authorization", "this token may not read ad "+id)
		return
	}
	if ad, ok := h.catalog.Get(id); ok {
		c.JSON(http.StatusOK, ad)
		return
	}
	// Not here yet: another process may have created it since the last refresh.
	ad, err := h.ads.Get(c.Request.Context(), id)
	if err != nil {
		h.storeFailed(c, err)
		return
	}
	h.catalog.Put(*ad)
	c.JSON(http.StatusOK, ad)
}

// adInput is the body of POST /ads and PUT /ads/:id.
type adInput struct {
	ID              string   `json:"id"`
	Title           string   `json:"title"`
	Advertiser      string   `json:"advertiser"`
	VideoURL        string   `json:"video_url"`
	ClickURL        string   `json:"click_url"`
	DurationSeconds *float64 `json:"duration_seconds"`
	VideoType       string   `json:"video_type"`
	VideoWidth      *int     `json:"video_width"`
	VideoHeight     *int     `json:"video_height"`
	VideoDelivery   string   `json:"video_delivery"`
	VASTTagURL      string   `json:"vast_tag_url"`
}

const maxAdBody = 64 << 10

// reservedAdIDs are the routes under /ads; an ad of that name could never be read.
var reservedAdIDs = map[string]struct{}{"analytics": {}, "events": {}, "click": {}, "impression": {}}

func (h *AdHandlers) decodeAd(c *gin.Context) (*adInput, bool) {
	var in adInput
	c.Request.Body = http.MaxBytesReader(c.Writer, c.Request.Body, maxAdBody)
	if err := c.ShouldBindJSON(&in); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			respond.Error(c, http.StatusRequestEntityTooLarge, "", "body is larger than 64 KiB")
			return nil, false
		}
		respond.Error(c, http.StatusBadRequest, "", "malformed JSON: "+err.Error())
		return nil, false
	}
	in.Title = strings.TrimSpace(in.Title)
	if in.Title == "" {
		respond.Error(c, http.StatusBadRequest, "title", "is required")
		return nil, false
	}
	for _, f := range []struct {
		name, value string
		check       func(string) string
	}{
		{"title", in.Title, checkText},
		{"advertiser", in.Advertiser, checkText},
		{"video_url", in.VideoURL, checkURL},
		{"click_url", in.ClickURL, checkURL},
		{"vast_tag_url", in.VASTTagURL, checkURL},
		{"video_type", in.VideoType, checkMediaType},
		{"video_delivery", in.VideoDelivery, checkDelivery},
	} {
		if msg := f.check(f.value); msg != "" {
			respond.Error(c, http.StatusBadRequest, f.name, msg)
			return nil, false
		}
	}
	if in.DurationSeconds != nil && (*in.DurationSeconds < 0 || *in.DurationSeconds > 86400) {
		respond.Error(c, http.StatusBadRequest, "duration_seconds", "must be from 0 to 86400")
		return nil, false
	}
	for _, f := range []struct {
		name  string
		value *int
	}{{"video_width", in.VideoWidth}, {"video_height", in.VideoHeight}} {
		if f.value != nil && (*f.value < 1 || *f.value > maxVideoPixels) {
			respond.Error(c, http.StatusBadRequest, f.name, fmt.Sprintf("must be from 1 to %d", maxVideoPixels))
			return nil, false
		}
	}
	return &in, true
}

// maxVideoPixels bounds a media file's width and height.
const maxVideoPixels = 16384

// checkMediaType returns what is wrong with a media file's MIME type, or "";
// empty means the default (video/mp4).
func checkMediaType(s string) string {
	if s == "" {
		return ""
	}
	mt, params, err := mime.ParseMediaType(s)
	if err != nil || len(params) > 0 || mt != strings.ToLower(s) || !strings.Contains(mt, "/") || len(s) > 100 {
		return "must be a MIME type without parameters, such as video/mp4"
	}
	return ""
}

// checkDelivery returns what is wrong with a media file's VAST delivery, or
// ""; empty means the default (progressive).
func checkDelivery(s string) string {
	if s == "" || s == "progressive" || s == "streaming" {
		return ""
	}
	return "must be progressive or streaming"
}

// Bounds of an ad's text fields and URLs, in bytes.
const (
	maxAdText = 200
	maxAdURL  = 2048
)

// checkText returns what is wrong with an ad's title or advertiser, or "".
// Control characters are refused: the text goes into HTML, XML and
// PostgreSQL, which cannot store a NUL.
func checkText(s string) string {
	switch {
	case len(s) > maxAdText:
		return fmt.Sprintf("must be at most %d bytes", maxAdText)
	case !utf8.ValidString(s):
		return "must be valid UTF-8"
	case strings.ContainsFunc(s, unicode.IsControl):
		return "must not contain control characters"
	}
	return ""
}

// checkURL returns what is wrong with an ad's video or click URL, or "";
// empty means none. The URLs become Location headers and VAST content, so
// only an absolute http or https URL with a host and no credentials will
// do: not javascript: or data:, not a scheme-relative //host, and nothing
// that could split a header.
func checkURL(s string) string {
	if s == "" {
		return ""
	}
	if len(s) > maxAdURL {
		return fmt.Sprintf("must be at most %d bytes", maxAdURL)
	}
	if strings.ContainsFunc(s, func(r rune) bool { return unicode.IsControl(r) || unicode.IsSpace(r) }) || !utf8.ValidString(s) {
		return "must not contain spaces or control characters"
	}
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return "is not a URL"
	case u.Scheme != "http" && u.Scheme != "https", u.Host == "": // an opaque URL has no host
		return "must be an absolute http or https URL"
	case u.User != nil:
		return "must not contain credentials"
	}
	return ""
}

func (in *adInput) ad(id string) *postgres.Ad {
	ad := &postgres.Ad{ID: id, Title: in.Title, Advertiser: in.Advertiser, VideoURL: in.VideoURL, ClickURL: in.ClickURL,
		VideoType: strings.ToLower(in.VideoType), VideoDelivery: in.VideoDelivery, VASTTagURL: in.VASTTagURL}
	if in.DurationSeconds != nil {
		ad.DurationSeconds = *in.DurationSeconds
	}
	if in.VideoWidth != nil {
		ad.VideoWidth = *in.VideoWidth
	}
	if in.VideoHeight != nil {
		ad.VideoHeight = *in.VideoHeight
	}
	return ad
}

func (h *AdHandlers) create(c *gin.Context) {
	in, ok := h.decodeAd(c)
	if !ok {
		return
	}
	if err := event.ValidateAdID(in.ID); err != nil {
		respond.Error(c, http.StatusBadRequest, "id", fieldMessage(err))
		return
	}
	if _, taken := reservedAdIDs[in.ID]; taken {
		respond.Error(c, http.StatusBadRequest, "id", "is reserved: /ads/"+in.ID+" is a route of its own")
		return
	}
	ad := in.ad(in.ID)
	if err := h.ads.Create(c.Request.Context(), ad); err != nil {
		h.storeFailed(c, err)
		return
	}
	h.catalog.Put(*ad)
	c.Header("Location", "/ads/"+ad.ID)
	c.JSON(http.StatusCreated, ad)
}

func (h *AdHandlers) update(c *gin.Context) {
	in, ok := h.decodeAd(c)
	if !ok {
		return
	}
	id, ok := pathID(c)
	if !ok {
		return
	}
	if in.ID != "" && in.ID != id {
		respond.Error(c, http.StatusBadRequest, "id", "differs from the ID in the path; an ad's ID cannot change")
		return
	}
	ad := in.ad(id)
	if err := h.ads.Update(c.Request.Context(), ad); err != nil {
		h.storeFailed(c, err)
		return
	}
	h.catalog.Put(*ad)
	c.JSON(http.StatusOK, ad)
}

func (h *AdHandlers) delete(c *gin.Context) {
	id, ok := pathID(c)
	if !ok {
		return
	}
	if err := h.ads.Delete(c.Request.Context(), id); err != nil {
		h.storeFailed(c, err)
		return
	}
	h.catalog.Remove(id)
	c.Status(http.StatusNoContent)
}

// pathID returns the ad ID of the path, answering 404 for one no ad can
// have (ad IDs are checked tokens): such text, a NUL byte say, must not
// reach PostgreSQL, whose refusal would read as an outage.
func pathID(c *gin.Context) (string, bool) {
	id := c.Param("id")
	if event.ValidateAdID(id) != nil {
		respond.Error(c, http.StatusNotFound, "id", "no such ad")
		return "", false
	}
	return id, true
}

// storeFailed maps a store error to its answer, and logs it once when it is the
// server's fault: only a store that does not answer is a 503.
func (h *AdHandlers) storeFailed(c *gin.Context, err error) {
	switch {
	case errors.Is(err, postgres.ErrNotFound):
		respond.Error(c, http.StatusNotFound, "id", "no such ad")
	case errors.Is(err, postgres.ErrExists):
		respond.Error(c, http.StatusConflict, "id", "an ad with this ID exists")
	case postgres.IsDataError(err):
		// A value no check foresaw: the request's fault, not an outage.
		h.logger.Warn("the ads database refused a value", "err", err)
		respond.Error(c, http.StatusBadRequest, "", "a value cannot be stored (such as text with a NUL byte)")
	case errors.Is(err, context.Canceled):
		c.Abort()
	default:
		h.logger.Error("ads query failed", "err", err)
		c.Header("Retry-After", "5")
		respond.Error(c, http.StatusServiceUnavailable, "", "the ads database is unavailable")
	}
}

// fieldMessage is what a validation error says about its field, without the
// package prefix and field name that its Error adds.
func fieldMessage(err error) string {
	var fe *event.FieldError
	if errors.As(err, &fe) {
		return fe.Message
	}
	return err.Error()
}
