package access_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/admetric/admetric/api/access"
)

func TestBearerToken(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		header, token string
		ok            bool
	}{
		{"Bearer abc", "abc", true},
		{"bearer abc", "abc", true},
		{"BEARER abc", "abc", true},
		{"Bearer   abc", "abc", true},
		{"", "", false},
		{"Bearer", "", false},
		{"Bearer ", "", false},
		{"Basic YWxhZGRpbjpvcGVuc2VzYW1l", "", false},
		{"Bearerabc", "", false},
		{"Bearer abc def", "", false},
		{"Bearer abc\tdef", "", false},
		{"Token abc", "", false},
	} {
		token, ok := access.BearerToken(tc.header)
		if token != tc.token || ok != tc.ok {
			t.Errorf("BearerToken(%q) = %q, %v; want %q, %v", tc.header, token, ok, tc.token, tc.ok)
		}
	}
}

func TestScopedTokens(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for range 100 {
		token, hash := access.NewToken()
		if !access.IsScopedToken(token) || hash != access.HashToken(token) || seen[token] {
			t.Fatalf("NewToken = %q: scoped %v, hash matches %v, repeat %v", token, access.IsScopedToken(token), hash == access.HashToken(token), seen[token])
		}
		seen[token] = true
	}
	good, _ := access.NewToken()
	for _, tc := range []struct {
		token string
		ok    bool
	}{
		{good, true},
		{"amr_" + strings.Repeat("A", 43), true},
		{"amr_" + strings.Repeat("-", 42) + "w", true},
		{"", false},
		{"amr_", false},
		{good[:len(good)-1], false},
		{good + "A", false},
		{"xyz_" + good[4:], false},
		{"amr_" + strings.Repeat("A", 42) + "=", false},
		{"amr_" + strings.Repeat("+", 43), false},
		{"amr_" + strings.Repeat("A", 42) + "B", false}, // non-canonical: the last character's low bits must be zero
		{"the-shared-analytics-token", false},
	} {
		if got := access.IsScopedToken(tc.token); got != tc.ok {
			t.Errorf("IsScopedToken(%q) = %v, want %v", tc.token, got, tc.ok)
		}
	}
}

func TestScope(t *testing.T) {
	t.Parallel()
	ids := []string{"d", "a", "c", "b"}
	for _, tc := range []struct {
		name    string
		scope   access.Scope
		all     bool
		filter  []string
		scopeID []string
	}{
		{"every ad", access.Every(), true, ids, nil},
		{"zero value", access.Scope{}, true, ids, nil},
		{"some", access.Only("c", "a", "zz"), false, []string{"a", "c"}, []string{"a", "c", "zz"}},
		{"none", access.Only(), false, []string{}, []string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if tc.scope.All() != tc.all {
				t.Errorf("All = %v, want %v", tc.scope.All(), tc.all)
			}
			in := slices.Clone(ids)
			if got := tc.scope.Filter(in); !slices.Equal(got, tc.filter) {
				t.Errorf("Filter(%v) = %v, want %v", ids, got, tc.filter)
			}
			if !slices.Equal(in, ids) {
				t.Errorf("Filter changed its argument: %v", in)
			}
			if got := tc.scope.IDs(); !slices.Equal(got, tc.scopeID) || (got == nil) != (tc.scopeID == nil) {
				t.Errorf("IDs = %#v, want %#v", got, tc.scopeID)
			}
			for _, id := range ids {
				if got, want := tc.scope.Allows(id), slices.Contains(tc.filter, id); got != want {
					t.Errorf("Allows(%q) = %v, want %v", id, got, want)
				}
			}
		})
	}
}
