package vast_test

import (
	"bytes"
	"encoding/xml"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/admetric/admetric/api/vast"
)

// schemaPath returns the IAB's VAST 4.2 schema: the file VAST_XSD names
// (scripts/test sets it), else ../shared/vast/vast_4.2.xsd beside the repository,
// where AdMetric's build machines keep it. It fails t, saying where to get
// the file, when it is in neither place, and when xmllint is missing.
func schemaPath(t *testing.T) string {
	t.Helper()
	p := os.Getenv("VAST_XSD")
	if p == "" {
		// The test runs in api/vast: the repository's parent is three up.
		p = filepath.Join("..", "..", "..", "shared", "vast", "vast_4.2.xsd")
		if _, err := os.Stat(p); err != nil {
			t.Fatal("VAST_XSD is not set and ../shared/vast/vast_4.2.xsd is not beside the repository: " +
				"point VAST_XSD at the IAB's VAST 4.2 schema, vast_4.2.xsd, from github.com/InteractiveAdvertisingBureau/vast")
		}
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("VAST_XSD: %v", err)
	}
	if _, err := exec.LookPath("xmllint"); err != nil {
		t.Fatal("xmllint is missing: install libxml2-utils (scripts/test does)")
	}
	return p
}

// validate fails t unless doc is valid against the VAST 4.2 schema.
func validate(t *testing.T, schema string, doc []byte) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "vast.xml")
	if err := os.WriteFile(f, doc, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("xmllint", "--noout", "--schema", schema, f).CombinedOutput()
	if err != nil {
		t.Fatalf("xmllint: %v\n%s\ndocument:\n%s", err, out, doc)
	}
}

// track is a tracking URL as a player requests it: macros filled in.
func track(kind string) string {
	return "https://admetric.example.com/t/" + kind + "?ad=coffee-6s&sv=admetric-1&exp=1800000000&sig=abc_-XYZ&ph=00:00:03.000&ts=2026-12-07T08:15:07.127Z&cb=12345678"
}

func inlineAd() vast.Ad {
	var tracking []vast.Tracking
	for _, e := range []string{"start", "firstQuartile", "midpoint", "thirdQuartile", "complete", "skip"} {
		tracking = append(tracking, vast.Tracking{Event: e, URL: track(e)})
	}
	return vast.Ad{
		ID: "coffee-6s", Title: "Morning coffee <bumper> & more", Advertiser: "Bean & Co",
		ServingID: "admetric-0f9c8e2a-4b1d-4e5f-9a6b-7c8d9e0f1a2b", Duration: 6500 * time.Millisecond,
		Media:            &vast.Media{URL: "https://cdn.example.com/ads/coffee-6s.mp4?a=1&b=2", Type: "video/mp4", Width: 1280, Height: 720, Delivery: "progressive"},
		ImpressionURL:    track("impression"),
		ErrorURL:         "https://admetric.example.com/t/error?ad=coffee-6s&code=405",
		ClickThroughURL:  "https://admetric.example.com/c?ad=coffee-6s&sv=admetric-1",
		ClickTrackingURL: track("click"),
		Tracking:         tracking,
	}
}

// TestDocumentsValidate: an InLine ad, a Wrapper, two ads and no ad each
// give a document the IAB's VAST 4.2 schema accepts.
func TestDocumentsValidate(t *testing.T) {
	schema := schemaPath(t)
	wrapped := inlineAd()
	wrapped.ID, wrapped.Media, wrapped.WrappedTagURL = "tag-ad", nil, "https://tags.example.net/vast?id=7&x=[CACHEBUSTING]"
	wrapped.WrappedTagURL = strings.ReplaceAll(wrapped.WrappedTagURL, "[CACHEBUSTING]", "1")
	for _, tc := range []struct {
		name string
		ads  []vast.Ad
	}{
		{"inline", []vast.Ad{inlineAd()}},
		{"wrapper", []vast.Ad{wrapped}},
		{"two ads", []vast.Ad{inlineAd(), wrapped}},
		{"pod", func() []vast.Ad {
			first, second := inlineAd(), wrapped
			first.Sequence, second.Sequence = 1, 2
			return []vast.Ad{first, second}
		}()},
		{"no ad", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := vast.Write(&b, tc.ads...); err != nil {
				t.Fatal(err)
			}
			validate(t, schema, b.Bytes())
		})
	}
}

// TestDocumentContent reads a document back with a generic XML decoder (not
// this package's structs) and checks what a player relies on: every URL in
// CDATA and intact, the duration, the media file's attributes, the serving
// ID, and text escaped.
func TestDocumentContent(t *testing.T) {
	var b bytes.Buffer
	if err := vast.Write(&b, inlineAd()); err != nil {
		t.Fatal(err)
	}
	doc := b.String()
	for _, want := range []string{
		`<VAST version="4.2" xmlns="http://www.iab.com/VAST">`,
		`<![CDATA[` + track("start") + `]]>`,
		`<![CDATA[https://cdn.example.com/ads/coffee-6s.mp4?a=1&b=2]]>`,
		`<Duration>00:00:06.500</Duration>`,
		`<MediaFile delivery="progressive" type="video/mp4" width="1280" height="720">`,
		`<AdServingId>admetric-0f9c8e2a-4b1d-4e5f-9a6b-7c8d9e0f1a2b</AdServingId>`,
		`<AdTitle>Morning coffee &lt;bumper&gt; &amp; more</AdTitle>`,
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("document lacks %s:\n%s", want, doc)
		}
	}
	// Every element's text as a generic parser sees it.
	texts := map[string][]string{}
	dec := xml.NewDecoder(strings.NewReader(doc))
	var stack []string
	for {
		tok, err := dec.Token()
		if err != nil {
			break
		}
		switch v := tok.(type) {
		case xml.StartElement:
			stack = append(stack, v.Name.Local)
		case xml.EndElement:
			stack = stack[:len(stack)-1]
		case xml.CharData:
			if s := strings.TrimSpace(string(v)); s != "" {
				texts[stack[len(stack)-1]] = append(texts[stack[len(stack)-1]], s)
			}
		}
	}
	if got := texts["Tracking"]; len(got) != 6 || got[0] != track("start") || got[5] != track("skip") {
		t.Errorf("tracking URLs %v", got)
	}
	if got := texts["Impression"]; len(got) != 1 || got[0] != track("impression") {
		t.Errorf("impression URLs %v", got)
	}
	if got := texts["ClickTracking"]; len(got) != 1 || got[0] != track("click") {
		t.Errorf("click tracking %v", got)
	}
}

func TestWriteRefusesAnAdWithoutMediaOrTag(t *testing.T) {
	ad := inlineAd()
	ad.Media = nil
	if err := vast.Write(&bytes.Buffer{}, ad); err == nil {
		t.Fatal("an ad with neither media nor a wrapped tag was written")
	}
}
