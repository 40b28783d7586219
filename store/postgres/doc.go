// Package postgres is AdMetric's PostgreSQL access through bun: the
// connection (Open), the embedded SQL migrations (Migrate), the ads table
// (Ads), the scoped read tokens (ReadTokens) and the events archive (Archive).
//
// It imports nothing of the module.
package postgres
