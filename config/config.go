// Package config holds AdMetric's configuration, read from environment
// variables.
//
// Every setting is one variable with a default (see Config for the list).
// Load reads them through a lookup function (os.LookupEnv in production, a
// map in tests), so the package keeps no global state and touches neither the
// process environment nor any file other than the secret files named by the
// *_FILE variables.
//
// A variable that is set to the empty string counts as unset and takes its
// default, except NATS_LISTEN, where an explicit empty value disables the
// embedded NATS listener, and the lists TRUSTED_PROXIES and
// CORS_ALLOWED_ORIGINS, where it is the empty list. Values are trimmed of
// surrounding whitespace, except the secrets DB_PASSWORD, ADMIN_TOKEN,
// ANALYTICS_TOKEN, VISITOR_SALT, PIXEL_SECRET, NATS_PASSWORD and NATS_PUBLISHER_PASSWORD,
// which are taken verbatim. Those and
// DATABASE_URL may instead be read from a file named
// by <NAME>_FILE (for example ADMIN_TOKEN_FILE=/run/secrets/admin_token); the
// file's content is trimmed of surrounding whitespace.
package config

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ErrInvalid is matched (errors.Is) by every error Load and Validate return
// about a setting: a value that does not parse, is out of range, conflicts
// with another setting, or names an unreadable secret file.
var ErrInvalid = errors.New("config: invalid value")

// redacted replaces a secret in LogValue's output.
const redacted = "[redacted]"

