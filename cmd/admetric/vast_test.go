package main

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/admetric/admetric/aggregator"
	"github.com/admetric/admetric/ingest/pixel"
	"github.com/admetric/admetric/store"
)

// vastDoc is what a player reads of a VAST document, parsed with a generic
// XML decoder: element name to texts, and Tracking by event.
type vastDoc struct {
	texts    map[string][]string
	tracking map[string]string
}

func parseVAST(t *testing.T, body []byte) vastDoc {
	t.Helper()
	d := vastDoc{texts: map[string][]string{}, tracking: map[string]string{}}
	dec := xml.NewDecoder(strings.NewReader(string(body)))
	var stack []xml.StartElement
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return d
		}
		if err != nil {
			t.Fatalf("VAST document is not XML: %v\n%s", err, body)
		}
		switch v := tok.(type) {
		case xml.StartElement:
			stack = append(stack, v)
		case xml.EndElement:
			stack = stack[:len(stack)-1]
		case xml.CharData:
			s := strings.TrimSpace(string(v))
			if s == "" || len(stack) == 0 {
				continue
			}
			el := stack[len(stack)-1]
			d.texts[el.Name.Local] = append(d.texts[el.Name.Local], s)
			if el.Name.Local == "Tracking" {
				for _, a := range el.Attr {
					if a.Name.Local == "event" {
						d.tracking[a.Value] = s
					}
				}
			}
		}
	}
}

// fill replaces the VAST macros in u as a player does.
func fill(u string, playhead string) string {
	return strings.NewReplacer(
		"[ADPLAYHEAD]", playhead,
		"[TIMESTAMP]", url.QueryEscape(time.Now().UTC().Format("2006-01-02T15:04:05.000Z07:00")),
		"[CACHEBUSTING]", strconv.Itoa(int(time.Now().UnixNano()%1e8)),
		"[ERRORCODE]", "405",
	).Replace(u)
}

