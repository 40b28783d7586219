package api_test

import (
	"context"
	"log/slog"
	"slices"
	"testing"

	"github.com/admetric/admetric/api"
	"github.com/admetric/admetric/store/postgres"
	"github.com/admetric/admetric/store/storetest"
)

// TestCatalog: the catalog mirrors the ads table, serves pages in ID order,
// keeps this process's changes through a refresh, and keeps its last copy when
// a refresh fails.
func TestCatalog(t *testing.T) {
	db := storetest.DB(t, storetest.Postgres(t))
	ctx := context.Background()
	ads := postgres.NewAds(db)
	for _, id := range []string{"c", "a", "b"} {
		if err := ads.Create(ctx, &postgres.Ad{ID: id, Title: "ad " + id}); err != nil {
			t.Fatal(err)
		}
	}
	cat := api.NewCatalog(ads, slog.New(slog.DiscardHandler))
	if err := cat.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if got := cat.IDs(); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("IDs = %v", got)
	}
	page, total := cat.List(2, 1)
	if total != 3 || len(page) != 2 || page[0].ID != "b" || page[1].Title != "ad c" {
		t.Fatalf("List(2, 1) = %v, %d", page, total)
	}
	if page, total := cat.List(5, 7); len(page) != 0 || total != 3 {
		t.Errorf("a page past the end = %v, %d", page, total)
	}
	if ad, ok := cat.Get("a"); !ok || ad.Title != "ad a" || ad.CreatedAt.IsZero() {
		t.Errorf("Get(a) = %+v, %v", ad, ok)
	}

	cat.Put(postgres.Ad{ID: "d", Title: "made here"})
	cat.Remove("a")
	if !cat.Exists("d") || cat.Exists("a") || !slices.Equal(cat.IDs(), []string{"b", "c", "d"}) {
		t.Errorf("after Put(d) and Remove(a): IDs %v", cat.IDs())
	}
	// The table still has a and lacks d: a refresh reads it as it is.
	if err := cat.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cat.IDs(), []string{"a", "b", "c"}) {
		t.Errorf("after a refresh: %v, want the table's ads", cat.IDs())
	}

	// Click-through: the ad's own URL; none for an unknown ad, one without a
	// URL, or one whose URL (stored before ads were checked) would redirect
	// anywhere.
	cat.Put(postgres.Ad{ID: "shop", Title: "t", ClickURL: "https://shop.example.com/x"})
	cat.Put(postgres.Ad{ID: "legacy", Title: "t", ClickURL: "//evil.example.com"})
	if u, ok := cat.ClickThrough("shop"); !ok || u != "https://shop.example.com/x" {
		t.Errorf("ClickThrough(shop) = %q, %v", u, ok)
	}
	for _, id := range []string{"legacy", "b", "nope"} {
		if u, ok := cat.ClickThrough(id); ok {
			t.Errorf("ClickThrough(%s) = %q", id, u)
		}
	}
	cat.Remove("shop")
	cat.Remove("legacy")

	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if err := cat.Refresh(ctx); err == nil {
		t.Fatal("refresh with the database closed succeeded")
	}
	if page, total := cat.List(10, 0); total != 3 || len(page) != 3 {
		t.Errorf("after a failed refresh: %v, %d; want the last copy", page, total)
	}
}