// Config is the whole service configuration. Zero value is not useful; use Load.
//
// Each field names its variable, default and rule; every duration must be
// greater than zero. Validate checks a Config built or changed by hand.
type Config struct {
	// HTTPAddr is the HTTP listen address, host:port (HTTP_ADDR, default ":8080").
	HTTPAddr string
	// DataDir holds the service's local state: the embedded NATS server's
	// JetStream store, the local PostgreSQL cluster, the generated visitor
	// salt (DATA_DIR, default "./data", not empty).
	DataDir string

	// NATSURL is the comma-separated list of NATS server URLs to connect to;
	// empty runs an embedded nats-server (NATS_URL, default "").
	NATSURL string
	// NATSListen is the client listen address of the embedded nats-server;
	// empty disables the listener (in-process connections only)
	// (NATS_LISTEN, default "127.0.0.1:4222").
	NATSListen string
	// NATSPassword is the password of AdMetric's own user ("admetric") on the
	// embedded nats-server, a secret; empty lets clients on a loopback
	// NATS_LISTEN in without credentials (as that user), and is refused with
	// a NATS_LISTEN beyond loopback (NATS_PASSWORD or NATS_PASSWORD_FILE,
	// default ""). With NATS_URL, credentials go in the URL.
	NATSPassword string
	// NATSPublisherPassword, when set, adds the publish-only user
	// ("publisher") to the embedded nats-server: other services publish
	// events with it and can do nothing else (NATS_PUBLISHER_PASSWORD or
	// NATS_PUBLISHER_PASSWORD_FILE, default "").
	NATSPublisherPassword string
	// NATSSyncAlways makes the embedded server fsync every JetStream write
	// (NATS_SYNC_ALWAYS, default false).
	NATSSyncAlways bool
	// NATSReplicas is the replica count of the event stream and the rollup
	// buckets: 1 for a single server, 3 for a production cluster
	// (NATS_REPLICAS, default 1, 1..5). Applied at every start.
	NATSReplicas int
	// LeaderSpreadInterval is how often an aggregator on a cluster
	// (NATS_REPLICAS above 1) looks at the leaders of the partition streams
	// and moves one from a server that leads more than its share
	// (LEADER_SPREAD_INTERVAL, default 30s).
	LeaderSpreadInterval time.Duration
	// RollupCommits is how the rollup writers commit: "atomic" in atomic
	// batches (all of a batch's keys of a bucket and its checkpoint, or
	// none), "keys" each key alone, pipelined, the checkpoint last (exact all
	// the same: every rollup records the highest sequence in it), "auto" atomic
	// batches with NATS_REPLICAS above 1 and keys with one replica, where
	// nats-server stages every atomic batch on disk at a high cost
	// (ROLLUP_COMMITS, default auto).
	RollupCommits string
	// Partitions is how many partition streams ads are spread over (the
	// server's subject mapping must say the same: `admetric nats-config`);
	// each has one active rollup writer, so it bounds how many aggregator
	// processes share the work (PARTITIONS, default 8, 1..1024). A start with
	// another number than the streams were made for is refused.
	Partitions int

	// DatabaseURL is a PostgreSQL connection URL; when set, the DB_* settings
	// are not used to connect (DATABASE_URL or DATABASE_URL_FILE, default "").
	DatabaseURL string
	// DBHost is the PostgreSQL host; empty (with DatabaseURL empty) makes the
	// service start its own PostgreSQL (DB_HOST, default "").
	DBHost string
	// DBPort is the PostgreSQL port, 1..65535 (DB_PORT, default 5432).
	DBPort int
	// DBUser is the PostgreSQL user (DB_USER, default "postgres"); not empty
	// unless DatabaseURL is set.
	DBUser string
	// DBPassword is the PostgreSQL password, a secret
	// (DB_PASSWORD or DB_PASSWORD_FILE, default "").
	DBPassword string
	// DBName is the PostgreSQL database name (DB_NAME, default "admetric");
	// not empty unless DatabaseURL is set.
	DBName string
	// DBSSLMode is the libpq sslmode: disable, allow, prefer, require,
	// verify-ca or verify-full (DB_SSLMODE, default "disable").
	DBSSLMode string

	// AdminToken is the bearer token of the ad management API, a secret;
	// empty disables ad management (ADMIN_TOKEN or ADMIN_TOKEN_FILE, default "").
	AdminToken string
	// AnalyticsToken, when set, closes read access: GET /ads, GET /ads/:id
	// and GET /ads/analytics then need "Authorization: Bearer" with it, the
	// admin token or a scoped read token (POST /tokens). A secret of at least
	// 16 bytes; empty leaves reads open, for local development
	// (ANALYTICS_TOKEN or ANALYTICS_TOKEN_FILE, default "").
	AnalyticsToken string
	// ReadTokenRefresh is how often each API process reloads the scoped read
	// tokens from PostgreSQL: a token revoked through one process stops
	// working on the others within it (READ_TOKEN_REFRESH, default 2s).
	ReadTokenRefresh time.Duration
	// LogLevel is the minimum log level: debug, info, warn or error,
	// case-insensitive (LOG_LEVEL, default info).
	LogLevel slog.Level
	// LogFormat is the log output format: text or json (LOG_FORMAT, default text).
	LogFormat string
	// VisitorSalt salts the hash that identifies visitors, a secret; empty
	// makes the service generate and persist one
	// (VISITOR_SALT or VISITOR_SALT_FILE, default "").
	VisitorSalt string
	// PixelSecret keys the signatures of VAST tracking URLs, a secret; empty
	// makes the service generate and persist one. Every API process must
	// share it (PIXEL_SECRET or PIXEL_SECRET_FILE, default "").
	PixelSecret string
	// TrustedProxies lists the IP addresses and CIDR prefixes of reverse
	// proxies whose forwarding headers are believed
	// (TRUSTED_PROXIES, comma-separated, default none).
	TrustedProxies []string
	// PublicURL is the scheme and host (and port) players reach the service
	// at, which VAST documents put in their tracking URLs; empty takes it from
	// each request's Host, which is wrong behind a TLS-terminating proxy
	// (PUBLIC_URL, e.g. https://ads.example.com, default "").
	PublicURL string
	// CORSAllowedOrigins are the browser origins whose pages may POST events
	// ("*" for any; origins such as https://player.example.com), answered
	// with CORS headers and without credentials (CORS_ALLOWED_ORIGINS,
	// comma-separated, default "*"; empty allows the service's own pages only).
	CORSAllowedOrigins []string

	// Abuse limits: per-client token buckets, keyed on the client address
	// (the connection's, or X-Forwarded-For's from TRUSTED_PROXIES); a
	// client over its limit is answered 429 with Retry-After.
	//
	// IntakeRateLimit is the events a second one client may post on average
	// to POST /ads/click, /ads/impression and /ads/events, where a batch
	// costs its events; 0 disables the limit. An ad server relaying many
	// players from one address needs a higher one, or none
	// (INTAKE_RATE_LIMIT, default 1000, 0..1000000).
	IntakeRateLimit int
	// IntakeRateBurst is the events one client may post at once, at least a
	// full batch (INTAKE_RATE_BURST, default 2000, 1..1000000).
	IntakeRateBurst int
	// PixelRateLimit is the requests a second one client may send on
	// average to the tracking pixels and click redirect, GET /t/:kind and
	// GET /c; 0 disables the limit (PIXEL_RATE_LIMIT, default 200,
	// 0..1000000).
	PixelRateLimit int
	// PixelRateBurst is the pixel requests one client may send at once
	// (PIXEL_RATE_BURST, default 400, 1..1000000).
	PixelRateBurst int
	// RateLimitMaxClients bounds the client addresses each limit remembers:
	// beyond it the least recently seen is forgotten (and starts again with
	// a full bucket). About 200 bytes each (RATE_LIMIT_MAX_CLIENTS, default
	// 100000, 1..10000000).
	RateLimitMaxClients int

	// MinuteRetention is how long per-minute rollups are kept
	// (ROLLUP_MINUTE_RETENTION, default 72h). Must not exceed HourRetention.
	MinuteRetention time.Duration
	// HourRetention is how long per-hour rollups are kept
	// (ROLLUP_HOUR_RETENTION, default 2400h, 100 days). Must not exceed DayRetention.
	HourRetention time.Duration
	// DayRetention is how long per-day rollups are kept
	// (ROLLUP_DAY_RETENTION, default 43800h, 5 years).
	DayRetention time.Duration
	// StreamMaxAge is how long the event stream keeps events, i.e. the
	// longest outage the archive can catch up from
	// (STREAM_MAX_AGE, default 168h, 7 days).
	StreamMaxAge time.Duration
	// DuplicateWindow is how long the stream remembers a Nats-Msg-Id to drop a
	// repeat: it must cover the replay of an event spooled after a publish that
	// timed out yet was stored (STREAM_DUPLICATE_WINDOW, default 20m). The
	// server keeps an entry per event in the window. Must not exceed
	// StreamMaxAge.
	DuplicateWindow time.Duration

	// SpoolMaxBytes bounds the local spool under DATA_DIR/spool that takes
	// events while NATS is unavailable; a full spool answers 503
	// (SPOOL_MAX_BYTES, default 1073741824, 1 GiB; at least 1048576, 1 MiB).
	SpoolMaxBytes int
	// PublishTimeout bounds the wait for a PubAck before an event is spooled
	// (PUBLISH_TIMEOUT, default 2s).
	PublishTimeout time.Duration
	// MaxPendingPublishes bounds the events awaiting their PubAck; beyond it
	// intake answers 503 (MAX_PENDING_PUBLISHES, default 4096, 1..1048576).
	MaxPendingPublishes int

	// CacheMaxBytes bounds the in-memory rollup cache that analytics read
	// through, its rollups and range sums (CACHE_MAX_BYTES, default
	// 268435456, 256 MiB; at least 1048576, 1 MiB).
	CacheMaxBytes int
	// CacheIdle drops rollups from the cache when no query read them for this
	// long (CACHE_IDLE, default 15m).
	CacheIdle time.Duration
	// SnapshotInterval is how often the cached rollups are written to
	// DATA_DIR/analytics.snapshot, which answers (marked stale) while NATS is
	// unreachable (SNAPSHOT_INTERVAL, default 10s).
	SnapshotInterval time.Duration

	// ShutdownTimeout bounds a graceful shutdown (SHUTDOWN_TIMEOUT, default 10s).
	ShutdownTimeout time.Duration
	// CatalogRefresh is how often the in-memory ad catalog is reloaded from
	// PostgreSQL (CATALOG_REFRESH, default 10s).
	CatalogRefresh time.Duration

	// IVTRules turns on the invalid-traffic rules the rollup writers apply:
	// bot, duplicate_click, rate, click_without_impression (IVT_RULES,
	// default true). The intake's (playback, signature) always apply.
	IVTRules bool
	// IVTDuplicateClickWindow: a visitor's repeat click on an ad within it
	// is a duplicate_click (IVT_DUPLICATE_CLICK_WINDOW, default 30s; at
	// least 1s, at most 1h).
	IVTDuplicateClickWindow time.Duration
	// IVTRatePerMinute: a visitor's events on an ad beyond it in a minute
	// are invalid, rate (IVT_RATE_PER_MINUTE, default 30; 1..100000).
	IVTRatePerMinute int
	// IVTBotPatterns are regular expressions (Go syntax) of user agents to
	// count as bots beyond the built-in list (IVT_BOT_PATTERNS,
	// comma-separated, so a pattern cannot hold a comma; default none).
	IVTBotPatterns []string

	// Privacy and retention.
	//
	// IPTruncate makes the intake compute each event's visitor hash from
	// the full address, then truncate the address (IPv4 to its /24, IPv6 to
	// its /48) before the event is published, spooled or logged; the
	// archiver does the same to events published straight to NATS before it
	// archives them. Unique visitors still count full addresses; the archive
	// can then tell a visitor's network only, not its host (for abuse
	// investigation, or a later re-hash under another salt, the address is
	// gone). The API and aggregator processes must then share VISITOR_SALT
	// (IP_TRUNCATE, default false).
	IPTruncate bool
	// ArchiveRetention is how long the PostgreSQL archive keeps raw events,
	// by their time; the monthly partitions wholly older are dropped, so
	// events are kept up to a month longer. 0 keeps them forever. A rebuild
	// re-folds only what the archive still holds (ARCHIVE_RETENTION, a
	// duration, also in days such as 395d; default 0, else at least 24h).
	ArchiveRetention time.Duration
}

