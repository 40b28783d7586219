// Package devserver runs the servers AdMetric uses in development and tests
// inside or beside its own process: an embedded nats-server with JetStream
// (StartNATS) and a private PostgreSQL started from the machine's binaries
// (StartPostgres). Neither is meant for production: both listen on
// 127.0.0.1 and ask no password.
//
// It imports nothing of the module; store/storetest builds test helpers on it.
package devserver
