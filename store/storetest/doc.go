// Package storetest gives tests throwaway servers, built on store/devserver:
// an embedded nats-server with JetStream (NATS, JetStream, EventStream) and a
// private PostgreSQL (Postgres, DB, TempDir). Each is stopped, and its files
// removed, through t.Cleanup; none skips a test: a server that cannot start
// fails it with the reason.
package storetest