// fieldError is the error type of every problem with one setting. Its
// message names the variable; it matches ErrInvalid and unwraps to its cause.
type fieldError struct {
	name string // the variable(s) at fault
	msg  string
	err  error // underlying cause, may be nil
}

func (e *fieldError) Error() string        { return "config: " + e.name + ": " + e.msg }
func (e *fieldError) Is(target error) bool { return target == ErrInvalid }
func (e *fieldError) Unwrap() error        { return e.err }

// invalidf returns a *fieldError about variable name.
func invalidf(name, format string, args ...any) error {
	return &fieldError{name: name, msg: fmt.Sprintf(format, args...)}
}

// option describes one environment variable: how Load reads it, the rule its
// value must meet and how LogValue shows it.
type option struct {
	name string
	def  string // default, in the variable's own syntax: the one place the code sets it
	// keepEmpty makes an explicitly empty value override the default.
	keepEmpty bool
	// verbatim keeps surrounding whitespace (secrets).
	verbatim bool
	// fromFile accepts <name>_FILE as an alternative source.
	fromFile bool
	// parse stores v, already defaulted, into c.
	parse func(c *Config, v string) error
	// check returns one error per way the field breaks the variable's own
	// rule, whether Load stored the value or a caller did; nil means every
	// value that parses is valid. Rules relating settings to each other are
	// in checkAcross.
	check func(c *Config) []error
	// value renders the setting for LogValue, redacting secrets.
	value func(c *Config) slog.Value
}

