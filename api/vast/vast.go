// Package vast writes the VAST 4.2 documents AdMetric serves to video
// players: an InLine ad naming the ad's media file, or a Wrapper around a
// third party's VAST tag, each with AdMetric's impression, tracking, click
// and error URLs (every URL in CDATA), or the empty document that tells a
// player there is no ad. It knows nothing of where the URLs point: the
// caller builds them (signed, see package pixel).
//
// It imports nothing of the module.
package vast

import (
	"encoding/xml"
	"fmt"
	"io"
	"time"
)

// Version is the VAST version of the documents.
const Version = "4.2"

// namespace is VAST's XML namespace, which the IAB's schema requires.
const namespace = "http://www.iab.com/VAST"

// Ad is what one ad of a document says.
type Ad struct {
	ID         string
	Title      string
	Advertiser string // may be empty
	// ServingID is the AdServingId of this response (InLine only: VAST 4.2
	// has no AdServingId in a Wrapper; its URLs carry it anyway).
	ServingID string
	Duration  time.Duration
	// Media is the ad's media file; nil for a Wrapper.
	Media *Media
	// WrappedTagURL, when set, makes the ad a Wrapper around that tag.
	WrappedTagURL string
	// Sequence is the ad's place, from 1, in an ad pod (ads a player plays
	// one after the other); 0 for a stand-alone ad.
	Sequence int

	ImpressionURL string
	ErrorURL      string
	// ClickThroughURL is where a click takes the viewer (InLine only);
	// ClickTrackingURL records the click.
	ClickThroughURL  string
	ClickTrackingURL string
	Tracking         []Tracking
}

// Media is a media file of an InLine ad.
type Media struct {
	URL      string
	Type     string // MIME type
	Width    int
	Height   int
	Delivery string // "progressive" or "streaming"
}

// Tracking is one <Tracking> URL: fired by the player at Event (start,
// firstQuartile, midpoint, thirdQuartile, complete, skip, ...).
type Tracking struct {
	Event string
	URL   string
}

// Write writes a VAST document of ads to w: the empty document (no ad) when
// there is none. It fails only when w does, or when an ad is neither InLine
// (Media set) nor Wrapper (WrappedTagURL set).
func Write(w io.Writer, ads ...Ad) error {
	doc := document{Version: Version, Namespace: namespace}
	for i := range ads {
		el, err := adElement(&ads[i])
		if err != nil {
			return err
		}
		doc.Ads = append(doc.Ads, el)
	}
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return fmt.Errorf("vast: write: %w", err)
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", " ")
	if err := enc.Encode(doc); err != nil {
		return fmt.Errorf("vast: write: %w", err)
	}
	if _, err := io.WriteString(w, "\n"); err != nil {
		return fmt.Errorf("vast: write: %w", err)
	}
	return nil
}

func adElement(a *Ad) (adEl, error) {
	base := adBase{
		AdSystem:   adSystem{Version: "1", Name: "AdMetric"},
		Error:      uri{URL: a.ErrorURL},
		Impression: impression{ID: "admetric", URL: a.ImpressionURL},
	}
	tracking := make([]trackingEl, len(a.Tracking))
	for i, t := range a.Tracking {
		tracking[i] = trackingEl(t)
	}
	switch {
	case a.WrappedTagURL != "":
		return adEl{ID: a.ID, Sequence: a.Sequence, Wrapper: &wrapper{
			adBase: base,
			Creatives: wrapperCreatives{Creative: []wrapperCreative{{
				ID: a.ID,
				Linear: wrapperLinear{
					TrackingEvents: trackingEvents{Tracking: tracking},
					VideoClicks:    &wrapperClicks{ClickTracking: clickURL{ID: "admetric", URL: a.ClickTrackingURL}},
				},
			}}},
			VASTAdTagURI: uri{URL: a.WrappedTagURL},
		}}, nil
	case a.Media != nil:
		m := a.Media
		return adEl{ID: a.ID, Sequence: a.Sequence, InLine: &inline{
			adBase:      base,
			AdServingID: a.ServingID,
			AdTitle:     a.Title,
			Advertiser:  a.Advertiser,
			Creatives: inlineCreatives{Creative: []inlineCreative{{
				ID:   a.ID,
				AdID: a.ID,
				Linear: inlineLinear{
					TrackingEvents: trackingEvents{Tracking: tracking},
					Duration:       duration(a.Duration),
					MediaFiles: mediaFiles{MediaFile: []mediaFile{{
						Delivery: m.Delivery, Type: m.Type, Width: m.Width, Height: m.Height, URL: m.URL,
					}}},
					VideoClicks: &inlineClicks{
						ClickTracking: clickURL{ID: "admetric", URL: a.ClickTrackingURL},
						ClickThrough:  clickURL{ID: "admetric", URL: a.ClickThroughURL},
					},
				},
				UniversalAdID: universalAdID{Registry: "unknown", Value: a.ID},
			}}},
		}}, nil
	}
	return adEl{}, fmt.Errorf("vast: ad %q has neither a media file nor a wrapped tag", a.ID)
}

