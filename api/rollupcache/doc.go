// Package rollupcache is the analytics read side's memory: a byte-bounded
// cache of decoded rollups in front of the rollup buckets, kept fresh by
// watches of them (Cache), with range sums of slot runs, and the snapshot
// file that answers while the buckets are unreachable (Snapshot,
// SnapshotFile).
//
// Files by part: cache.go the Cache, its reads and Warm; rangesum.go the
// range sums and the slot revisions they rest on; watch.go Run and the
// bucket watches; otter.go and metrics.go the otter caches and the
// Prometheus metrics; snapshot.go the snapshot file.
//
// Of this module it may import store and store/rollup only; today it needs
// store/rollup alone, the buckets coming in as a Source (*store.Rollups).
package rollupcache