// options returns the table of variables, in LogValue's order; each entry
// holds its variable's default and its rule. It is a function rather than a
// package variable so that nothing global is mutable.
func options() []option {
	opts := []option{
		stringOpt("HTTP_ADDR", ":8080", func(c *Config) *string { return &c.HTTPAddr }, hostPort),
		stringOpt("DATA_DIR", "./data", func(c *Config) *string { return &c.DataDir }, nonEmpty),

		{
			name:  "NATS_URL",
			parse: func(c *Config, v string) error { c.NATSURL = v; return nil },
			check: checkValue("NATS_URL", func(c *Config) *string { return &c.NATSURL }, optional(natsURLs)),
			value: func(c *Config) slog.Value { return slog.StringValue(redactURLList(c.NATSURL)) },
		},
		{
			name:      "NATS_LISTEN",
			def:       "127.0.0.1:4222",
			keepEmpty: true, // empty disables the listener
			parse:     func(c *Config, v string) error { c.NATSListen = v; return nil },
			check:     checkValue("NATS_LISTEN", func(c *Config) *string { return &c.NATSListen }, optional(hostPort)),
			value:     func(c *Config) slog.Value { return slog.StringValue(c.NATSListen) },
		},
		secretOpt("NATS_PASSWORD", func(c *Config) *string { return &c.NATSPassword }, nil),
		secretOpt("NATS_PUBLISHER_PASSWORD", func(c *Config) *string { return &c.NATSPublisherPassword }, nil),
		boolOpt("NATS_SYNC_ALWAYS", "false", func(c *Config) *bool { return &c.NATSSyncAlways }),
		intOpt("NATS_REPLICAS", "1", func(c *Config) *int { return &c.NATSReplicas }, between(1, 5)),
		durationOpt("LEADER_SPREAD_INTERVAL", "30s", func(c *Config) *time.Duration { return &c.LeaderSpreadInterval }, positive),
		lowerOpt("ROLLUP_COMMITS", "auto", func(c *Config) *string { return &c.RollupCommits }, oneOf("auto", "atomic", "keys")),
		intOpt("PARTITIONS", "8", func(c *Config) *int { return &c.Partitions }, between(1, 1024)),
		durationOpt("STREAM_MAX_AGE", "168h", func(c *Config) *time.Duration { return &c.StreamMaxAge }, positive),
		// Also at most STREAM_MAX_AGE (checkAcross).
		durationOpt("STREAM_DUPLICATE_WINDOW", "20m", func(c *Config) *time.Duration { return &c.DuplicateWindow }, positive),
		intOpt("SPOOL_MAX_BYTES", "1073741824", func(c *Config) *int { return &c.SpoolMaxBytes }, atLeast(1<<20, "1 MiB")),
		durationOpt("PUBLISH_TIMEOUT", "2s", func(c *Config) *time.Duration { return &c.PublishTimeout }, positive),
		intOpt("MAX_PENDING_PUBLISHES", "4096", func(c *Config) *int { return &c.MaxPendingPublishes }, between(1, 1<<20)),
		intOpt("CACHE_MAX_BYTES", "268435456", func(c *Config) *int { return &c.CacheMaxBytes }, atLeast(1<<20, "1 MiB")),
		durationOpt("CACHE_IDLE", "15m", func(c *Config) *time.Duration { return &c.CacheIdle }, positive),
		durationOpt("SNAPSHOT_INTERVAL", "10s", func(c *Config) *time.Duration { return &c.SnapshotInterval }, positive),

		{
			name:     "DATABASE_URL",
			fromFile: true,
			parse:    func(c *Config, v string) error { c.DatabaseURL = v; return nil },
			check:    checkValue("DATABASE_URL", func(c *Config) *string { return &c.DatabaseURL }, optional(postgresURL)),
			value: func(c *Config) slog.Value {
				if c.DatabaseURL == "" {
					return slog.StringValue("")
				}
				return slog.StringValue(redactURL(c.DatabaseURL, false))
			},
		},
		stringOpt("DB_HOST", "", func(c *Config) *string { return &c.DBHost }, optional(hostName)),
		intOpt("DB_PORT", "5432", func(c *Config) *int { return &c.DBPort }, between(1, 65535)),
		// DB_USER and DB_NAME must not be empty without DATABASE_URL (checkAcross).
		stringOpt("DB_USER", "postgres", func(c *Config) *string { return &c.DBUser }, nil),
		secretOpt("DB_PASSWORD", func(c *Config) *string { return &c.DBPassword }, nil),
		stringOpt("DB_NAME", "admetric", func(c *Config) *string { return &c.DBName }, nil),
		lowerOpt("DB_SSLMODE", "disable", func(c *Config) *string { return &c.DBSSLMode },
			oneOf("disable", "allow", "prefer", "require", "verify-ca", "verify-full")),

		secretOpt("ADMIN_TOKEN", func(c *Config) *string { return &c.AdminToken }, nil),
		// Read access.
		secretOpt("ANALYTICS_TOKEN", func(c *Config) *string { return &c.AnalyticsToken }, optional(longSecret)),
		durationOpt("READ_TOKEN_REFRESH", "2s", func(c *Config) *time.Duration { return &c.ReadTokenRefresh }, positive),
		secretOpt("VISITOR_SALT", func(c *Config) *string { return &c.VisitorSalt }, nil),
		secretOpt("PIXEL_SECRET", func(c *Config) *string { return &c.PixelSecret }, optional(longSecret)),
		listOpt("TRUSTED_PROXIES", "", func(c *Config) *[]string { return &c.TrustedProxies }, ipOrPrefix),
		stringOpt("PUBLIC_URL", "", func(c *Config) *string { return &c.PublicURL }, optional(publicURL)),
		listOpt("CORS_ALLOWED_ORIGINS", "*", func(c *Config) *[]string { return &c.CORSAllowedOrigins }, origin),

		// Also minute <= hour <= day (checkAcross).
		durationOpt("ROLLUP_MINUTE_RETENTION", "72h", func(c *Config) *time.Duration { return &c.MinuteRetention }, positive),
		durationOpt("ROLLUP_HOUR_RETENTION", "2400h", func(c *Config) *time.Duration { return &c.HourRetention }, positive),
		durationOpt("ROLLUP_DAY_RETENTION", "43800h", func(c *Config) *time.Duration { return &c.DayRetention }, positive),

		levelOpt("LOG_LEVEL", "info", func(c *Config) *slog.Level { return &c.LogLevel }),
		lowerOpt("LOG_FORMAT", "text", func(c *Config) *string { return &c.LogFormat }, oneOf("text", "json")),
		durationOpt("SHUTDOWN_TIMEOUT", "10s", func(c *Config) *time.Duration { return &c.ShutdownTimeout }, positive),
		durationOpt("CATALOG_REFRESH", "10s", func(c *Config) *time.Duration { return &c.CatalogRefresh }, positive),
	}
	return append(opts, trafficOptions()...)
}

// trafficOptions are the settings of what traffic is taken and kept: the
// abuse limits at the door, the invalid-traffic rules, the privacy of
// addresses and the archive's retention.
func trafficOptions() []option {
	return []option{
		intOpt("INTAKE_RATE_LIMIT", "1000", func(c *Config) *int { return &c.IntakeRateLimit }, between(0, 1_000_000)),
		intOpt("INTAKE_RATE_BURST", "2000", func(c *Config) *int { return &c.IntakeRateBurst }, between(1, 1_000_000)),
		intOpt("PIXEL_RATE_LIMIT", "200", func(c *Config) *int { return &c.PixelRateLimit }, between(0, 1_000_000)),
		intOpt("PIXEL_RATE_BURST", "400", func(c *Config) *int { return &c.PixelRateBurst }, between(1, 1_000_000)),
		intOpt("RATE_LIMIT_MAX_CLIENTS", "100000", func(c *Config) *int { return &c.RateLimitMaxClients }, between(1, 10_000_000)),

		boolOpt("IVT_RULES", "true", func(c *Config) *bool { return &c.IVTRules }),
		durationOpt("IVT_DUPLICATE_CLICK_WINDOW", "30s", func(c *Config) *time.Duration { return &c.IVTDuplicateClickWindow }, durationBetween(time.Second, time.Hour)),
		intOpt("IVT_RATE_PER_MINUTE", "30", func(c *Config) *int { return &c.IVTRatePerMinute }, between(1, 100_000)),
		listOpt("IVT_BOT_PATTERNS", "", func(c *Config) *[]string { return &c.IVTBotPatterns }, regularExpression),

		boolOpt("IP_TRUNCATE", "false", func(c *Config) *bool { return &c.IPTruncate }),
		retentionOpt("ARCHIVE_RETENTION", "0", func(c *Config) *time.Duration { return &c.ArchiveRetention }),
	}
}

