// Package rollup holds the rollup values and their arithmetic, with no I/O:
// the resolutions and their key layout (Layout, Unit.Locate), the tiling of a
// query window into the coarsest slots (Layout.Tile), a value's slots and
// codec (Rollup), visitor sets (Visitors: exact, then HyperLogLog) and the
// sum of any number of slots (Aggregate, Sum).
//
// It imports nothing of the module; store keeps the values in KV, the
// aggregator folds events into them, and the read side sums them.
package rollup
