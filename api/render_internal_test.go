package api

import (
	"testing"

	"github.com/admetric/admetric/store/rollup"
)

// Valid counts by default; with include_invalid, impressions, clicks and
// CTR count the invalid ones too; the reasons and the IVT rate either way.
func TestMetricsOfInvalidTraffic(t *testing.T) {
	t.Parallel()
	var a rollup.Aggregate
	if err := a.AddSlot(&rollup.Slot{Counters: rollup.Counters{
		Impressions: 80, Clicks: 4, Starts: 10, Completes: 6,
		Invalid: 25, InvalidImpressions: 20, InvalidClicks: 4,
		InvalidBot: 12, InvalidDuplicateClick: 3, InvalidRate: 7, InvalidClickWithoutImpression: 1, InvalidPlayback: 1, InvalidSignature: 1,
	}}); err != nil {
		t.Fatal(err)
	}
	reasons := InvalidCounts{Bot: 12, DuplicateClick: 3, Rate: 7, ClickWithoutImpression: 1, Playback: 1, Signature: 1}
	tests := []struct {
		include             bool
		impressions, clicks uint64
		ctr                 float64
	}{
		{false, 80, 4, 0.05},
		{true, 100, 8, 0.08},
	}
	for _, tc := range tests {
		m := metricsOf("ad", &a, tc.include)
		if m.Impressions != tc.impressions || m.Clicks != tc.clicks || m.CTR == nil || *m.CTR != tc.ctr {
			t.Errorf("include_invalid=%v: %d impressions, %d clicks, ctr %v; want %d, %d, %v", tc.include, m.Impressions, m.Clicks, m.CTR, tc.impressions, tc.clicks, tc.ctr)
		}
		if m.Invalid != 25 || m.InvalidByReason != reasons || m.IVTRate == nil || *m.IVTRate != 25.0/125 {
			t.Errorf("include_invalid=%v: invalid %d by reason %+v, ivt_rate %v; want 25, %+v, 0.2", tc.include, m.Invalid, m.InvalidByReason, m.IVTRate, reasons)
		}
		if m.Starts != 10 || m.Completes != 6 {
			t.Errorf("include_invalid=%v changed the quartiles: %+v", tc.include, m)
		}
	}
	if m := metricsOf("", &rollup.Aggregate{}, false); m.IVTRate != nil {
		t.Errorf("no events: ivt_rate %v, want null", *m.IVTRate)
	}
}
