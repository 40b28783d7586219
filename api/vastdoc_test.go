package api_test

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/admetric/admetric/api"
	"github.com/admetric/admetric/api/openapi/openapitest"
	"github.com/admetric/admetric/ingest/pixel"
	"github.com/admetric/admetric/store/postgres"
)

// adsInMemory is an AdCatalog of fixed ads: the VAST handler's logic needs
// nothing else.
type adsInMemory map[string]postgres.Ad

func (m adsInMemory) Put(ad postgres.Ad)                 { m[ad.ID] = ad }
func (m adsInMemory) Remove(id string)                   { delete(m, id) }
func (m adsInMemory) Exists(id string) bool              { _, ok := m[id]; return ok }
func (m adsInMemory) Get(id string) (postgres.Ad, bool)  { ad, ok := m[id]; return ad, ok }
func (m adsInMemory) IDs() []string                      { return nil }
func (m adsInMemory) List(int, int) ([]postgres.Ad, int) { return nil, 0 }

// TestVASTDocuments: with PUBLIC_URL every tracking URL points there, each
// signed for one serving; an ad naming a third party's tag is a Wrapper of
// it; an unknown ad, or one with neither a media file nor a tag, gets the
// empty document.
func TestVASTDocuments(t *testing.T) {
	ads := adsInMemory{
		"hosted":  {ID: "hosted", Title: "Hosted", VideoURL: "https://cdn.example.com/a.mp4", ClickURL: "https://shop.example.com", DurationSeconds: 15, VideoType: "video/mp4", VideoWidth: 640, VideoHeight: 360, VideoDelivery: "progressive"},
		"wrapped": {ID: "wrapped", Title: "Wrapped", VASTTagURL: "https://tags.example.net/vast?id=7"},
		"empty":   {ID: "empty", Title: "No media"},
		// Stored before ads were checked: served as no ad.
		"legacy": {ID: "legacy", Title: "Legacy", VideoURL: "javascript:alert(1)", VideoType: "video/mp4", VideoWidth: 1, VideoHeight: 1, VideoDelivery: "progressive"},
	}
	r, signer := vastRouter(t, ads)
	h := openapitest.Handler(t, r) // every answer checked against the API contract
	get := func(id string) string {
		t.Helper()
		rec := httptest.NewRecorder()
		path := "/vast/" + id
		if strings.HasPrefix(id, "?") {
			path = "/vast" + id
		}
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "http://internal:8080"+path, nil))
		if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "application/xml; charset=utf-8" || rec.Header().Get("Cache-Control") != "no-store" {
			t.Fatalf("%s: %d %v", id, rec.Code, rec.Header())
		}
		b, _ := io.ReadAll(rec.Body)
		return string(b)
	}
	urls := regexp.MustCompile(`<!\[CDATA\[(.*?)\]\]>`)

	hosted := get("hosted")
	var tracking int
	for _, m := range urls.FindAllStringSubmatch(hosted, -1) {
		u := m[1]
		if strings.HasPrefix(u, "https://cdn.example.com/") {
			continue // the media file
		}
		checkSigned(t, signer, u, "hosted")
		tracking++
	}
	if tracking != 10 { // impression, error, click-through, click tracking, six events
		t.Errorf("%d tracking URLs, want 10:\n%s", tracking, hosted)
	}
	if again := get("hosted"); again == hosted {
		t.Error("two responses share a serving")
	}

	wrapped := get("wrapped")
	if !strings.Contains(wrapped, "<Wrapper>") || !strings.Contains(wrapped, "<VASTAdTagURI><![CDATA[https://tags.example.net/vast?id=7]]></VASTAdTagURI>") || strings.Contains(wrapped, "<MediaFile") {
		t.Errorf("wrapped ad:\n%s", wrapped)
	}
	for _, id := range []string{"empty", "legacy", "unknown"} {
		if doc := get(id); strings.Contains(doc, "<Ad") || !strings.Contains(doc, "<VAST version=\"4.2\"") {
			t.Errorf("%s: want the empty VAST document, got\n%s", id, doc)
		}
	}

	// A pod: the servable ads named, in order, numbered, a serving each.
	pod := get("?ad_id=wrapped&ad_id=unknown&ad_id=hosted&ad_id=empty")
	podAds := regexp.MustCompile(`<Ad id="([^"]+)" sequence="(\d+)">`).FindAllStringSubmatch(pod, -1)
	if len(podAds) != 2 || podAds[0][1] != "wrapped" || podAds[0][2] != "1" || podAds[1][1] != "hosted" || podAds[1][2] != "2" {
		t.Errorf("pod ads %v, want wrapped then hosted, sequence 1 and 2:\n%s", podAds, pod)
	}
	servings := map[string]bool{}
	for _, m := range urls.FindAllStringSubmatch(pod, -1) {
		if u, err := url.Parse(m[1]); err == nil && u.Host == "ads.example.com" {
			servings[u.Query().Get("ad")+" "+u.Query().Get("sv")] = true
		}
	}
	if len(servings) != 2 {
		t.Errorf("the pod's tracking URLs name %d servings (%v), want one per ad", len(servings), servings)
	}
	if doc := get("?ad_id=unknown"); strings.Contains(doc, "<Ad") {
		t.Errorf("a pod of no servable ad: want the empty VAST document, got\n%s", doc)
	}
	for _, q := range []string{"", "?ad_id=a&ad_id=b&ad_id=c&ad_id=d&ad_id=e&ad_id=f&ad_id=g&ad_id=h&ad_id=i&ad_id=j&ad_id=k"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/vast"+q, nil))
		if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), `"field":"ad_id"`) {
			t.Errorf("GET /vast%s: %d %s, want 400 naming ad_id", q, rec.Code, rec.Body)
		}
	}
}

