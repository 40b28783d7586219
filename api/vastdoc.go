package api

import (
	"bytes"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/admetric/admetric/api/vast"
	"github.com/admetric/admetric/ingest/pixel"
	"github.com/admetric/admetric/store/postgres"
)

// The macros each kind of tracking URL carries, as the player fills them in.
const (
	timeMacros  = "&ts=[TIMESTAMP]&cb=[CACHEBUSTING]"
	playMacros  = "&ph=[ADPLAYHEAD]" + timeMacros
	errorMacros = "&code=[ERRORCODE]" + playMacros
)

// trackedEvents are the Linear events a document asks the player to report.
var trackedEvents = []string{"start", "firstQuartile", "midpoint", "thirdQuartile", "complete", "skip"}

// VASTHandler serves GET /vast/:ad_id, the ad's VAST 4.2 document, from the
// catalog (no database query per request), with tracking URLs signed for
// one serving. Safe for concurrent use.
type VASTHandler struct {
	catalog   AdCatalog
	signer    *pixel.Signer
	publicURL string
	ttl       time.Duration
	logger    *slog.Logger
}

// NewVASTHandler returns the handler. publicURL is the scheme and host the
// tracking URLs point at (https://ads.example.com); empty takes them from
// each request (its Host, and https when the connection is TLS). ttl is how
// long a response's tracking URLs count: at most the stream's duplicate
// window, so that a pixel fired again within it is dropped by the stream
// and can never count twice.
func NewVASTHandler(catalog AdCatalog, signer *pixel.Signer, publicURL string, ttl time.Duration, logger *slog.Logger) *VASTHandler {
	return &VASTHandler{catalog: catalog, signer: signer, publicURL: strings.TrimSuffix(publicURL, "/"), ttl: ttl,
		logger: logger.With("component", "vast")}
}

// Register mounts GET /vast/:ad_id on r.
func (h *VASTHandler) Register(r gin.IRouter) {
	r.GET("/vast/:ad_id", h.serve)
}

// serve answers the document, or the empty VAST document (no ad) for an
// unknown ad or one that is not servable: a player understands that, not an
// error page.
func (h *VASTHandler) serve(c *gin.Context) {
	var doc []vast.Ad
	if ad, ok := h.catalog.Get(c.Param("ad_id")); ok && servable(ad) {
		doc = append(doc, h.document(h.base(c), ad, time.Now()))
	}
	var buf bytes.Buffer
	if err := vast.Write(&buf, doc...); err != nil {
		h.logger.Error("writing a VAST document", "err", err)
		buf.Reset()
		_ = vast.Write(&buf)
	}
	c.Header("Cache-Control", "no-store") // every response is a new serving
	c.Data(http.StatusOK, "application/xml; charset=utf-8", buf.Bytes())
}

// servable reports whether ad has a media file or a VAST tag, at a URL the
// ad checks take (one stored before they existed may not be).
func servable(ad postgres.Ad) bool {
	if ad.VASTTagURL != "" {
		return checkURL(ad.VASTTagURL) == ""
	}
	return ad.VideoURL != "" && checkURL(ad.VideoURL) == ""
}

// base is the scheme and host tracking URLs point at.
func (h *VASTHandler) base(c *gin.Context) string {
	if h.publicURL != "" {
		return h.publicURL
	}
	scheme := "http"
	if c.Request.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + c.Request.Host
}

// document describes ad for one new serving.
func (h *VASTHandler) document(base string, ad postgres.Ad, now time.Time) vast.Ad {
	sv := pixel.Serving{AdID: ad.ID, ServingID: pixel.NewServingID(), Expires: now.Add(h.ttl).Truncate(time.Second)}
	signed := func(path, kind, macros string) string {
		return base + path + "?" + h.signer.Query(kind, sv) + macros
	}
	d := vast.Ad{
		ID: ad.ID, Title: ad.Title, Advertiser: ad.Advertiser, ServingID: sv.ServingID,
		Duration:         time.Duration(ad.DurationSeconds * float64(time.Second)),
		ImpressionURL:    signed("/t/impression", "impression", timeMacros),
		ErrorURL:         signed("/t/error", "error", errorMacros),
		ClickThroughURL:  signed("/c", "click", playMacros),
		ClickTrackingURL: signed("/t/click", "click", playMacros),
	}
	for _, e := range trackedEvents {
		d.Tracking = append(d.Tracking, vast.Tracking{Event: e, URL: signed("/t/"+e, e, playMacros)})
	}
	if ad.VASTTagURL != "" {
		d.WrappedTagURL = ad.VASTTagURL
	} else {
		d.Media = &vast.Media{URL: ad.VideoURL, Type: ad.VideoType, Width: ad.VideoWidth, Height: ad.VideoHeight, Delivery: ad.VideoDelivery}
	}
	return d
}
