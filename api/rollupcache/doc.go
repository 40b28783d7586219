// Package rollupcache is the analytics read side's memory: a byte-bounded
// cache of decoded rollups in front of the rollup buckets, kept fresh by
// watches of them (Cache), with range sums of slot runs, and the snapshot
// file that answers while the buckets are unreachable (Snapshot,
// SnapshotFile).
//
// It imports store and store/rollup only.
package rollupcache
