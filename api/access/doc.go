// Package access decides who may read what on the read side: the shared
// analytics token, the admin token, and scoped read tokens, each of which
// lets its holder read a set of ads and no others.
//
// A Guard in front of a read route puts the request's Scope in its context;
// the handlers behind it ask ScopeOf which ads they may answer about. The
// scoped tokens live in PostgreSQL, hashed (SHA-256), and in memory (Tokens),
// refreshed from the table; TokenHandlers manage them with the admin token.
//
// It imports api/respond, the event schema (ad ID rules) and store/postgres.
package access