// notALevel is the message for a value that is not a level levelOpt spells.
const notALevel = "%q is not one of debug, info, warn, error"

// parseLevel parses levelOpt's spelling of a level, case-insensitively.
func parseLevel(s string) (slog.Level, bool) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, true
	case "info":
		return slog.LevelInfo, true
	case "warn":
		return slog.LevelWarn, true
	case "error":
		return slog.LevelError, true
	}
	return 0, false
}

// levelName is levelOpt's spelling of l; ok is false for a level that
// levelOpt cannot express, for which name is slog's spelling.
func levelName(l slog.Level) (name string, ok bool) {
	switch l {
	case slog.LevelDebug, slog.LevelInfo, slog.LevelWarn, slog.LevelError:
		return strings.ToLower(l.String()), true
	}
	return l.String(), false
}

// stringOpt is a string variable whose value must meet r (nil: any value).
func stringOpt(name, def string, field func(*Config) *string, r rule[string]) option {
	return option{
		name:  name,
		def:   def,
		parse: func(c *Config, v string) error { *field(c) = v; return nil },
		check: checkValue(name, field, r),
		value: func(c *Config) slog.Value { return slog.StringValue(*field(c)) },
	}
}

// lowerOpt is a case-insensitive keyword, stored in lower case; r sees the
// stored value, so a caller's upper-case value fails a oneOf rule.
func lowerOpt(name, def string, field func(*Config) *string, r rule[string]) option {
	o := stringOpt(name, def, field, r)
	o.parse = func(c *Config, v string) error { *field(c) = strings.ToLower(v); return nil }
	return o
}

// minSecretLen is the shortest secret PIXEL_SECRET may be: what the pixel
// signer takes (pixel.MinSecretLen), checked here so that a short one is a
// configuration error at start, not a failure after NATS and PostgreSQL are up.
const minSecretLen = 16

// longSecret checks that a secret has at least minSecretLen bytes.
func longSecret(name, v string) error {
	if len(v) < minSecretLen {
		return invalidf(name, "has %d bytes, want at least %d", len(v), minSecretLen)
	}
	return nil
}

// secretOpt is a secret: taken verbatim, readable from <name>_FILE,
// redacted by LogValue, default empty, checked by r unless r is nil.
func secretOpt(name string, field func(*Config) *string, r rule[string]) option {
	return option{
		name:     name,
		verbatim: true,
		fromFile: true,
		parse:    func(c *Config, v string) error { *field(c) = v; return nil },
		check:    checkValue(name, field, r),
		value:    func(c *Config) slog.Value { return slog.StringValue(redactSecret(*field(c))) },
	}
}

// intOpt is a decimal integer variable whose value must meet r.
func intOpt(name, def string, field func(*Config) *int, r rule[int]) option {
	return option{
		name: name,
		def:  def,
		parse: func(c *Config, v string) error {
			n, err := strconv.Atoi(v)
			if err != nil {
				return invalidf(name, "%q is not an integer", v)
			}
			*field(c) = n
			return nil
		},
		check: checkValue(name, field, r),
		value: func(c *Config) slog.Value { return slog.IntValue(*field(c)) },
	}
}

// listOpt is a comma-separated list, each entry checked by r. An explicitly
// empty value is the empty list, whatever the default.
func listOpt(name, def string, field func(*Config) *[]string, r rule[string]) option {
	return option{
		name:      name,
		def:       def,
		keepEmpty: true,
		parse:     func(c *Config, v string) error { *field(c) = splitList(v); return nil },
		check:     checkEach(name, field, r),
		value:     func(c *Config) slog.Value { return slog.StringValue(strings.Join(*field(c), ",")) },
	}
}

// boolOpt is a boolean variable in strconv.ParseBool's syntax.
func boolOpt(name, def string, field func(*Config) *bool) option {
	return option{
		name: name,
		def:  def,
		parse: func(c *Config, v string) error {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return invalidf(name, "%q is not a boolean (true or false)", v)
			}
			*field(c) = b
			return nil
		},
		value: func(c *Config) slog.Value { return slog.BoolValue(*field(c)) },
	}
}

// levelOpt is a log level spelled debug, info, warn or error,
// case-insensitively; a level set by hand must be one of those four.
func levelOpt(name, def string, field func(*Config) *slog.Level) option {
	return option{
		name: name,
		def:  def,
		parse: func(c *Config, v string) error {
			l, ok := parseLevel(v)
			if !ok {
				return invalidf(name, notALevel, v)
			}
			*field(c) = l
			return nil
		},
		check: checkValue(name, field, knownLevel),
		value: func(c *Config) slog.Value {
			s, _ := levelName(*field(c))
			return slog.StringValue(s)
		},
	}
}

// durationOpt is a duration variable in time.ParseDuration's syntax whose
// value must meet r.
func durationOpt(name, def string, field func(*Config) *time.Duration, r rule[time.Duration]) option {
	return option{
		name: name,
		def:  def,
		parse: func(c *Config, v string) error {
			d, err := time.ParseDuration(v)
			if err != nil {
				return invalidf(name, "%q is not a duration (such as 90s, 15m or 72h; there is no d unit)", v)
			}
			*field(c) = d
			return nil
		},
		check: checkValue(name, field, r),
		value: func(c *Config) slog.Value { return slog.DurationValue(*field(c)) },
	}
}

