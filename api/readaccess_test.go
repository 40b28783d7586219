package api_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/admetric/admetric/api"
	"github.com/admetric/admetric/api/access"
	"github.com/admetric/admetric/api/openapi/openapitest"
	"github.com/admetric/admetric/store"
	"github.com/admetric/admetric/store/postgres"
	"github.com/admetric/admetric/store/rollup/rolluptest"
	"github.com/admetric/admetric/store/storetest"
)

const sharedReadToken = "shared-read-token-0123456789"

// syncBuffer is a log destination tests read while handlers write.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// readAccess is the read side behind its guard over a real PostgreSQL (ads,
// read tokens) and real rollups: ads a, b and c with 3, 4 and 5 clicks in
// the current minute (and 10, 20, 30 impressions).
type readAccess struct {
	t      *testing.T
	h      http.Handler
	tokens *access.Tokens
	store  *postgres.ReadTokens
	logs   *syncBuffer
}

func newReadAccess(t *testing.T, sharedToken string) *readAccess {
	t.Helper()
	ctx := context.Background()
	js, _ := storetest.JetStream(t, storetest.NATS(t))
	rollups, err := store.CreateOrUpdateRollups(ctx, js, rolluptest.Layout, 1)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	db := storetest.DB(t, storetest.Postgres(t))
	ads := postgres.NewAds(db)
	for i, id := range []string{"a", "b", "c"} {
		if err := ads.Create(ctx, &postgres.Ad{ID: id, Title: "ad " + id}); err != nil {
			t.Fatal(err)
		}
		for _, res := range rolluptest.Layout {
			key, slot := res.Unit.Locate(id, now)
			v, rev, err := rollups.Load(ctx, res.Unit, key)
			if err != nil {
				t.Fatal(err)
			}
			s := v.Slot(slot)
			s.Clicks += uint64(3 + i)
			s.Impressions += uint64(10 * (i + 1))
			if _, err := rollups.Replace(ctx, res.Unit, []store.Write{{Key: key, Value: v, Rev: rev}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	logs := &syncBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	catalog := api.NewCatalog(ads, logger)
	if err := catalog.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	readTokens := postgres.NewReadTokens(db)
	tokens := access.NewTokens(readTokens, logger)
	if err := tokens.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	guard := access.NewGuard(sharedToken, adminToken, tokens)
	gin.SetMode(gin.TestMode)
	r := gin.New()
	api.NewAdHandlers(ads, catalog, adminToken, logger).Register(r, guard.Require)
	api.NewAnalyticsHandler(rollups, rolluptest.Layout, catalog, logger, api.AnalyticsOptions{}).Register(r, guard.Require)
	access.NewTokenHandlers(tokens, adminToken, logger).Register(r)
	return &readAccess{t: t, h: openapitest.Handler(t, r), tokens: tokens, store: readTokens, logs: logs}
}

// do sends a request with token (none when empty) and returns the answer.
func (ra *readAccess) do(method, path, token string, body any) *httptest.ResponseRecorder {
	ra.t.Helper()
	var rd *strings.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			ra.t.Fatal(err)
		}
		rd = strings.NewReader(string(b))
	} else {
		rd = strings.NewReader("")
	}
	req := httptest.NewRequest(method, path, rd)
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	ra.h.ServeHTTP(rec, req)
	return rec
}

// decode reads the JSON body of an answer that must have status want.
func decode[T any](t *testing.T, rec *httptest.ResponseRecorder, want int, what string) T {
	t.Helper()
	var v T
	if rec.Code != want {
		t.Fatalf("%s: status %d %s, want %d", what, rec.Code, rec.Body.String(), want)
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return v
}

// createToken makes a scoped token for ads through POST /tokens.
func (ra *readAccess) createToken(name string, ads ...string) access.CreatedToken {
	ra.t.Helper()
	return decode[access.CreatedToken](ra.t, ra.do(http.MethodPost, "/tokens", adminToken, map[string]any{"name": name, "ad_ids": ads}), http.StatusCreated, "POST /tokens")
}

func adIDs(ms []api.Metrics) []string {
	var ids []string
	for _, m := range ms {
		ids = append(ids, m.AdID)
	}
	slices.Sort(ids)
	return ids
}

// TestScopedTokenSeesItsAds: a token scoped to ads a and b sees exactly
// them in every analytics form (one ad, all ads, a series) and in the ad
// list and ad reads, with totals over its ads alone; asking for another ad,
// known or not, is a 403 that tells nothing of it. The shared and the admin
// token read every ad.
func TestScopedTokenSeesItsAds(t *testing.T) {
	ra := newReadAccess(t, sharedReadToken)
	tok := ra.createToken("advertiser ab", "b", "a", "b")
	if !access.IsScopedToken(tok.Token) || !slices.Equal(tok.AdIDs, []string{"a", "b"}) || tok.Expired {
		t.Fatalf("created %+v, want a scoped token for a and b", tok)
	}
	scoped := tok.Token

	// One ad.
	rep := decode[api.Report](t, ra.do(http.MethodGet, "/ads/analytics?timeframe=1h&ad_id=a", scoped, nil), http.StatusOK, "one ad")
	if rep.TotalAds != 1 || len(rep.Ads) != 1 || rep.Ads[0].Clicks != 3 {
		t.Errorf("one ad: %+v, want ad a's 3 clicks", rep)
	}
	// All ads: its two, and totals over them alone.
	rep = decode[api.Report](t, ra.do(http.MethodGet, "/ads/analytics?timeframe=1h", scoped, nil), http.StatusOK, "all ads")
	if rep.TotalAds != 2 || !slices.Equal(adIDs(rep.Ads), []string{"a", "b"}) || rep.Total.Clicks != 7 || rep.Total.Impressions != 30 {
		t.Errorf("all ads: total_ads %d, ads %v, total %d clicks %d impressions; want a and b, 7 and 30", rep.TotalAds, adIDs(rep.Ads), rep.Total.Clicks, rep.Total.Impressions)
	}
	// A page of them counts them all in total_ads and total, never ad c.
	rep = decode[api.Report](t, ra.do(http.MethodGet, "/ads/analytics?timeframe=1h&limit=1&offset=1", scoped, nil), http.StatusOK, "page")
	if rep.TotalAds != 2 || len(rep.Ads) != 1 || rep.Ads[0].AdID != "a" || rep.Total.Clicks != 7 {
		t.Errorf("second page of one: %+v, want ad a, and 7 clicks over both", rep)
	}
	// A series: its points sum to its ads' clicks.
	rep = decode[api.Report](t, ra.do(http.MethodGet, "/ads/analytics?timeframe=1h&interval=minute", scoped, nil), http.StatusOK, "series")
	var sum uint64
	for _, p := range rep.Total.Series {
		sum += p.Clicks
	}
	if sum != 7 || rep.TotalAds != 2 || !slices.Equal(adIDs(rep.Ads), []string{"a", "b"}) {
		t.Errorf("series: points sum to %d clicks over %v, want 7 over a and b", sum, adIDs(rep.Ads))
	}
	// The ad list and ad reads.
	list := decode[struct {
		Ads   []postgres.Ad `json:"ads"`
		Total int           `json:"total"`
	}](t, ra.do(http.MethodGet, "/ads", scoped, nil), http.StatusOK, "GET /ads")
	if list.Total != 2 || len(list.Ads) != 2 || list.Ads[0].ID != "a" || list.Ads[1].ID != "b" {
		t.Errorf("GET /ads: %+v, want a and b, total 2", list)
	}
	if rec := ra.do(http.MethodGet, "/ads?limit=1&offset=1", scoped, nil); rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"id":"b"`) || !strings.Contains(rec.Body.String(), `"total":2`) {
		t.Errorf("GET /ads second page: %d %s", rec.Code, rec.Body.String())
	}
	if rec := ra.do(http.MethodGet, "/ads/b", scoped, nil); rec.Code != http.StatusOK {
		t.Errorf("GET /ads/b: %d %s", rec.Code, rec.Body.String())
	}

	// Other ads: 403, the same whether the ad exists or not, naming no more
	// than the ID asked for.
	var forbidden []string
	for _, path := range []string{
		"/ads/analytics?ad_id=c", "/ads/analytics?ad_id=zzz", "/ads/analytics?ad_id=a&ad_id=c",
		"/ads/analytics?timeframe=1h&interval=minute&ad_id=c", "/ads/c", "/ads/zzz",
	} {
		rec := ra.do(http.MethodGet, path, scoped, nil)
		body := decode[struct{ Error, Field string }](t, rec, http.StatusForbidden, path)
		if body.Field != "Authorization" || strings.Contains(rec.Body.String(), "no ad") || strings.Contains(rec.Body.String(), "title") || strings.Contains(rec.Body.String(), "clicks") {
			t.Errorf("%s: %s", path, rec.Body.String())
		}
		forbidden = append(forbidden, strings.ReplaceAll(strings.ReplaceAll(rec.Body.String(), "zzz", "c"), "ad_id", "id"))
	}
	for _, b := range forbidden[1:] {
		if b != forbidden[0] {
			t.Errorf("403 bodies differ (one tells whether the ad exists?): %q vs %q", b, forbidden[0])
		}
	}

	// The shared and the admin token read every ad.
	for name, token := range map[string]string{"shared": sharedReadToken, "admin": adminToken} {
		rep := decode[api.Report](t, ra.do(http.MethodGet, "/ads/analytics?timeframe=1h", token, nil), http.StatusOK, name)
		if rep.TotalAds != 3 || rep.Total.Clicks != 12 {
			t.Errorf("%s token: %d ads, %d clicks; want 3 and 12", name, rep.TotalAds, rep.Total.Clicks)
		}
		if rec := ra.do(http.MethodGet, "/ads/c", token, nil); rec.Code != http.StatusOK {
			t.Errorf("%s token, GET /ads/c: %d", name, rec.Code)
		}
		if rec := ra.do(http.MethodGet, "/ads", token, nil); !strings.Contains(rec.Body.String(), `"total":3`) {
			t.Errorf("%s token, GET /ads: %s", name, rec.Body.String())
		}
	}
}

// TestRefusedTokens: without a token, or with a wrong, malformed, expired or
// revoked one, every read route answers the same 401 with WWW-Authenticate:
// the body names neither the token nor an ad, nor why it was refused.
func TestRefusedTokens(t *testing.T) {
	ra := newReadAccess(t, sharedReadToken)
	revoked := ra.createToken("revoked", "a")
	if rec := ra.do(http.MethodDelete, "/tokens/"+revoked.ID, adminToken, nil); rec.Code != http.StatusNoContent {
		t.Fatalf("DELETE /tokens/%s: %d %s", revoked.ID, rec.Code, rec.Body.String())
	}
	expired, hash := access.NewToken()
	past := time.Now().Add(-time.Second)
	if err := ra.store.Create(context.Background(), &postgres.ReadToken{ID: "0190a1b2-0000-7000-8000-000000000001", Name: "expired", AdIDs: []string{"a"}, Hash: hash[:], ExpiresAt: &past}); err != nil {
		t.Fatal(err)
	}
	if err := ra.tokens.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	unknown, _ := access.NewToken()
	cases := map[string]string{
		"missing": "", "wrong": "not-the-token", "shared's prefix": sharedReadToken[:12], "unknown scoped": unknown,
		"expired": expired, "revoked": revoked.Token,
	}
	var first string
	for name, token := range cases {
		for _, path := range []string{"/ads/analytics?ad_id=a", "/ads/analytics", "/ads/analytics?interval=hour", "/ads", "/ads/a", "/ads/zzz"} {
			rec := ra.do(http.MethodGet, path, token, nil)
			body := rec.Body.String()
			if rec.Code != http.StatusUnauthorized || !strings.HasPrefix(rec.Header().Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("%s token, %s: %d %v %s; want 401 with WWW-Authenticate: Bearer", name, path, rec.Code, rec.Header(), body)
				continue
			}
			if first == "" {
				first = body
			}
			if body != first {
				t.Errorf("%s token, %s: body %s differs from %s", name, path, body, first)
			}
			for _, leak := range []string{`"a"`, "zzz", "expired", "revoked", "clicks", sharedReadToken[:12]} {
				if strings.Contains(body, leak) {
					t.Errorf("%s token, %s: body %s holds %q", name, path, body, leak)
				}
			}
			if token != "" && strings.Contains(body, token) {
				t.Errorf("%s token, %s: body %s holds the token", name, path, body)
			}
		}
	}
	if !strings.Contains(first, `"field":"Authorization"`) {
		t.Errorf("401 body %s, want field Authorization", first)
	}
}

// TestReadsOpenWithoutSharedToken: without ANALYTICS_TOKEN anyone reads
// every ad, but a scoped token still sees its ads only, and a wrong scoped
// token is refused: an advertiser's view does not depend on the setting.
func TestReadsOpenWithoutSharedToken(t *testing.T) {
	ra := newReadAccess(t, "")
	scoped := ra.createToken("advertiser c", "c").Token
	unknown, _ := access.NewToken()
	for _, tc := range []struct {
		name, token string
		status, ads int
	}{
		{"no token", "", http.StatusOK, 3},
		{"someone else's bearer token", "opaque-proxy-token", http.StatusOK, 3},
		{"scoped token", scoped, http.StatusOK, 1},
		{"unknown scoped token", unknown, http.StatusUnauthorized, 0},
	} {
		rec := ra.do(http.MethodGet, "/ads/analytics?timeframe=1h", tc.token, nil)
		if rec.Code != tc.status {
			t.Errorf("%s: %d %s, want %d", tc.name, rec.Code, rec.Body.String(), tc.status)
			continue
		}
		if rec.Code == http.StatusOK {
			if rep := decode[api.Report](t, rec, http.StatusOK, tc.name); rep.TotalAds != tc.ads {
				t.Errorf("%s: %d ads, want %d", tc.name, rep.TotalAds, tc.ads)
			}
		}
	}
	if rec := ra.do(http.MethodGet, "/ads/a", scoped, nil); rec.Code != http.StatusForbidden {
		t.Errorf("scoped token, GET /ads/a: %d, want 403", rec.Code)
	}
}

// TestTokenManagement: only the admin token manages tokens; GET /tokens and
// the logs never show a token or its hash; bad input is a 400 naming the
// field; a revoked token stops working at once.
func TestTokenManagement(t *testing.T) {
	ra := newReadAccess(t, sharedReadToken)
	body := map[string]any{"name": "advertiser", "ad_ids": []string{"a"}}
	for name, token := range map[string]string{"no": "", "shared": sharedReadToken, "wrong": "x"} {
		for _, rec := range []*httptest.ResponseRecorder{
			ra.do(http.MethodPost, "/tokens", token, body),
			ra.do(http.MethodGet, "/tokens", token, nil),
			ra.do(http.MethodDelete, "/tokens/0190a1b2-0000-7000-8000-000000000001", token, nil),
		} {
			if rec.Code != http.StatusUnauthorized {
				t.Errorf("%s token: %d %s, want 401", name, rec.Code, rec.Body.String())
			}
		}
	}
	expires := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	tok := decode[access.CreatedToken](t, ra.do(http.MethodPost, "/tokens", adminToken,
		map[string]any{"name": "  expiring  ", "ad_ids": []string{"b"}, "expires_at": expires}), http.StatusCreated, "POST /tokens")
	if tok.Name != "expiring" || tok.ExpiresAt == nil || !tok.ExpiresAt.Equal(expires) {
		t.Errorf("created %+v, want the name trimmed and the expiry kept", tok)
	}
	other := ra.createToken("other", "a", "c")

	rec := ra.do(http.MethodGet, "/tokens", adminToken, nil)
	list := decode[struct{ Tokens []access.TokenInfo }](t, rec, http.StatusOK, "GET /tokens")
	if len(list.Tokens) != 2 || list.Tokens[0].ID != tok.ID || list.Tokens[1].ID != other.ID {
		t.Errorf("GET /tokens: %+v, want the two tokens, oldest first", list.Tokens)
	}
	for _, secret := range []access.CreatedToken{tok, other} {
		h := access.HashToken(secret.Token)
		for _, leak := range []string{secret.Token, secret.Token[4:20], hex.EncodeToString(h[:]), base64.StdEncoding.EncodeToString(h[:])} {
			if strings.Contains(rec.Body.String(), leak) {
				t.Errorf("GET /tokens shows %q", leak)
			}
			if strings.Contains(ra.logs.String(), leak) {
				t.Errorf("the logs show %q:\n%s", leak, ra.logs.String())
			}
		}
	}
	if !strings.Contains(ra.logs.String(), tok.ID) {
		t.Errorf("the logs do not record the creation of %s:\n%s", tok.ID, ra.logs.String())
	}

	for _, tc := range []struct {
		body  any
		field string
	}{
		{map[string]any{"ad_ids": []string{"a"}}, "name"},
		{map[string]any{"name": "x\x00", "ad_ids": []string{"a"}}, "name"},
		{map[string]any{"name": "x"}, "ad_ids"},
		{map[string]any{"name": "x", "ad_ids": []string{"a.b"}}, "ad_ids"},
		{map[string]any{"name": "x", "ad_ids": []string{"a"}, "expires_at": time.Now().Add(-time.Hour)}, "expires_at"},
		{map[string]any{"name": "x", "ad_ids": "a"}, ""},
	} {
		rec := ra.do(http.MethodPost, "/tokens", adminToken, tc.body)
		got := decode[struct{ Error, Field string }](t, rec, http.StatusBadRequest, "bad POST /tokens")
		if got.Field != tc.field || got.Error == "" {
			t.Errorf("POST /tokens %v: %s, want 400 naming %q", tc.body, rec.Body.String(), tc.field)
		}
	}

	if rec := ra.do(http.MethodGet, "/ads/analytics?ad_id=a", other.Token, nil); rec.Code != http.StatusOK {
		t.Fatalf("before revoking: %d", rec.Code)
	}
	if rec := ra.do(http.MethodDelete, "/tokens/"+other.ID, adminToken, nil); rec.Code != http.StatusNoContent {
		t.Fatalf("DELETE: %d %s", rec.Code, rec.Body.String())
	}
	if rec := ra.do(http.MethodGet, "/ads/analytics?ad_id=a", other.Token, nil); rec.Code != http.StatusUnauthorized {
		t.Errorf("after revoking: %d, want 401", rec.Code)
	}
	for _, id := range []string{other.ID, "not-a-uuid", "0190a1b2-0000-7000-8000-00000000000%00"} {
		if rec := ra.do(http.MethodDelete, "/tokens/"+id, adminToken, nil); rec.Code != http.StatusNotFound {
			t.Errorf("DELETE /tokens/%s: %d %s, want 404", id, rec.Code, rec.Body.String())
		}
	}
}

// TestTokenManagementDisabled: without an admin token, /tokens answers 403.
func TestTokenManagementDisabled(t *testing.T) {
	db := storetest.DB(t, storetest.Postgres(t))
	tokens := access.NewTokens(postgres.NewReadTokens(db), slog.New(slog.DiscardHandler))
	gin.SetMode(gin.TestMode)
	r := gin.New()
	access.NewTokenHandlers(tokens, "", slog.New(slog.DiscardHandler)).Register(r)
	h := openapitest.Handler(t, r)
	for _, method := range []string{http.MethodGet, http.MethodPost} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(method, "/tokens", strings.NewReader(`{}`))
		req.Header.Set("Authorization", "Bearer anything")
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusForbidden {
			t.Errorf("%s /tokens: %d, want 403", method, rec.Code)
		}
	}
}
