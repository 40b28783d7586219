package aggregator

import (
	"testing"

	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/store/postgres"
)

func TestScrubAddress(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{`{"ip":"203.0.113.7","type":"click"}`, `{"ip":"203.0.113.0","type":"click"}`},
		{`{"IP":"2001:db8:1:2::3","type":"click"}`, `{"IP":"2001:db8:1::","type":"click"}`},
		{`{"ip":"203.0.113.7","Ip":"::ffff:203.0.113.7"}`, `{"Ip":"::ffff:203.0.113.0","ip":"203.0.113.0"}`},
		{`{"ip":"not an address 203.0.113.7","type":"click"}`, `{"type":"click"}`},
		{`{"ip":7,"type":"click"}`, `{"type":"click"}`},
		{`{"type":"click"}`, `{"type":"click"}`},
		{`{"ip":"203.0.113.7"`, ``},
		{`["203.0.113.7"]`, ``},
		{`not json 203.0.113.7`, ``},
	} {
		if got := string(scrubAddress([]byte(tc.in))); got != tc.want {
			t.Errorf("scrubAddress(%s) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

// TestRecordOfUsesTheArchivedVisitor: a rebuild counts the visitor hash the
// archive kept, not one of the truncated address.
func TestRecordOfUsesTheArchivedVisitor(t *testing.T) {
	t.Parallel()
	salt := []byte("salt")
	full := event.Event{IP: "203.0.113.7", UserAgent: "UA"}
	want := full.Identity(salt)
	row := postgres.ArchivedEvent{EventID: "e", Type: "click", AdID: "a", IP: "203.0.113.0", UserAgent: "UA", Visitor: int64(want)} // #nosec G115
	if got := recordOf(&row, salt).Visitor; got != want {
		t.Fatalf("visitor %x, want %x", got, want)
	}
	row.Visitor = 0
	truncated := event.Event{IP: "203.0.113.0", UserAgent: "UA"}
	if got := recordOf(&row, salt).Visitor; got != truncated.Identity(salt) {
		t.Fatalf("without an archived hash: %x", got)
	}
}