// Load reads the configuration through lookup (os.LookupEnv in production; a map in tests),
// applies defaults and returns Validate's error, if any.
//
// Problems found while parsing (a DB_PORT that is not a number, an
// unreadable ADMIN_TOKEN_FILE, ...) are joined with Validate's, so the error
// lists every problem at once. On error the returned *Config is nil.
// Variables Load does not know are ignored.
func Load(lookup func(string) (string, bool)) (*Config, error) {
	if lookup == nil {
		return nil, errors.New("config: Load: nil lookup function")
	}
	c := new(Config)
	var errs []error
	for _, o := range options() {
		v, set, err := o.lookup(lookup)
		if err == nil {
			if !o.verbatim {
				v = strings.TrimSpace(v)
			}
			if !set || (v == "" && !o.keepEmpty) {
				v = o.def
			}
			err = o.parse(c, v)
		}
		if err != nil {
			errs = append(errs, err)
			// Fall back to the default so that Validate does not report
			// the same variable a second time. Defaults always parse.
			_ = o.parse(c, o.def)
		}
	}
	errs = append(errs, c.validate()...)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

// lookup returns the raw value of o and whether it was set, reading
// <name>_FILE if o allows it. A variable set to the empty string does not
// count as set for the NAME / NAME_FILE conflict.
func (o option) lookup(lookup func(string) (string, bool)) (string, bool, error) {
	v, set := lookup(o.name)
	if !o.fromFile {
		return v, set, nil
	}
	fileVar := o.name + "_FILE"
	path, _ := lookup(fileVar)
	path = strings.TrimSpace(path)
	if path == "" {
		return v, set, nil
	}
	if v != "" {
		return "", false, invalidf(o.name, "both %s and %s are set; set only one", o.name, fileVar)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		// The *PathError names the file, never its content.
		return "", false, &fieldError{name: fileVar, msg: err.Error(), err: err}
	}
	v = strings.TrimSpace(string(b))
	if v == "" {
		return "", false, invalidf(fileVar, "file %q is empty", path)
	}
	return v, true, nil
}

// splitList splits a comma-separated list, trimming elements and dropping
// empty ones. It returns nil for an empty list.
func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// Validate checks every field: each against its variable's own rule (a
// range, a syntax, a list of keywords), then the rules that relate settings
// to each other (STREAM_DUPLICATE_WINDOW at most STREAM_MAX_AGE; minute, hour
// and day retentions in that order; DB_USER and DB_NAME set when
// DATABASE_URL is not). It works on a Config built by hand as well as on
// one from Load; a nil *Config is invalid.
//
// Its error names the environment variable at fault (e.g. `config:
// LOG_LEVEL: "loud" is not one of debug, info, warn, error`) and joins all
// problems (errors.Join), one error each, so a user sees them all at once.
// Every error it returns matches ErrInvalid. Error messages never include a
// secret; URLs are shown with their passwords redacted.
func (c *Config) Validate() error {
	return errors.Join(c.validate()...)
}

// validate returns one error per problem: the variables' own rules in the
// table's order, then the rules across variables.
func (c *Config) validate() []error {
	if c == nil {
		return []error{fmt.Errorf("config: nil *Config: %w", ErrInvalid)}
	}
	var errs []error
	for _, o := range options() {
		if o.check != nil {
			errs = append(errs, o.check(c)...)
		}
	}
	return append(errs, c.checkAcross()...)
}

// checkAcross checks the rules that relate one setting to another. A
// setting that breaks its own rule (a duration that is not positive) is left
// out of them, so that one mistake is reported once.
func (c *Config) checkAcross() []error {
	var errs []error
	if c.StreamMaxAge > 0 && c.DuplicateWindow > c.StreamMaxAge {
		errs = append(errs, invalidf("STREAM_DUPLICATE_WINDOW", "%s is longer than STREAM_MAX_AGE (%s)", c.DuplicateWindow, c.StreamMaxAge))
	}
	// A stop waits up to PUBLISH_TIMEOUT for the tracking events in flight
	// (answered, not yet acknowledged) to be stored or spooled.
	if c.PublishTimeout > 0 && c.ShutdownTimeout > 0 && c.PublishTimeout >= c.ShutdownTimeout {
		errs = append(errs, invalidf("PUBLISH_TIMEOUT", "%s is not shorter than SHUTDOWN_TIMEOUT (%s): a stop could not wait for the events in flight", c.PublishTimeout, c.ShutdownTimeout))
	}
	// Clients beyond this machine reach the embedded server only with
	// credentials.
	if loopback, ok := loopbackListen(c.NATSListen); ok && !loopback && c.EmbeddedNATS() && c.NATSPassword == "" {
		errs = append(errs, invalidf("NATS_LISTEN", "%s is beyond loopback: set NATS_PASSWORD, or listen on 127.0.0.1", c.NATSListen))
	}
	if c.DatabaseURL == "" {
		// Used to connect to DB_HOST or to set up the local PostgreSQL.
		if c.DBUser == "" {
			errs = append(errs, invalidf("DB_USER", "must not be empty"))
		}
		if c.DBName == "" {
			errs = append(errs, invalidf("DB_NAME", "must not be empty"))
		}
	}
	// minute <= hour <= day; minute > hour > 0 implies minute > 0.
	if c.HourRetention > 0 && c.MinuteRetention > c.HourRetention {
		errs = append(errs, invalidf("ROLLUP_MINUTE_RETENTION", "%v is longer than ROLLUP_HOUR_RETENTION (%v)", c.MinuteRetention, c.HourRetention))
	}
	if c.DayRetention > 0 && c.HourRetention > c.DayRetention {
		errs = append(errs, invalidf("ROLLUP_HOUR_RETENTION", "%v is longer than ROLLUP_DAY_RETENTION (%v)", c.HourRetention, c.DayRetention))
	}
	return errs
}

// loopbackListen reports whether host:port addr listens on loopback only;
// ok is false when addr is empty or not host:port (its own rule says so).
func loopbackListen(addr string) (loopback, ok bool) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false, false
	}
	if host == "localhost" {
		return true, true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback(), true
}

// A rule checks one value of the variable name: nil if it is valid, else a
// *fieldError about name.
type rule[T any] func(name string, v T) error

// checkValue is an option's check applying r to its field; nil if r is nil.
func checkValue[T any](name string, field func(*Config) *T, r rule[T]) func(*Config) []error {
	if r == nil {
		return nil
	}
	return func(c *Config) []error {
		if err := r(name, *field(c)); err != nil {
			return []error{err}
		}
		return nil
	}
}

// checkEach is a list option's check applying r to every element, with one
// error per bad element.
func checkEach(name string, field func(*Config) *[]string, r rule[string]) func(*Config) []error {
	return func(c *Config) []error {
		var errs []error
		for _, v := range *field(c) {
			if err := r(name, v); err != nil {
				errs = append(errs, err)
			}
		}
		return errs
	}
}

