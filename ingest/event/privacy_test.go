package event

import (
	"errors"
	"testing"
	"time"
)

func TestTruncateIP(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{"203.0.113.7", "203.0.113.0"},
		{"203.0.113.0", "203.0.113.0"},
		{"203.0.113.255", "203.0.113.0"},
		{"10.1.2.3", "10.1.2.0"},
		{"2001:db8:abcd:12:34::1", "2001:db8:abcd::"},
		{"2001:DB8:ABCD:FFFF:FFFF:FFFF:FFFF:FFFF", "2001:db8:abcd::"},
		{"2001:db8::1", "2001:db8::"},
		{"::1", "::"},
		{"fe80::1%eth0", "fe80::"},
		{"::ffff:203.0.113.7", "::ffff:203.0.113.0"},
		{"::ffff:cb00:7107", "::ffff:203.0.113.0"},
		{"", ""},
		{"not-an-ip", ""},
		{"203.0.113.7/24", ""},
		{"203.0.113", ""},
		{"1.2.3.4.5", ""},
	} {
		if got := TruncateIP(tc.in); got != tc.want {
			t.Errorf("TruncateIP(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestPseudonymizeKeepsTheIdentityOfTheFullAddress(t *testing.T) {
	t.Parallel()
	salt := []byte("salt")
	a := Event{IP: "203.0.113.7", UserAgent: "UA"}
	b := Event{IP: "203.0.113.8", UserAgent: "UA"}
	wantA, wantB := a.Identity(salt), b.Identity(salt)
	if wantA == wantB {
		t.Fatal("two addresses of one /24 hash alike")
	}
	a.Pseudonymize(salt)
	b.Pseudonymize(salt)
	if a.IP != "203.0.113.0" || b.IP != "203.0.113.0" {
		t.Fatalf("addresses after Pseudonymize: %q, %q", a.IP, b.IP)
	}
	if a.Identity(salt) != wantA || b.Identity(salt) != wantB {
		t.Fatalf("identities after Pseudonymize: %x %x, want %x %x", a.Identity(salt), b.Identity(salt), wantA, wantB)
	}
	if a.Identity([]byte("another salt")) != wantA {
		t.Fatal("a carried identity depends on the folding side's salt")
	}
	// Twice is once: the carried hash is kept, not recomputed from the /24.
	a.Pseudonymize(salt)
	if a.Identity(salt) != wantA {
		t.Fatal("a second Pseudonymize changed the identity")
	}
	var none Event
	none.Pseudonymize(salt)
	if none.Visitor != "" || none.IP != "" || none.Identity(salt) != 0 {
		t.Fatalf("an event without identity gained one: %+v", none)
	}
}

func TestVisitorField(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	ev := Event{EventID: "e", Type: Click, AdID: "a", Timestamp: now, IP: "203.0.113.7", UserAgent: "UA"}
	ev.Pseudonymize([]byte("s"))
	if len(ev.Visitor) != VisitorDigits {
		t.Fatalf("Visitor = %q", ev.Visitor)
	}
	b, err := ev.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	back, err := Decode(b)
	if err != nil || back.Visitor != ev.Visitor || back.IP != "203.0.113.0" {
		t.Fatalf("round trip: %+v, %v (JSON %s)", back, err, b)
	}
	for _, bad := range []string{"9F86D081884C7D65", "9f86", "9f86d081884c7d65aa", "zzzzzzzzzzzzzzzz"} {
		ev.Visitor = bad
		var fe *FieldError
		if err := ev.Validate(now, Limits{}); !errors.As(err, &fe) || fe.Field != "visitor" {
			t.Errorf("Validate with visitor %q = %v, want a visitor error", bad, err)
		}
	}
	if FormatVisitor(1) != "0000000000000001" || FormatVisitor(^uint64(0)) != "ffffffffffffffff" {
		t.Fatal("FormatVisitor")
	}
}
