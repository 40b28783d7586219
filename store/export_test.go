package store

// EnableAtomicCommits makes r commit in atomic batches, as on replicated
// buckets.
func (r *Rollups) EnableAtomicCommits() { r.atomic = true }