// optional lets r's variable be empty.
func optional(r rule[string]) rule[string] {
	return func(name, v string) error {
		if v == "" {
			return nil
		}
		return r(name, v)
	}
}

func nonEmpty(name, v string) error {
	if v == "" {
		return invalidf(name, "must not be empty")
	}
	return nil
}

// oneOf accepts exactly the keywords given (case matters: lowerOpt stores
// lower case).
func oneOf(keywords ...string) rule[string] {
	return func(name, v string) error {
		if !slices.Contains(keywords, v) {
			return invalidf(name, "%q is not one of %s", v, strings.Join(keywords, ", "))
		}
		return nil
	}
}

// between accepts lo..hi, both included.
func between(lo, hi int) rule[int] {
	return func(name string, n int) error {
		if n < lo || n > hi {
			return invalidf(name, "%d is out of range %d..%d", n, lo, hi)
		}
		return nil
	}
}

// atLeast accepts least and above; leastName is least for people (e.g. "1 MiB").
func atLeast(least int, leastName string) rule[int] {
	return func(name string, n int) error {
		if n < least {
			return invalidf(name, "%d is below the minimum of %d (%s)", n, least, leastName)
		}
		return nil
	}
}

func durationBetween(lo, hi time.Duration) rule[time.Duration] {
	return func(name string, d time.Duration) error {
		if d < lo || d > hi {
			return invalidf(name, "%v is out of range %v..%v", d, lo, hi)
		}
		return nil
	}
}

func regularExpression(name, v string) error {
	if _, err := regexp.Compile(v); err != nil {
		return invalidf(name, "%q is not a regular expression: %v", v, err)
	}
	return nil
}

func positive(name string, d time.Duration) error {
	if d <= 0 {
		return invalidf(name, "%v must be greater than zero", d)
	}
	return nil
}

// knownLevel accepts the levels levelOpt spells: debug, info, warn, error.
func knownLevel(name string, l slog.Level) error {
	if s, ok := levelName(l); !ok {
		return invalidf(name, notALevel, s)
	}
	return nil
}

// hostPort checks a listen address: host:port with a numeric port in
// 0..65535 (0 picks a free port); the host may be empty (all interfaces).
func hostPort(name, addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		reason := err.Error()
		var ae *net.AddrError
		if errors.As(err, &ae) {
			reason = ae.Err
		}
		return invalidf(name, "%q is not host:port (%s)", addr, reason)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return invalidf(name, "%q: port %q is not a number in 0..65535", addr, port)
	}
	return nil
}

// natsURLs checks a comma-separated list of NATS server URLs, each with a
// NATS scheme. Credentials in a URL are redacted from the error.
func natsURLs(name, v string) error {
	natsSchemes := []string{"nats://", "tls://", "ws://", "wss://"}
	for _, s := range strings.Split(v, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			return invalidf(name, "empty URL in comma-separated list")
		}
		lower := strings.ToLower(s)
		if !slices.ContainsFunc(natsSchemes, func(p string) bool { return strings.HasPrefix(lower, p) }) {
			return invalidf(name, "%q does not start with nats://, tls://, ws:// or wss://", redactURL(s, true))
		}
		if u, err := url.Parse(s); err != nil || u.Host == "" {
			return invalidf(name, "%q is not a valid server URL", redactURL(s, true))
		}
	}
	return nil
}

// postgresURL checks a PostgreSQL connection URL without ever echoing it: it
// may hold a password.
func postgresURL(name, v string) error {
	u, err := url.Parse(v)
	if err != nil {
		// url.Parse's errors quote the URL, password included.
		return invalidf(name, "not a valid URL (value not shown: it may contain a password)")
	}
	if u.Scheme != "postgres" && u.Scheme != "postgresql" {
		return invalidf(name, "scheme %q is not postgres or postgresql", u.Scheme)
	}
	if u.Opaque != "" {
		return invalidf(name, "must be of the form postgres://user:password@host:port/dbname")
	}
	return nil
}

// hostName checks a host name or IP address (an IPv6 address may be
// bracketed), without a port: for DB_HOST, whose port goes in DB_PORT.
func hostName(name, h string) error {
	if strings.ContainsFunc(h, func(r rune) bool { return r <= ' ' || r == 0x7f }) ||
		(strings.ContainsAny(h, "/?#@\\[]%") && !isIPv6Literal(h)) {
		return invalidf(name, "%q is not a host name or IP address", h)
	}
	if strings.Contains(h, ":") && !isIPv6Literal(h) {
		return invalidf(name, "%q is not a host name or IP address (put the port in DB_PORT)", h)
	}
	return nil
}

// isIPv6Literal reports whether h is an IPv6 address, optionally in brackets.
func isIPv6Literal(h string) bool {
	a, err := netip.ParseAddr(unbracket(h))
	return err == nil && a.Is6()
}

func unbracket(h string) string {
	if len(h) >= 2 && h[0] == '[' && h[len(h)-1] == ']' {
		return h[1 : len(h)-1]
	}
	return h
}

// ipOrPrefix checks an IP address or CIDR prefix (a TRUSTED_PROXIES entry).
func ipOrPrefix(name, p string) error {
	if _, err := netip.ParseAddr(p); err == nil {
		return nil
	}
	if _, err := netip.ParsePrefix(p); err == nil {
		return nil
	}
	return invalidf(name, "%q is not an IP address or CIDR prefix", p)
}

// origin checks a CORS origin: "*", or scheme://host[:port] of http or
// https, without path, query or credentials.
func origin(name, o string) error {
	if o == "*" {
		return nil
	}
	u, err := url.Parse(o)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil ||
		u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return invalidf(name, "%q is not \"*\" or an origin such as https://player.example.com", o)
	}
	return nil
}

// publicURL checks the URL the service is reached at: scheme://host[:port]
// of http or https, without path, query or credentials.
func publicURL(name, v string) error {
	if v == "*" || origin(name, v) != nil {
		return invalidf(name, "%q is not a URL such as https://ads.example.com (scheme and host, no path)", v)
	}
	return nil
}