// TestVASTPlayer plays a standard VAST player against the service: it fetches
// an ad's document, fires the impression, start, the quartiles, complete and
// the click with macros filled in (some twice), follows the click-through,
// and finds each counted once; a second serving fails with a VAST error.
// Forged, tampered and expired pixels still get their image but count only
// as invalid, archived with their reason; the click redirect goes nowhere
// but the ad's own click URL; an unknown ad gets the empty VAST document.
func TestVASTPlayer(t *testing.T) {
	dataDir := testDataDir(t)
	d := startTestDaemon(t, testEnv(dataDir))
	base := "http://" + d.httpAddr()
	c := client{t: t, base: base}
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	// get requests u without following a redirect, as a player in a
	// browser does (Go's own user agent is a bot's): the status and headers.
	get := func(u string) (int, http.Header) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, u, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("User-Agent", personUA)
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, resp.Header
	}
	pixelOK := func(what, u string) {
		t.Helper()
		if status, h := get(u); status != http.StatusOK || h.Get("Content-Type") != "image/gif" {
			t.Fatalf("%s: %d %s, want a GIF", what, status, h.Get("Content-Type"))
		}
	}

	resp, err := http.Get(base + "/vast/coffee-6s")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/xml") {
		t.Fatalf("GET /vast/coffee-6s: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	doc := parseVAST(t, body)
	if got := doc.texts["MediaFile"]; len(got) != 1 || got[0] != "https://cdn.example.com/ads/coffee-6s.mp4" {
		t.Fatalf("media files %v", got)
	}
	if got := doc.texts["Duration"]; len(got) != 1 || got[0] != "00:00:06.000" {
		t.Fatalf("duration %v", got)
	}
	serving := doc.texts["AdServingId"]
	if len(serving) != 1 || !pixel.ValidServingID(serving[0]) {
		t.Fatalf("AdServingId %v", serving)
	}

	// The player's run: every pixel once, start and complete twice, the
	// click tracked and followed.
	pixelOK("impression", fill(doc.texts["Impression"][0], "-1"))
	for i, e := range []string{"start", "firstQuartile", "midpoint", "thirdQuartile", "complete", "start", "complete"} {
		pixelOK(e, fill(doc.tracking[e], "00:00:0"+strconv.Itoa(1+i%5)+".500"))
	}
	pixelOK("click tracking", fill(doc.texts["ClickTracking"][0], "00:00:04.250"))
	if status, h := get(fill(doc.texts["ClickThrough"][0], "00:00:04.250")); status != http.StatusFound || h.Get("Location") != "https://bean.example.com" {
		t.Fatalf("click-through: %d to %q, want 302 to the ad's click URL", status, h.Get("Location"))
	}

	// A second serving that the player cannot play: the impression, then
	// the error pixel with [ERRORCODE] 405, fired twice.
	resp, err = http.Get(base + "/vast/coffee-6s")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	doc2 := parseVAST(t, body)
	pixelOK("second impression", fill(doc2.texts["Impression"][0], "-1"))
	pixelOK("error", fill(doc2.texts["Error"][0], "-1"))
	pixelOK("error again", fill(doc2.texts["Error"][0], "-1"))

	// Forged, tampered and expired pixels: an image, counted as invalid only.
	secret, err := os.ReadFile(filepath.Join(dataDir, "pixel_secret"))
	if err != nil {
		t.Fatal(err)
	}
	signer, err := pixel.NewSigner([]byte(strings.TrimSpace(string(secret))))
	if err != nil {
		t.Fatal(err)
	}
	// Each forgery names a serving of its own, so that the stream's
	// deduplication cannot hide one that was counted.
	fresh := func() pixel.Serving {
		return pixel.Serving{AdID: "coffee-6s", ServingID: pixel.NewServingID(), Expires: time.Now().Add(time.Hour).Truncate(time.Second)}
	}
	otherKey, err := pixel.NewSigner([]byte("not-the-service-secret-0123456789"))
	if err != nil {
		t.Fatal(err)
	}
	expired := fresh()
	expired.Expires = time.Now().Add(-time.Minute).Truncate(time.Second)
	otherAd := fresh()
	svParam := regexp.MustCompile(`sv=[^&]+`)
	for what, u := range map[string]string{
		"another key":     base + "/t/start?" + otherKey.Query("start", fresh()),
		"another serving": svParam.ReplaceAllString(doc.tracking["start"], "sv="+fresh().ServingID),
		"another ad":      base + "/t/start?" + strings.Replace(signer.Query("start", otherAd), "ad=coffee-6s", "ad=car-launch-20s", 1),
		"another event":   strings.Replace(doc.tracking["complete"], "/t/complete", "/t/skip", 1),
		"expired":         base + "/t/start?" + signer.Query("start", expired),
		"no signature":    base + "/t/start?ad=coffee-6s&sv=" + fresh().ServingID, // malformed: not recorded
	} {
		pixelOK(what, fill(u, "00:00:01.000"))
	}

	// The click redirect only ever goes to the ad's own URL.
	click := fill(doc.texts["ClickThrough"][0], "00:00:01.000")
	for what, u := range map[string]string{
		"a url parameter":  click + "&url=https://evil.example.com",
		"a redirect param": click + "&redirect=//evil.example.com",
		"another key":      base + "/c?" + otherKey.Query("click", fresh()) + "&ph=00:00:01.000",
	} {
		if status, h := get(u); status != http.StatusFound || h.Get("Location") != "https://bean.example.com" {
			t.Errorf("click with %s: %d to %q", what, status, h.Get("Location"))
		}
	}
	if status, h := get(base + "/c?ad=no-such-ad"); status != http.StatusNotFound || h.Get("Location") != "" {
		t.Errorf("click of an unknown ad: %d to %q", status, h.Get("Location"))
	}

	// Each counted once: once every partition's writer has acknowledged
	// everything, nothing more can come, and the answer must match.
	for p := range d.cfg.Partitions {
		waitAcknowledged(t, d.js, store.EventStreamName(p), aggregator.RollupConsumerName(p))
	}
	// Invalid on coffee-6s: four start and skip forgeries and the forged click.
	c.analytics("timeframe=1h&ad_id=coffee-6s", func(a map[string]any) bool {
		byCode, _ := a["vast_errors_by_code"].(map[string]any)
		return num(a, "impressions") == 2 && num(a, "starts") == 1 && num(a, "first_quartiles") == 1 &&
			num(a, "midpoints") == 1 && num(a, "third_quartiles") == 1 && num(a, "completes") == 1 &&
			num(a, "clicks") == 1 && num(a, "skips") == 0 && num(a, "avg_playback_time") == 4.25 &&
			num(a, "vast_errors") == 1 && len(byCode) == 1 && num(byCode, "405") == 1 &&
			num(a, "servings") == 2 && num(a, "serving_clicks") == 1 && num(a, "clicks_per_serving") == 0.5 &&
			num(a, "invalid") == 5
	})
	c.analytics("timeframe=1h&ad_id=car-launch-20s", func(a map[string]any) bool {
		return num(a, "impressions") == 0 && num(a, "starts") == 0 && num(a, "clicks") == 0 && num(a, "invalid") == 1
	})

	// The archive keeps every event with its serving, and the invalid ones
	// with their reason.
	for p := range d.cfg.Partitions {
		waitAcknowledged(t, d.js, store.EventStreamName(p), aggregator.ArchiveConsumerName)
	}
	var rows []struct {
		Type          string `bun:"type"`
		ErrorCode     int    `bun:"error_code"`
		InvalidReason string `bun:"invalid_reason"`
	}
	for _, sv := range []string{serving[0], doc2.texts["AdServingId"][0]} {
		rows = nil
		if err := d.db.NewSelect().Table("events").Column("type", "error_code").
			ColumnExpr("coalesce(invalid_reason, '') AS invalid_reason").
			Where("serving_id = ?", sv).Order("type").Scan(context.Background(), &rows); err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, r := range rows {
			got = append(got, fmt.Sprintf("%s/%d/%s", r.Type, r.ErrorCode, r.InvalidReason))
		}
		// The skip forged from the complete pixel is not among them: a
		// forged pixel names no serving.
		want := "click/0/ complete/0/ firstQuartile/0/ impression/0/ midpoint/0/ start/0/ thirdQuartile/0/"
		if sv != serving[0] {
			want = "error/405/ impression/0/"
		}
		if strings.Join(got, " ") != want {
			t.Errorf("archived events of serving %s: %v, want %s", sv, got, want)
		}
	}
	var invalid, expiredRows int
	if err := d.db.NewSelect().Table("events").ColumnExpr("count(*)").
		Where("invalid_reason = ?", "signature").Scan(context.Background(), &invalid); err != nil {
		t.Fatal(err)
	}
	if err := d.db.NewSelect().Table("events").ColumnExpr("count(*)").
		Where("invalid_reason = ? AND serving_id = ? AND event_id = ?", "signature", expired.ServingID, expired.ServingID+".start.expired").
		Scan(context.Background(), &expiredRows); err != nil {
		t.Fatal(err)
	}
	if invalid != 6 || expiredRows != 1 {
		t.Errorf("%d events archived as invalid for their signature (want 6), %d of them the expired serving's (want 1)", invalid, expiredRows)
	}

	// No ad: the empty VAST document.
	resp, err = http.Get(base + "/vast/no-such-ad")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || strings.Contains(string(body), "<Ad") || !strings.Contains(string(body), "<VAST") {
		t.Fatalf("unknown ad: %d %s", resp.StatusCode, body)
	}
}

