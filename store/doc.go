// Package store owns what AdMetric keeps and the servers it keeps it in:
//
//   - PostgreSQL: the bun models, the embedded SQL migrations, the ads queries
//     (Ads), the in-memory ad catalog (Catalog) and the events archive (Archive);
//   - NATS JetStream: the event stream (EnsureStream) and the rollup buckets,
//     their key layout (Layout, Unit.Locate, Layout.Tile) and value codec (Rollup);
//   - the servers used in development and tests: an embedded nats-server
//     (StartEmbeddedNATS) and a private PostgreSQL run from the machine's
//     binaries (StartLocalPostgres). Package storetest starts them for tests.
//
// It imports nothing of the module but the event schema (ingest/event).
package store
