// Package store is AdMetric's JetStream storage: the event stream and the
// dead-letter stream (stream.go), every subject they and the buckets use
// (subjects.go), and the rollup KV buckets (Rollups: create or update, load,
// commit with a checkpoint, replace, watch, last sequence).
//
// What it stores is defined elsewhere: the rollup values, their key layout
// and algebra in store/rollup (pure, no I/O); the PostgreSQL tables in
// store/postgres. The servers used in development and tests are in
// store/devserver, and store/storetest starts them for tests.
package store