// EmbeddedNATS reports whether the service runs its own nats-server (NATS_URL empty).
func (c *Config) EmbeddedNATS() bool { return c.NATSURL == "" }

// HTTPLoopback reports whether HTTP_ADDR listens on loopback only (its host
// is a loopback address or localhost; an empty host listens everywhere).
func (c *Config) HTTPLoopback() bool {
	loopback, _ := loopbackListen(c.HTTPAddr)
	return loopback
}

// LocalPostgres reports whether the service starts its own PostgreSQL (neither DATABASE_URL nor DB_HOST set).
func (c *Config) LocalPostgres() bool { return c.DatabaseURL == "" && c.DBHost == "" }

// PostgresDSN returns DATABASE_URL, or a postgres:// URL built from DB_* (password URL-escaped), or "" when LocalPostgres.
//
// The built URL has the form
// postgres://DB_USER:DB_PASSWORD@DB_HOST:DB_PORT/DB_NAME?sslmode=DB_SSLMODE,
// with the password omitted when empty. The result may hold a password: do
// not log it (log the Config, whose LogValue redacts it).
func (c *Config) PostgresDSN() string {
	if c.DatabaseURL != "" {
		return c.DatabaseURL
	}
	if c.DBHost == "" {
		return ""
	}
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User(c.DBUser),
		Host:     net.JoinHostPort(unbracket(c.DBHost), strconv.Itoa(c.DBPort)),
		Path:     "/" + c.DBName,
		RawQuery: url.Values{"sslmode": {c.DBSSLMode}}.Encode(),
	}
	if c.DBPassword != "" {
		u.User = url.UserPassword(c.DBUser, c.DBPassword)
	}
	return u.String()
}

// LogValue implements slog.LogValuer: all settings, with secrets (DB_PASSWORD, ADMIN_TOKEN, VISITOR_SALT, PIXEL_SECRET, and the password inside DATABASE_URL) shown as "[redacted]" when set and "" when unset.
//
// The attributes are keyed by environment variable name. Credentials inside
// NATS_URL (a password, or a user name standing alone, which NATS treats as
// a token) are redacted too.
func (c *Config) LogValue() slog.Value {
	if c == nil {
		return slog.StringValue("<nil>")
	}
	opts := options()
	attrs := make([]slog.Attr, 0, len(opts))
	for _, o := range opts {
		attrs = append(attrs, slog.Attr{Key: o.name, Value: o.value(c)})
	}
	return slog.GroupValue(attrs...)
}

// redactSecret is "" for an unset secret and "[redacted]" otherwise.
func redactSecret(s string) string {
	if s == "" {
		return ""
	}
	return redacted
}

// redactURLList redacts each URL of a comma-separated list.
func redactURLList(v string) string {
	if v == "" {
		return ""
	}
	parts := strings.Split(v, ",")
	for i, p := range parts {
		parts[i] = redactURL(strings.TrimSpace(p), true)
	}
	return strings.Join(parts, ",")
}

// redactURL returns raw with its password, and any password or sslpassword
// query parameter, replaced by "[redacted]". If tokenUser, a user name
// without a password is redacted as well (NATS reads it as a token). A URL
// that does not parse is redacted whole if it might hold credentials.
func redactURL(raw string, tokenUser bool) string {
	u, err := url.Parse(raw)
	if err != nil || u.Opaque != "" {
		// Not a URL with an authority: keep it only if it cannot hold
		// credentials.
		if strings.Contains(raw, "@") || strings.Contains(strings.ToLower(raw), "password") {
			return redacted
		}
		return raw
	}
	cp := *u
	cp.User = nil
	cp.RawQuery = redactQuery(u.RawQuery)
	s := cp.String()
	if u.User == nil {
		return s
	}
	var userinfo string
	if _, hasPassword := u.User.Password(); hasPassword {
		userinfo = url.User(u.User.Username()).String() + ":" + redacted
	} else if tokenUser {
		userinfo = redacted
	} else {
		userinfo = u.User.String()
	}
	prefix := cp.Scheme + "://"
	if !strings.HasPrefix(s, prefix) {
		return redacted
	}
	return prefix + userinfo + "@" + s[len(prefix):]
}

// redactQuery redacts password parameters of a raw query string, keeping
// the others as they are.
func redactQuery(q string) string {
	if q == "" {
		return ""
	}
	params := strings.Split(q, "&")
	for i, p := range params {
		key, _, _ := strings.Cut(p, "=")
		if k, err := url.QueryUnescape(key); err == nil {
			key = k
		}
		switch strings.ToLower(key) {
		case "password", "sslpassword":
			params[i] = key + "=" + redacted
		}
	}
	return strings.Join(params, "&")
}

// minArchiveRetention is the shortest ARCHIVE_RETENTION other than 0.
const minArchiveRetention = 24 * time.Hour

// retentionOpt is a retention: 0 for none, a duration in
// time.ParseDuration's syntax, or a whole number of days such as 395d.
func retentionOpt(name, def string, field func(*Config) *time.Duration) option {
	return option{
		name: name,
		def:  def,
		parse: func(c *Config, v string) error {
			d, ok := parseRetention(v)
			if !ok {
				return invalidf(name, "%q is not 0, a number of days (395d) or a duration (9480h)", v)
			}
			*field(c) = d
			return nil
		},
		check: checkValue(name, field, func(name string, d time.Duration) error {
			if d < 0 || d > 0 && d < minArchiveRetention {
				return invalidf(name, "%v must be 0 (keep forever) or at least %v", d, minArchiveRetention)
			}
			return nil
		}),
		value: func(c *Config) slog.Value { return slog.DurationValue(*field(c)) },
	}
}

// parseRetention reads 0, <days>d or a duration.
func parseRetention(v string) (time.Duration, bool) {
	if days, ok := strings.CutSuffix(v, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n < 0 || n > 100*366 {
			return 0, false
		}
		return time.Duration(n) * 24 * time.Hour, true
	}
	d, err := time.ParseDuration(v)
	return d, err == nil
}
