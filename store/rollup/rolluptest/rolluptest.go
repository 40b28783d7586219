// Package rolluptest holds helpers for tests that build and compare rollup
// values outside package rollup.
package rolluptest

import (
	"slices"
	"testing"
	"time"

	"github.com/admetric/admetric/store/rollup"
)

// Retentions are the retentions the tests use: the service's defaults
// (72 hours of minutes, 100 days of hours, 5 years of days).
var Retentions = rollup.Retentions{Minute: 72 * time.Hour, Hour: 2400 * time.Hour, Day: 43800 * time.Hour}

// Layout is the layout of Retentions. Callers must not modify it.
var Layout = rollup.NewLayout(Retentions)

// Hash spreads i over 64 bits (splitmix64), standing in for the
// SHA-256-derived visitor hashes of production: HyperLogLog needs well-mixed
// hashes, and small integers used as hashes would all land in one register.
func Hash(i uint64) uint64 {
	z := i + 0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// Slot returns a slot with counters c and the visitors Hash(from) through
// Hash(to-1) (none when from == to).
func Slot(c rollup.Counters, from, to uint64) *rollup.Slot {
	s := &rollup.Slot{Counters: c}
	for i := from; i < to; i++ {
		s.AddVisitor(Hash(i))
	}
	return s
}

// Sample is a rollup exercising every part of the encoding: a slot without
// visitors, one with an exact set, one with a sketch.
func Sample() *rollup.Rollup {
	r := rollup.New()
	r.MaxSeq = 123456789
	r.Slots[0] = Slot(rollup.Counters{Impressions: 1}, 0, 0)
	r.Slots[7] = Slot(rollup.Counters{
		Impressions: 1, Clicks: 2, Starts: 3, FirstQuartiles: 4, Midpoints: 5,
		ThirdQuartiles: 6, Completes: 7, Skips: 8, PlaybackMillis: 9, PlaybackCount: 10,
		Errors: 3, Servings: 1, ServingClicks: 2, Invalid: 4,
	}, 0, 10)
	r.Slots[7].ErrorCodes = rollup.CodeCounts{{Code: 0, N: 1}, {Code: 402, N: 2}}
	r.Slots[59] = Slot(rollup.Counters{Clicks: 300, PlaybackMillis: 1 << 40, PlaybackCount: 300}, 100, 100+2*rollup.ExactVisitors)
	return r
}

// Equal fails t unless got holds what want holds: the same MaxSeq, slot
// indices, counters, and visitor sets of equal counts. Sketch encodings are
// not canonical, so sets are compared by their counts.
func Equal(t testing.TB, got, want *rollup.Rollup) {
	t.Helper()
	if got.MaxSeq != want.MaxSeq {
		t.Errorf("MaxSeq = %d, want %d", got.MaxSeq, want.MaxSeq)
	}
	if len(got.Slots) != len(want.Slots) {
		t.Errorf("%d slots, want %d", len(got.Slots), len(want.Slots))
	}
	for i, ws := range want.Slots {
		gs, ok := got.Slots[i]
		if !ok {
			t.Errorf("slot %d missing", i)
			continue
		}
		if gs.Counters != ws.Counters {
			t.Errorf("slot %d counters = %+v, want %+v", i, gs.Counters, ws.Counters)
		}
		if !slices.Equal(gs.ErrorCodes, ws.ErrorCodes) {
			t.Errorf("slot %d error codes = %v, want %v", i, gs.ErrorCodes, ws.ErrorCodes)
		}
		if (gs.Visitors == nil) != (ws.Visitors == nil) {
			t.Errorf("slot %d: visitors present = %v, want %v", i, gs.Visitors != nil, ws.Visitors != nil)
			continue
		}
		if g, w := gs.Visitors.Count(), ws.Visitors.Count(); g != w {
			t.Errorf("slot %d: %d visitors, want %d", i, g, w)
		}
	}
}
