package api

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/admetric/admetric/api/respond"
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

// MaxPodAds bounds the ads of one pod request.
const MaxPodAds = 10

// Register mounts GET /vast/:ad_id and GET /vast (a pod) on r.
func (h *VASTHandler) Register(r gin.IRouter) {
	r.GET("/vast/:ad_id", h.serveOne)
	r.GET("/vast", h.servePod)
}

// serveOne answers the ad's document, or the empty VAST document (no ad)
// for an unknown ad or one that is not servable: a player understands that,
// not an error page.
func (h *VASTHandler) serveOne(c *gin.Context) {
	var doc []vast.Ad
	if ad, ok := h.catalog.Get(c.Param("ad_id")); ok && servable(ad) {
		doc = append(doc, h.document(h.base(c), ad, time.Now()))
	}
	h.write(c, doc)
}

// servePod answers an ad pod, GET /vast?ad_id=a&ad_id=b: the servable ads
// among those named, in that order, numbered by sequence, each a serving of
// its own. Ads that are unknown or not servable are left out (all of them:
// the empty document). No ad_id, or more than MaxPodAds, is a 400.
func (h *VASTHandler) servePod(c *gin.Context) {
	ids := c.QueryArray("ad_id")
	switch {
	case len(ids) == 0:
		respond.Error(c, http.StatusBadRequest, "ad_id", "name the pod's ads: /vast?ad_id=a&ad_id=b (or /vast/<ad_id> for one)")
		return
	case len(ids) > MaxPodAds:
		respond.Error(c, http.StatusBadRequest, "ad_id", fmt.Sprintf("a pod holds at most %d ads", MaxPodAds))
		return
	}
	base, now := h.base(c), time.Now()
	var doc []vast.Ad
	for _, id := range ids {
		if ad, ok := h.catalog.Get(id); ok && servable(ad) {
			d := h.document(base, ad, now)
			d.Sequence = len(doc) + 1
			doc = append(doc, d)
		}
	}
	h.write(c, doc)
}

// write answers the document of ads.
func (h *VASTHandler) write(c *gin.Context, ads []vast.Ad) {
	var buf bytes.Buffer
	if err := vast.Write(&buf, ads...); err != nil {
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
