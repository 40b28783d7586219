package rollup

import (
	"testing"
	"time"
)

func TestSettledKey(t *testing.T) {
	t.Parallel()
	k := SettledKey("ad-1.2026120718")
	if base, ok := SettledOf(k); !ok || base != "ad-1.2026120718" {
		t.Errorf("SettledOf(%q) = %q, %v", k, base, ok)
	}
	for _, key := range []string{"ad-1.2026120718", CheckpointKey(3)} {
		if _, ok := SettledOf(key); ok {
			t.Errorf("SettledOf(%q) says it is a settled key", key)
		}
	}
}

func TestSettledSlots(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 12, 7, 18, 42, 30, 0, time.UTC)
	tests := []struct {
		name string
		u    Unit
		key  string
		want int
	}{
		{"the current hour: the minutes before the current one", Minute, "ad.2026120718", 42},
		{"an earlier hour: all", Minute, "ad.2026120717", 60},
		{"a later hour: none", Minute, "ad.2026120719", 0},
		{"the current day: the hours before the current one", Hour, "ad.20261207", 18},
		{"yesterday: all", Hour, "ad.20261206", 24},
		{"the current month: the days before today", Day, "ad.202612", 6},
		{"last year: all", Day, "ad.202512", 31},
		{"next month: none", Day, "ad.202701", 0},
		{"no period", Minute, "ad", 0},
		{"a period of another width", Minute, "ad.20261207", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.u.SettledSlots(tt.key, at); got != tt.want {
				t.Errorf("%s.SettledSlots(%q) = %d, want %d", tt.u, tt.key, got, tt.want)
			}
		})
	}
}

func TestSettleMovesVisitorsBelowN(t *testing.T) {
	t.Parallel()
	r := New()
	for i := range 5 {
		s := r.Slot(i)
		s.Impressions = uint64(i + 1)
		for h := range 3 {
			s.AddVisitor(uint64(100*i + h + 1))
		}
	}
	r.MaxSeq = 77
	settled := New()
	settled.Slot(1).AddVisitor(101) // already moved once: merges, no double
	settled.Slot(1).AddVisitor(999)
	if got := r.HeldVisitors(3); got != 9 {
		t.Errorf("HeldVisitors(3) = %d, want 9", got)
	}
	below3 := func(i int, _ *Slot) bool { return i < 3 }
	if !r.HasVisitors(below3) {
		t.Error("HasVisitors: none below 3 before Settle")
	}
	moved, err := r.Settle(settled, below3)
	if err != nil || !moved {
		t.Fatalf("Settle = %v, %v", moved, err)
	}
	for i := range 5 {
		s := r.Slots[i]
		if s.Impressions != uint64(i+1) {
			t.Errorf("slot %d counters changed: %d impressions", i, s.Impressions)
		}
		if i < 3 && (s.Visitors != nil || settled.Slots[i].Visitors.Count() == 0) {
			t.Errorf("slot %d: visitors not moved", i)
		}
		if i >= 3 && (s.Visitors.Count() != 3 || settled.Slots[i] != nil) {
			t.Errorf("slot %d: visitors moved although it has not settled", i)
		}
	}
	if got := settled.Slots[1].Visitors.Count(); got != 4 {
		t.Errorf("settled slot 1 holds %d visitors, want 4 (3 moved, 1 of them there already, and 999)", got)
	}
	if settled.MaxSeq != 77 {
		t.Errorf("settled MaxSeq %d, want 77", settled.MaxSeq)
	}
	if r.HasVisitors(below3) {
		t.Error("HasVisitors: some below 3 after Settle")
	}
	if moved, _ := r.Settle(settled, below3); moved {
		t.Error("a second Settle moved something")
	}
	if settled.Slots[0].Counters != (Counters{}) {
		t.Error("settled slots hold counters")
	}

	// A reader adds both parts: each slot's union.
	for i, want := range []uint64{3, 4, 3, 3, 3} {
		agg := &Aggregate{}
		if err := agg.AddSlots(r, []int{i}); err != nil {
			t.Fatal(err)
		}
		if err := agg.AddSlots(settled, []int{i}); err != nil {
			t.Fatal(err)
		}
		if got := agg.UniqueVisitors(); got != want || agg.Impressions != uint64(i+1) {
			t.Errorf("slot %d read from both parts: %d visitors, %d impressions; want %d and %d", i, got, agg.Impressions, want, i+1)
		}
	}
}

func TestDropSlots(t *testing.T) {
	t.Parallel()
	r := New()
	for i := range 4 {
		r.Slot(i).Clicks = 1
	}
	if !r.DropSlots(func(i int) bool { return i%2 == 1 }) {
		t.Fatal("DropSlots dropped nothing")
	}
	if len(r.Slots) != 2 || r.Slots[0] == nil || r.Slots[2] == nil {
		t.Errorf("slots left: %v", r.Slots)
	}
	if r.DropSlots(func(i int) bool { return i > 10 }) {
		t.Error("DropSlots reports a drop of nothing")
	}
}

func TestVisitorsFull(t *testing.T) {
	t.Parallel()
	var v *Visitors
	if v.Full() {
		t.Error("a nil set is full")
	}
	v = &Visitors{}
	for i := range uint64(ExactVisitors - 1) {
		v.Insert(i + 1)
	}
	if v.Full() {
		t.Errorf("full at %d", ExactVisitors-1)
	}
	v.Insert(ExactVisitors)
	if !v.Full() {
		t.Errorf("not full at %d", ExactVisitors)
	}
	v.Insert(ExactVisitors + 1) // a sketch now
	if !v.Full() {
		t.Error("a sketch is not full")
	}
}
