package store

// DisableAtomicCommits makes r commit key by key, as against a server without
// atomic batches.
func (r *Rollups) DisableAtomicCommits() { r.atomic = false }
