package api_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gin-gonic/gin"

	"github.com/admetric/admetric/api"
	"github.com/admetric/admetric/api/openapi/openapitest"
	"github.com/admetric/admetric/store/postgres"
	"github.com/admetric/admetric/store/storetest"
)

const adminToken = "test-admin-token"

// adRouter serves the ad routes over a real PostgreSQL, failing t when an
// answer departs from the OpenAPI document.
func adRouter(t *testing.T) (http.Handler, *postgres.Ads) {
	t.Helper()
	ads := postgres.NewAds(storetest.DB(t, storetest.Postgres(t)))
	logger := slog.New(slog.DiscardHandler)
	cat := api.NewCatalog(ads, logger)
	if err := cat.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	gin.SetMode(gin.TestMode)
	r := gin.New()
	api.NewAdHandlers(ads, cat, adminToken, logger).Register(r)
	return openapitest.Handler(t, r), ads
}

// send makes one request with the admin token and returns the status and the
// JSON body.
func send(t *testing.T, r http.Handler, method, path string, body any) (int, map[string]any) {
	t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest(method, path, strings.NewReader(string(b)))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+adminToken)
	w := httptest.NewRecorder()
	r.ServeHTTP(w, req)
	var out map[string]any
	_ = json.Unmarshal(w.Body.Bytes(), &out)
	return w.Code, out
}

// TestAdFieldsRefuseHostileInput: an ad's URLs become Location headers and
// VAST content, and its text goes into HTML, XML and PostgreSQL. Create and
// update take only absolute http or https URLs with a host, no credentials,
// spaces or control characters, and text without control characters; each
// refusal is a 400 naming the field, and nothing is stored. Good values are
// stored as given.
func TestAdFieldsRefuseHostileInput(t *testing.T) {
	r, ads := adRouter(t)
	ctx := context.Background()
	if status, body := send(t, r, http.MethodPost, "/ads", map[string]any{"id": "ad-ok", "title": "ok"}); status != http.StatusCreated {
		t.Fatalf("create a plain ad: %d %v", status, body)
	}
	for _, tc := range []struct {
		name, field string
		value       any
		msg         string
	}{
		{"VAST tag as javascript", "vast_tag_url", "javascript:alert(1)", "must be an absolute http or https URL"},
		{"type with parameters", "video_type", "video/mp4; codecs=avc1", "must be a MIME type without parameters, such as video/mp4"},
		{"type without subtype", "video_type", "mp4", "must be a MIME type without parameters, such as video/mp4"},
		{"markup as type", "video_type", "<b>video</b>", "must be a MIME type without parameters, such as video/mp4"},
		{"unknown delivery", "video_delivery", "download", "must be progressive or streaming"},
		{"zero width", "video_width", 0, "must be from 1 to 16384"},
		{"huge height", "video_height", 20000, "must be from 1 to 16384"},
		{"javascript URL", "click_url", "javascript:alert(1)", "must be an absolute http or https URL"},
		{"data URL", "video_url", "data:video/mp4;base64,AAAA", "must be an absolute http or https URL"},
		{"scheme-relative", "click_url", "//evil.example.com/x", "must be an absolute http or https URL"},
		{"relative path", "click_url", "/landing", "must be an absolute http or https URL"},
		{"ftp", "video_url", "ftp://files.example.com/a.mp4", "must be an absolute http or https URL"},
		{"no host", "click_url", "https:///path", "must be an absolute http or https URL"},
		{"opaque", "click_url", "https:evil.example.com", "must be an absolute http or https URL"},
		{"header splitting", "click_url", "https://example.com/\r\nSet-Cookie: a=b", "must not contain spaces or control characters"},
		{"space", "click_url", "https://example.com/a b", "must not contain spaces or control characters"},
		{"NUL", "video_url", "https://example.com/\x00.mp4", "must not contain spaces or control characters"},
		{"credentials", "click_url", "https://good.example.com@evil.example.com/", "must not contain credentials"},
		{"too long", "click_url", "https://example.com/" + strings.Repeat("a", 2048), "must be at most 2048 bytes"},
		{"NUL in title", "title", "t\x00", "must not contain control characters"},
		{"newline in advertiser", "advertiser", "Acme\nInc", "must not contain control characters"},
		{"long advertiser", "advertiser", strings.Repeat("a", 201), "must be at most 200 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, req := range []struct{ method, path string }{{http.MethodPost, "/ads"}, {http.MethodPut, "/ads/ad-ok"}} {
				body := map[string]any{"id": "ad-bad", "title": "bad", tc.field: tc.value}
				status, resp := send(t, r, req.method, req.path, body)
				if status != http.StatusBadRequest || resp["field"] != tc.field || resp["error"] != tc.msg {
					t.Errorf("%s %s: %d %v; want 400 on %s: %q", req.method, req.path, status, resp, tc.field, tc.msg)
				}
			}
		})
	}
	if _, err := ads.Get(ctx, "ad-bad"); err == nil {
		t.Error("a refused ad was stored")
	}
	// An ID no ad can have, a NUL byte say, is no such ad: it must not reach
	// PostgreSQL, whose refusal would answer 503 as if it were down.
	for _, method := range []string{http.MethodGet, http.MethodPut, http.MethodDelete} {
		for _, path := range []string{"/ads/ad-ok%00", "/ads/ad%20ok", "/ads/" + strings.Repeat("a", 65)} {
			status, resp := send(t, r, method, path, map[string]any{"title": "t"})
			if status != http.StatusNotFound || resp["field"] != "id" {
				t.Errorf("%s %s: %d %v; want 404 naming id", method, path, status, resp)
			}
		}
	}
	if ad, err := ads.Get(ctx, "ad-ok"); err != nil || ad.Title != "ok" || ad.ClickURL != "" {
		t.Errorf("the plain ad changed: %+v %v", ad, err)
	}

	if ad, err := ads.Get(ctx, "ad-ok"); err != nil || ad.VideoType != "video/mp4" || ad.VideoWidth != 1280 || ad.VideoHeight != 720 || ad.VideoDelivery != "progressive" {
		t.Errorf("an ad created without media attributes: %+v %v; want video/mp4, 1280x720, progressive", ad, err)
	}

	good := map[string]any{"title": "Coffee", "advertiser": "Café Ünïcode", "video_url": "https://cdn.example.com/v/coffee.mp4?x=1&y=2", "click_url": "HTTP://Example.com:8080/landing#top",
		"video_type": "Video/WebM", "video_width": 640, "video_height": 360, "video_delivery": "streaming", "vast_tag_url": "https://tags.example.net/vast?id=7"}
	if status, body := send(t, r, http.MethodPut, "/ads/ad-ok", good); status != http.StatusOK {
		t.Fatalf("update with good values: %d %v", status, body)
	}
	ad, err := ads.Get(ctx, "ad-ok")
	if err != nil {
		t.Fatal(err)
	}
	if ad.Advertiser != good["advertiser"] || ad.VideoURL != good["video_url"] || ad.ClickURL != good["click_url"] ||
		ad.VideoType != "video/webm" || ad.VideoWidth != 640 || ad.VideoHeight != 360 || ad.VideoDelivery != "streaming" || ad.VASTTagURL != good["vast_tag_url"] {
		t.Errorf("stored %+v, want the values as given (the MIME type in lower case)", ad)
	}
}
