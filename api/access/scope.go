package access

import (
	"slices"

	"github.com/gin-gonic/gin"
)

// Scope is the set of ads a request may read. The zero value is every ad.
type Scope struct {
	ads map[string]struct{} // nil: every ad
}

// Every is the scope of every ad.
func Every() Scope { return Scope{} }

// Only is the scope of ads alone (none when ads is empty).
func Only(ads ...string) Scope {
	s := Scope{ads: make(map[string]struct{}, len(ads))}
	for _, id := range ads {
		s.ads[id] = struct{}{}
	}
	return s
}

// All reports whether the scope covers every ad.
func (s Scope) All() bool { return s.ads == nil }

// Allows reports whether the scope covers ad id.
func (s Scope) Allows(id string) bool {
	if s.ads == nil {
		return true
	}
	_, ok := s.ads[id]
	return ok
}

// Filter returns the IDs of ids the scope covers, in their order; ids itself
// when it covers every ad.
func (s Scope) Filter(ids []string) []string {
	if s.ads == nil {
		return ids
	}
	return slices.DeleteFunc(slices.Clone(ids), func(id string) bool { return !s.Allows(id) })
}

// IDs returns the scope's ads, sorted; nil for every ad. The caller owns
// the slice.
func (s Scope) IDs() []string {
	if s.ads == nil {
		return nil
	}
	ids := make([]string, 0, len(s.ads))
	for id := range s.ads {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// scopeKey is the gin.Context key of the request's Scope.
type scopeKey struct{}

// ScopeOf returns the scope a Guard gave the request: every ad when no Guard
// stands before the route or read access is open and no token was given.
func ScopeOf(c *gin.Context) Scope {
	if v, ok := c.Get(scopeKey{}); ok {
		return v.(Scope)
	}
	return Every()
}

func setScope(c *gin.Context, s Scope) { c.Set(scopeKey{}, s) }