// TestDemoAdsVASTValidates: the document of every demo ad, and the pod of
// them all, with its macros filled in as a player requests it, is valid
// against the IAB's VAST 4.2
// schema (VAST_XSD, else ../shared/vast/vast_4.2.xsd beside the repository).
func TestDemoAdsVASTValidates(t *testing.T) {
	schema := os.Getenv("VAST_XSD")
	if schema == "" {
		schema = filepath.Join("..", "..", "..", "shared", "vast", "vast_4.2.xsd")
	}
	if _, err := os.Stat(schema); err != nil {
		t.Fatalf("the VAST 4.2 schema: %v; point VAST_XSD at vast_4.2.xsd from github.com/InteractiveAdvertisingBureau/vast (scripts/test finds it beside the repository)", err)
	}
	if _, err := exec.LookPath("xmllint"); err != nil {
		t.Fatal("xmllint is missing: install libxml2-utils (scripts/test does)")
	}
	d := startTestDaemon(t, testEnv(testDataDir(t)))
	base := "http://" + d.httpAddr()
	pod := "?ad_id=summer-sale-15s&ad_id=new-phone-30s&ad_id=coffee-6s&ad_id=car-launch-20s&ad_id=no-such-ad"
	for _, id := range []string{"summer-sale-15s", "new-phone-30s", "coffee-6s", "car-launch-20s", "no-such-ad", pod} {
		path := "/vast/" + id
		if id == pod {
			path, id = "/vast"+pod, "pod"
		}
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		f := filepath.Join(t.TempDir(), id+".xml")
		if err := os.WriteFile(f, []byte(fill(string(body), "00:00:01.000")), 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("xmllint", "--noout", "--schema", schema, f).CombinedOutput(); err != nil {
			t.Errorf("%s: %v\n%s\n%s", id, err, out, body)
		}
	}
}