// checkSigned fails t unless u is a tracking URL at PUBLIC_URL for adID whose
// signature holds for the kind its path names, valid for the TTL given to
// the handler (20 minutes) from about now.
// vastRouter serves the VAST routes over ads, with tracking URLs at
// https://ads.example.com signed by the signer it returns.
func vastRouter(tb testing.TB, ads adsInMemory) (*gin.Engine, *pixel.Signer) {
	tb.Helper()
	signer, err := pixel.NewSigner([]byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		tb.Fatal(err)
	}
	gin.SetMode(gin.TestMode)
	r := gin.New()
	api.NewVASTHandler(ads, signer, "https://ads.example.com/", 20*time.Minute, slog.New(slog.DiscardHandler)).Register(r)
	return r, signer
}

func checkSigned(t *testing.T, signer *pixel.Signer, u, adID string) {
	t.Helper()
	parsed, err := url.Parse(u)
	if err != nil || parsed.Scheme != "https" || parsed.Host != "ads.example.com" {
		t.Errorf("tracking URL %q is not at PUBLIC_URL", u)
		return
	}
	kind, ok := strings.CutPrefix(parsed.Path, "/t/")
	if parsed.Path == "/c" {
		kind, ok = "click", true
	}
	if !ok {
		t.Errorf("tracking URL %q has an unknown path", u)
		return
	}
	sv, sig, err := pixel.ParseQuery(parsed.Query().Get)
	if err != nil || sv.AdID != adID || !pixel.ValidServingID(sv.ServingID) {
		t.Errorf("tracking URL %q: serving %+v, %v", u, sv, err)
		return
	}
	if err := signer.Verify(kind, sv, sig, time.Now()); err != nil {
		t.Errorf("tracking URL %q is not signed for %s: %v", u, kind, err)
	}
	if ttl := time.Until(sv.Expires); ttl < 20*time.Minute-5*time.Second || ttl > 20*time.Minute {
		t.Errorf("tracking URL %q is valid for %s more, want the 20 minutes given", u, ttl)
	}
}