// duration formats d as VAST's HH:MM:SS.mmm.
func duration(d time.Duration) string {
	ms := d.Milliseconds()
	return fmt.Sprintf("%02d:%02d:%02d.%03d", ms/3_600_000, ms/60_000%60, ms/1000%60, ms%1000)
}

// The document's elements, in the order the IAB's schema requires.

type document struct {
	XMLName   xml.Name `xml:"VAST"`
	Version   string   `xml:"version,attr"`
	Namespace string   `xml:"xmlns,attr"`
	Ads       []adEl   `xml:"Ad"`
}

type adEl struct {
	ID       string   `xml:"id,attr"`
	Sequence int      `xml:"sequence,attr,omitempty"`
	InLine   *inline  `xml:"InLine,omitempty"`
	Wrapper  *wrapper `xml:"Wrapper,omitempty"`
}

type adBase struct {
	AdSystem   adSystem   `xml:"AdSystem"`
	Error      uri        `xml:"Error"`
	Impression impression `xml:"Impression"`
}

type adSystem struct {
	Version string `xml:"version,attr,omitempty"`
	Name    string `xml:",chardata"`
}

type uri struct {
	URL string `xml:",cdata"`
}

type impression struct {
	ID  string `xml:"id,attr,omitempty"`
	URL string `xml:",cdata"`
}

type inline struct {
	adBase
	AdServingID string          `xml:"AdServingId"`
	AdTitle     string          `xml:"AdTitle"`
	Advertiser  string          `xml:"Advertiser,omitempty"`
	Creatives   inlineCreatives `xml:"Creatives"`
}

type inlineCreatives struct {
	Creative []inlineCreative `xml:"Creative"`
}

type inlineCreative struct {
	ID            string        `xml:"id,attr,omitempty"`
	AdID          string        `xml:"adId,attr,omitempty"`
	Linear        inlineLinear  `xml:"Linear"`
	UniversalAdID universalAdID `xml:"UniversalAdId"`
}

type universalAdID struct {
	Registry string `xml:"idRegistry,attr"`
	Value    string `xml:",chardata"`
}

type inlineLinear struct {
	TrackingEvents trackingEvents `xml:"TrackingEvents"`
	Duration       string         `xml:"Duration"`
	MediaFiles     mediaFiles     `xml:"MediaFiles"`
	VideoClicks    *inlineClicks  `xml:"VideoClicks,omitempty"`
}

type trackingEvents struct {
	Tracking []trackingEl `xml:"Tracking"`
}

type trackingEl struct {
	Event string `xml:"event,attr"`
	URL   string `xml:",cdata"`
}

type mediaFiles struct {
	MediaFile []mediaFile `xml:"MediaFile"`
}

type mediaFile struct {
	Delivery string `xml:"delivery,attr"`
	Type     string `xml:"type,attr"`
	Width    int    `xml:"width,attr"`
	Height   int    `xml:"height,attr"`
	URL      string `xml:",cdata"`
}

type inlineClicks struct {
	ClickTracking clickURL `xml:"ClickTracking"`
	ClickThrough  clickURL `xml:"ClickThrough"`
}

type clickURL struct {
	ID  string `xml:"id,attr,omitempty"`
	URL string `xml:",cdata"`
}

type wrapper struct {
	adBase
	Creatives    wrapperCreatives `xml:"Creatives"`
	VASTAdTagURI uri              `xml:"VASTAdTagURI"`
}

type wrapperCreatives struct {
	Creative []wrapperCreative `xml:"Creative"`
}

type wrapperCreative struct {
	ID     string        `xml:"id,attr,omitempty"`
	Linear wrapperLinear `xml:"Linear"`
}

type wrapperLinear struct {
	TrackingEvents trackingEvents `xml:"TrackingEvents"`
	VideoClicks    *wrapperClicks `xml:"VideoClicks,omitempty"`
}

type wrapperClicks struct {
	ClickTracking clickURL `xml:"ClickTracking"`
}
