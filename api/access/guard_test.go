package access_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"

	"github.com/admetric/admetric/api/access"
	"github.com/admetric/admetric/store/postgres"
	"github.com/admetric/admetric/store/storetest"
)

const (
	sharedToken = "shared-analytics-token"
	adminToken  = "admin-token-for-tests"
)

// storeToken puts a scoped token for ads straight into the table, expiring
// at expires (zero: never), and returns it and its ID.
func storeToken(t *testing.T, store *postgres.ReadTokens, expires time.Time, ads ...string) (token, id string) {
	t.Helper()
	token, hash := access.NewToken()
	rt := &postgres.ReadToken{ID: uuid.NewString(), Name: "test", AdIDs: ads, Hash: hash[:]}
	if !expires.IsZero() {
		rt.ExpiresAt = &expires
	}
	if err := store.Create(context.Background(), rt); err != nil {
		t.Fatal(err)
	}
	return token, rt.ID
}

// TestGuard: which scope each Authorization header gets, with read access
// closed (ANALYTICS_TOKEN set) and open, over scoped tokens in a real
// PostgreSQL.
func TestGuard(t *testing.T) {
	db := storetest.DB(t, storetest.Postgres(t))
	store := postgres.NewReadTokens(db)
	scoped, _ := storeToken(t, store, time.Time{}, "a", "b")
	expired, _ := storeToken(t, store, time.Now().Add(-time.Minute), "a")
	unknown, _ := access.NewToken()
	tokens := access.NewTokens(store, slog.New(slog.DiscardHandler))
	if err := tokens.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	every, ab, refused := "every", "a,b", "401"
	for _, tc := range []struct {
		name, header   string
		closed, opened string // the outcome with read access closed, and open
	}{
		{"no header", "", refused, every},
		{"shared token", "Bearer " + sharedToken, every, every},
		{"admin token", "Bearer " + adminToken, every, every},
		{"scoped token", "Bearer " + scoped, ab, ab},
		{"scheme in lower case", "bearer " + scoped, ab, ab},
		{"expired token", "Bearer " + expired, refused, refused},
		{"unknown scoped token", "Bearer " + unknown, refused, refused},
		{"other bearer token", "Bearer not-ours", refused, every},
		{"shared token's prefix", "Bearer " + sharedToken[:10], refused, every},
		{"basic credentials", "Basic dXNlcjpwdw==", refused, every},
		{"empty bearer", "Bearer ", refused, every},
	} {
		for _, mode := range []struct {
			shared, want string
		}{{sharedToken, tc.closed}, {"", tc.opened}} {
			guard := access.NewGuard(mode.shared, adminToken, tokens)
			if got := serveScope(guard, tc.header); got != mode.want {
				t.Errorf("%s, closed %v: %s, want %s", tc.name, guard.Closed(), got, mode.want)
			}
		}
	}
}

// serveScope runs one request through the guard and says what it got: the
// scope's ads, "every" or the refusal's status.
func serveScope(guard *access.Guard, header string) string {
	gin.SetMode(gin.TestMode)
	r := gin.New()
	var got string
	r.GET("/", guard.Require, func(c *gin.Context) {
		s := access.ScopeOf(c)
		if s.All() {
			got = "every"
			return
		}
		for i, id := range s.IDs() {
			if i > 0 {
				got += ","
			}
			got += id
		}
	})
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	if header != "" {
		req.Header.Set("Authorization", header)
	}
	r.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		if rec.Header().Get("WWW-Authenticate") == "" {
			return "no WWW-Authenticate"
		}
		return strconv.Itoa(rec.Code)
	}
	return got
}

// TestRevocationReachesOtherProcesses: a token revoked through one process
// stops working there at once, and on another process (its own Tokens over
// the same table) at its next refresh.
func TestRevocationReachesOtherProcesses(t *testing.T) {
	db := storetest.DB(t, storetest.Postgres(t))
	logger := slog.New(slog.DiscardHandler)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	here := access.NewTokens(postgres.NewReadTokens(db), logger)
	there := access.NewTokens(postgres.NewReadTokens(db), logger)
	token, id := storeToken(t, postgres.NewReadTokens(db), time.Time{}, "a")
	for _, tk := range []*access.Tokens{here, there} {
		if err := tk.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() { done <- there.Run(ctx, 20*time.Millisecond) }()
	h := access.HashToken(token)
	if _, ok := there.Lookup(h, time.Now()); !ok {
		t.Fatal("the token does not work before it is revoked")
	}
	if err := here.Revoke(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, ok := here.Lookup(h, time.Now()); ok {
		t.Error("the revoking process still takes the token")
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, ok := there.Lookup(h, time.Now()); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the other process still takes the revoked token after 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := here.Revoke(ctx, id); !errors.Is(err, postgres.ErrNotFound) {
		t.Errorf("revoking twice: %v, want ErrNotFound", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}

// TestExpiryAtUse: a token stops working the moment it expires, without a
// refresh.
func TestExpiryAtUse(t *testing.T) {
	db := storetest.DB(t, storetest.Postgres(t))
	expires := time.Now().Add(time.Hour)
	token, _ := storeToken(t, postgres.NewReadTokens(db), expires, "a")
	tokens := access.NewTokens(postgres.NewReadTokens(db), slog.New(slog.DiscardHandler))
	if err := tokens.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	h := access.HashToken(token)
	if s, ok := tokens.Lookup(h, expires.Add(-time.Second)); !ok || !s.Allows("a") || s.Allows("b") {
		t.Errorf("a second before expiry: %v, %v; want ad a only", s.IDs(), ok)
	}
	if _, ok := tokens.Lookup(h, expires); ok {
		t.Error("at expiry the token still works")
	}
}
