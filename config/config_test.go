package config_test

import (
	"bytes"
	"errors"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/admetric/admetric/config"
)

// allVars lists every variable the package reads, in .env.example's order.
var allVars = []string{
	"HTTP_ADDR", "TRUSTED_PROXIES",
	"NATS_URL", "NATS_LISTEN", "NATS_PASSWORD", "NATS_PUBLISHER_PASSWORD", "NATS_SYNC_ALWAYS", "NATS_REPLICAS",
	"LEADER_SPREAD_INTERVAL", "ROLLUP_COMMITS", "PARTITIONS", "STREAM_MAX_AGE",
	"STREAM_DUPLICATE_WINDOW", "SPOOL_MAX_BYTES", "PUBLISH_TIMEOUT", "MAX_PENDING_PUBLISHES",
	"CACHE_MAX_BYTES", "CACHE_IDLE", "SNAPSHOT_INTERVAL",
	"DATABASE_URL", "DATABASE_URL_FILE", "DB_HOST", "DB_PORT", "DB_USER",
	"DB_PASSWORD", "DB_PASSWORD_FILE", "DB_NAME", "DB_SSLMODE",
	"ADMIN_TOKEN", "ADMIN_TOKEN_FILE", "VISITOR_SALT", "VISITOR_SALT_FILE",
	"ROLLUP_MINUTE_RETENTION", "ROLLUP_HOUR_RETENTION", "ROLLUP_DAY_RETENTION",
	"DATA_DIR", "LOG_LEVEL", "LOG_FORMAT", "SHUTDOWN_TIMEOUT", "CATALOG_REFRESH",
	"IVT_RULES", "IVT_DUPLICATE_CLICK_WINDOW", "IVT_RATE_PER_MINUTE", "IVT_BOT_PATTERNS",
	"IP_TRUNCATE", "ARCHIVE_RETENTION",
	// Abuse limits.
	"INTAKE_RATE_LIMIT", "INTAKE_RATE_BURST", "PIXEL_RATE_LIMIT", "PIXEL_RATE_BURST", "RATE_LIMIT_MAX_CLIENTS",
	// Read access.
	"ANALYTICS_TOKEN", "ANALYTICS_TOKEN_FILE", "READ_TOKEN_REFRESH",
}

// env returns a lookup function over m, standing in for os.LookupEnv.
func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	}
}

// mustLoad loads m and fails the test on error.
func mustLoad(t *testing.T, m map[string]string) *config.Config {
	t.Helper()
	c, err := config.Load(env(m))
	if err != nil {
		t.Fatalf("Load(%v): %v", m, err)
	}
	if c == nil {
		t.Fatalf("Load(%v) returned a nil config and no error", m)
	}
	return c
}

// wantInvalid checks that err is a validation error naming variable name
// and, if contains is not empty, holding contains.
func wantInvalid(t *testing.T, err error, name, contains string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want one about %s", name)
	}
	if !errors.Is(err, config.ErrInvalid) {
		t.Errorf("errors.Is(%v, ErrInvalid) = false", err)
	}
	msg := err.Error()
	if !strings.Contains(msg, "config: "+name+": ") && !strings.Contains(msg, "config: "+name+"_FILE: ") {
		t.Errorf("error %q does not name %s", msg, name)
	}
	if contains != "" && !strings.Contains(msg, contains) {
		t.Errorf("error %q does not contain %q", msg, contains)
	}
}

func defaults() *config.Config {
	return &config.Config{
		HTTPAddr:             ":8080",
		DataDir:              "./data",
		NATSURL:              "",
		NATSListen:           "127.0.0.1:4222",
		NATSSyncAlways:       false,
		DatabaseURL:          "",
		DBHost:               "",
		DBPort:               5432,
		DBUser:               "postgres",
		DBPassword:           "",
		DBName:               "admetric",
		DBSSLMode:            "disable",
		AdminToken:           "",
		LogLevel:             slog.LevelInfo,
		LogFormat:            "text",
		VisitorSalt:          "",
		TrustedProxies:       nil,
		CORSAllowedOrigins:   []string{"*"},
		MinuteRetention:      72 * time.Hour,
		HourRetention:        2400 * time.Hour,
		DayRetention:         43800 * time.Hour,
		StreamMaxAge:         168 * time.Hour,
		DuplicateWindow:      20 * time.Minute,
		SpoolMaxBytes:        1 << 30,
		PublishTimeout:       2 * time.Second,
		NATSReplicas:         1,
		LeaderSpreadInterval: 30 * time.Second,
		RollupCommits:        "auto",
		MaxPendingPublishes:  4096,
		CacheMaxBytes:        256 << 20,
		CacheIdle:            15 * time.Minute,
		SnapshotInterval:     10 * time.Second,
		Partitions:           8,
		ShutdownTimeout:      10 * time.Second,
		CatalogRefresh:       10 * time.Second,
		ReadTokenRefresh:     2 * time.Second,

		IVTRules:                true,
		IVTDuplicateClickWindow: 30 * time.Second,
		IVTRatePerMinute:        30,

		IntakeRateLimit:     1000,
		IntakeRateBurst:     2000,
		PixelRateLimit:      200,
		PixelRateBurst:      400,
		RateLimitMaxClients: 100_000,
	}
}

func TestLoadDefaults(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		env  map[string]string
	}{
		{"empty environment", map[string]string{}},
		{"unknown variables are ignored", map[string]string{"HOME": "/root", "ADMETRIC_FOO": "x", "PORT": "nope"}},
		{"empty values take defaults", map[string]string{
			"HTTP_ADDR": "", "DATA_DIR": "", "DB_PORT": "", "DB_USER": "", "LOG_LEVEL": "",
			"CATALOG_REFRESH": "  ", "ROLLUP_DAY_RETENTION": "", "NATS_SYNC_ALWAYS": "", "DB_PASSWORD_FILE": "",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := mustLoad(t, tc.env)
			if want := defaults(); !reflect.DeepEqual(got, want) {
				t.Errorf("Load = %+v\nwant %+v", got, want)
			}
			if !got.EmbeddedNATS() {
				t.Error("EmbeddedNATS() = false, want true")
			}
			if !got.LocalPostgres() {
				t.Error("LocalPostgres() = false, want true")
			}
			if dsn := got.PostgresDSN(); dsn != "" {
				t.Errorf("PostgresDSN() = %q, want empty", dsn)
			}
			if err := got.Validate(); err != nil {
				t.Errorf("Validate() = %v", err)
			}
		})
	}
}

func TestLoadValid(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		env   map[string]string
		field func(*config.Config) any
		want  any
	}{
		{"HTTP_ADDR", map[string]string{"HTTP_ADDR": "127.0.0.1:9000"}, func(c *config.Config) any { return c.HTTPAddr }, "127.0.0.1:9000"},
		{"HTTP_ADDR ipv6", map[string]string{"HTTP_ADDR": "[::1]:80"}, func(c *config.Config) any { return c.HTTPAddr }, "[::1]:80"},
		{"HTTP_ADDR port 0", map[string]string{"HTTP_ADDR": "localhost:0"}, func(c *config.Config) any { return c.HTTPAddr }, "localhost:0"},
		{"HTTP_ADDR trimmed", map[string]string{"HTTP_ADDR": " :8081\n"}, func(c *config.Config) any { return c.HTTPAddr }, ":8081"},
		{"DATA_DIR", map[string]string{"DATA_DIR": "/var/lib/admetric"}, func(c *config.Config) any { return c.DataDir }, "/var/lib/admetric"},
		{"NATS_URL", map[string]string{"NATS_URL": "nats://n1:4222"}, func(c *config.Config) any { return c.NATSURL }, "nats://n1:4222"},
		{"NATS_URL list", map[string]string{"NATS_URL": "nats://a:4222, tls://b:4222,ws://c,wss://d:443"}, func(c *config.Config) any { return c.NATSURL }, "nats://a:4222, tls://b:4222,ws://c,wss://d:443"},
		{"NATS_LISTEN", map[string]string{"NATS_LISTEN": "0.0.0.0:4333", "NATS_PASSWORD": "s3cret"}, func(c *config.Config) any { return c.NATSListen }, "0.0.0.0:4333"},
		{"NATS_LISTEN random port", map[string]string{"NATS_LISTEN": "127.0.0.1:0"}, func(c *config.Config) any { return c.NATSListen }, "127.0.0.1:0"},
		{"NATS_SYNC_ALWAYS", map[string]string{"NATS_SYNC_ALWAYS": "true"}, func(c *config.Config) any { return c.NATSSyncAlways }, true},
		{"NATS_REPLICAS", map[string]string{"NATS_REPLICAS": "3"}, func(c *config.Config) any { return c.NATSReplicas }, 3},
		{"PARTITIONS", map[string]string{"PARTITIONS": "1"}, func(c *config.Config) any { return c.Partitions }, 1},
		{"NATS_SYNC_ALWAYS 1", map[string]string{"NATS_SYNC_ALWAYS": "1"}, func(c *config.Config) any { return c.NATSSyncAlways }, true},
		{"NATS_SYNC_ALWAYS false", map[string]string{"NATS_SYNC_ALWAYS": "FALSE"}, func(c *config.Config) any { return c.NATSSyncAlways }, false},
		{"DATABASE_URL", map[string]string{"DATABASE_URL": "postgres://u:p@db:5432/x?sslmode=require"}, func(c *config.Config) any { return c.DatabaseURL }, "postgres://u:p@db:5432/x?sslmode=require"},
		{"DATABASE_URL postgresql", map[string]string{"DATABASE_URL": "postgresql:///x"}, func(c *config.Config) any { return c.DatabaseURL }, "postgresql:///x"},
		{"DB_HOST", map[string]string{"DB_HOST": "db.internal"}, func(c *config.Config) any { return c.DBHost }, "db.internal"},
		{"DB_HOST ipv6", map[string]string{"DB_HOST": "::1"}, func(c *config.Config) any { return c.DBHost }, "::1"},
		{"DB_HOST bracketed ipv6", map[string]string{"DB_HOST": "[fd00::5]"}, func(c *config.Config) any { return c.DBHost }, "[fd00::5]"},
		{"DB_PORT", map[string]string{"DB_PORT": "6543"}, func(c *config.Config) any { return c.DBPort }, 6543},
		{"DB_PORT max", map[string]string{"DB_PORT": "65535"}, func(c *config.Config) any { return c.DBPort }, 65535},
		{"DB_USER", map[string]string{"DB_USER": "admetric"}, func(c *config.Config) any { return c.DBUser }, "admetric"},
		{"DB_PASSWORD verbatim", map[string]string{"DB_PASSWORD": " s3cret "}, func(c *config.Config) any { return c.DBPassword }, " s3cret "},
		{"DB_NAME", map[string]string{"DB_NAME": "metrics"}, func(c *config.Config) any { return c.DBName }, "metrics"},
		{"DB_SSLMODE", map[string]string{"DB_SSLMODE": "verify-full"}, func(c *config.Config) any { return c.DBSSLMode }, "verify-full"},
		{"DB_SSLMODE case", map[string]string{"DB_SSLMODE": "Require"}, func(c *config.Config) any { return c.DBSSLMode }, "require"},
		{"ADMIN_TOKEN", map[string]string{"ADMIN_TOKEN": "tok"}, func(c *config.Config) any { return c.AdminToken }, "tok"},
		{"LOG_LEVEL debug", map[string]string{"LOG_LEVEL": "debug"}, func(c *config.Config) any { return c.LogLevel }, slog.LevelDebug},
		{"LOG_LEVEL WARN", map[string]string{"LOG_LEVEL": "WARN"}, func(c *config.Config) any { return c.LogLevel }, slog.LevelWarn},
		{"LOG_LEVEL Error", map[string]string{"LOG_LEVEL": "Error"}, func(c *config.Config) any { return c.LogLevel }, slog.LevelError},
		{"LOG_FORMAT", map[string]string{"LOG_FORMAT": "JSON"}, func(c *config.Config) any { return c.LogFormat }, "json"},
		{"VISITOR_SALT", map[string]string{"VISITOR_SALT": "salty"}, func(c *config.Config) any { return c.VisitorSalt }, "salty"},
		{"TRUSTED_PROXIES", map[string]string{"TRUSTED_PROXIES": "10.0.0.1, 192.168.0.0/16,::1,fd00::/8,"}, func(c *config.Config) any { return c.TrustedProxies }, []string{"10.0.0.1", "192.168.0.0/16", "::1", "fd00::/8"}},
		{"CORS_ALLOWED_ORIGINS", map[string]string{"CORS_ALLOWED_ORIGINS": "https://player.example.com, http://localhost:3000"}, func(c *config.Config) any { return c.CORSAllowedOrigins }, []string{"https://player.example.com", "http://localhost:3000"}},
		{"PUBLIC_URL", map[string]string{"PUBLIC_URL": "https://ads.example.com"}, func(c *config.Config) any { return c.PublicURL }, "https://ads.example.com"},
		{"CORS_ALLOWED_ORIGINS empty", map[string]string{"CORS_ALLOWED_ORIGINS": ""}, func(c *config.Config) any { return c.CORSAllowedOrigins }, []string(nil)},
		{"ROLLUP_MINUTE_RETENTION", map[string]string{"ROLLUP_MINUTE_RETENTION": "24h"}, func(c *config.Config) any { return c.MinuteRetention }, 24 * time.Hour},
		{"ROLLUP_MINUTE_RETENTION equal to hour", map[string]string{"ROLLUP_MINUTE_RETENTION": "100h", "ROLLUP_HOUR_RETENTION": "100h"}, func(c *config.Config) any { return c.MinuteRetention }, 100 * time.Hour},
		{"ROLLUP_HOUR_RETENTION", map[string]string{"ROLLUP_HOUR_RETENTION": "720h"}, func(c *config.Config) any { return c.HourRetention }, 720 * time.Hour},
		{"ROLLUP_DAY_RETENTION", map[string]string{"ROLLUP_DAY_RETENTION": "8760h"}, func(c *config.Config) any { return c.DayRetention }, 8760 * time.Hour},
		{"STREAM_MAX_AGE", map[string]string{"STREAM_MAX_AGE": "36h30m"}, func(c *config.Config) any { return c.StreamMaxAge }, 36*time.Hour + 30*time.Minute},
		{"SHUTDOWN_TIMEOUT", map[string]string{"SHUTDOWN_TIMEOUT": "1m"}, func(c *config.Config) any { return c.ShutdownTimeout }, time.Minute},
		{"CATALOG_REFRESH", map[string]string{"CATALOG_REFRESH": "500ms"}, func(c *config.Config) any { return c.CatalogRefresh }, 500 * time.Millisecond},
		{"IVT_RULES", map[string]string{"IVT_RULES": "false"}, func(c *config.Config) any { return c.IVTRules }, false},
		{"IVT_DUPLICATE_CLICK_WINDOW", map[string]string{"IVT_DUPLICATE_CLICK_WINDOW": "1m"}, func(c *config.Config) any { return c.IVTDuplicateClickWindow }, time.Minute},
		{"IVT_RATE_PER_MINUTE", map[string]string{"IVT_RATE_PER_MINUTE": "120"}, func(c *config.Config) any { return c.IVTRatePerMinute }, 120},
		{"INTAKE_RATE_LIMIT off", map[string]string{"INTAKE_RATE_LIMIT": "0"}, func(c *config.Config) any { return c.IntakeRateLimit }, 0},
		{"PIXEL_RATE_BURST", map[string]string{"PIXEL_RATE_BURST": "50"}, func(c *config.Config) any { return c.PixelRateBurst }, 50},
		{"IVT_BOT_PATTERNS", map[string]string{"IVT_BOT_PATTERNS": `^Acme-Monitor/\d, InternalProbe`}, func(c *config.Config) any { return c.IVTBotPatterns }, []string{`^Acme-Monitor/\d`, "InternalProbe"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := mustLoad(t, tc.env)
			if got := tc.field(c); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %#v, want %#v", got, tc.want)
			}
		})
	}
}

func TestLoadInvalid(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		env      map[string]string
		name     string // variable the error must name
		contains string
	}{
		{map[string]string{"HTTP_ADDR": "8080"}, "HTTP_ADDR", `"8080" is not host:port`},
		{map[string]string{"HTTP_ADDR": "localhost:http"}, "HTTP_ADDR", "not a number"},
		{map[string]string{"HTTP_ADDR": ":65536"}, "HTTP_ADDR", "0..65535"},
		{map[string]string{"HTTP_ADDR": ":-1"}, "HTTP_ADDR", ""},
		{map[string]string{"HTTP_ADDR": "localhost:"}, "HTTP_ADDR", ""},
		{map[string]string{"NATS_URL": "http://n1:4222"}, "NATS_URL", "nats://"},
		{map[string]string{"NATS_URL": "n1:4222"}, "NATS_URL", ""},
		{map[string]string{"NATS_URL": "nats://a:4222,,nats://b:4222"}, "NATS_URL", "empty"},
		{map[string]string{"NATS_URL": "nats://a:4222,b:4222"}, "NATS_URL", `"b:4222"`},
		{map[string]string{"NATS_URL": "nats://"}, "NATS_URL", ""},
		{map[string]string{"NATS_LISTEN": "4222"}, "NATS_LISTEN", "host:port"},
		{map[string]string{"NATS_LISTEN": "0.0.0.0:4222"}, "NATS_LISTEN", "beyond loopback: set NATS_PASSWORD"},
		{map[string]string{"NATS_LISTEN": "[::]:4222"}, "NATS_LISTEN", "beyond loopback"},
		{map[string]string{"NATS_LISTEN": "127.0.0.1:99999"}, "NATS_LISTEN", ""},
		{map[string]string{"NATS_SYNC_ALWAYS": "yes"}, "NATS_SYNC_ALWAYS", `"yes" is not a boolean`},
		{map[string]string{"IVT_RULES": "maybe"}, "IVT_RULES", `"maybe" is not a boolean`},
		{map[string]string{"IVT_DUPLICATE_CLICK_WINDOW": "500ms"}, "IVT_DUPLICATE_CLICK_WINDOW", "1s..1h"},
		{map[string]string{"IVT_DUPLICATE_CLICK_WINDOW": "2h"}, "IVT_DUPLICATE_CLICK_WINDOW", "1s..1h"},
		{map[string]string{"IVT_RATE_PER_MINUTE": "0"}, "IVT_RATE_PER_MINUTE", "1..100000"},
		{map[string]string{"INTAKE_RATE_LIMIT": "-1"}, "INTAKE_RATE_LIMIT", "0..1000000"},
		{map[string]string{"PIXEL_RATE_BURST": "0"}, "PIXEL_RATE_BURST", "1..1000000"},
		{map[string]string{"RATE_LIMIT_MAX_CLIENTS": "0"}, "RATE_LIMIT_MAX_CLIENTS", "1..10000000"},
		{map[string]string{"IVT_BOT_PATTERNS": "ok,(unclosed"}, "IVT_BOT_PATTERNS", `"(unclosed" is not a regular expression`},
		{map[string]string{"NATS_REPLICAS": "0"}, "NATS_REPLICAS", "1..5"},
		{map[string]string{"PARTITIONS": "0"}, "PARTITIONS", "1..1024"},
		{map[string]string{"PARTITIONS": "1025"}, "PARTITIONS", "1..1024"},
		{map[string]string{"NATS_REPLICAS": "7"}, "NATS_REPLICAS", "1..5"},
		{map[string]string{"DATABASE_URL": "mysql://u@h/db"}, "DATABASE_URL", `scheme "mysql"`},
		{map[string]string{"DATABASE_URL": "db.example:5432"}, "DATABASE_URL", ""},
		{map[string]string{"DATABASE_URL": "postgres://h:port/db"}, "DATABASE_URL", "not a valid URL"},
		{map[string]string{"DATABASE_URL": "postgres:opaque"}, "DATABASE_URL", ""},
		{map[string]string{"DB_HOST": "db:5432"}, "DB_HOST", "DB_PORT"},
		{map[string]string{"DB_HOST": "db host"}, "DB_HOST", ""},
		{map[string]string{"DB_HOST": "user@db"}, "DB_HOST", ""},
		{map[string]string{"DB_PORT": "abc"}, "DB_PORT", `"abc" is not an integer`},
		{map[string]string{"DB_PORT": "0"}, "DB_PORT", "1..65535"},
		{map[string]string{"DB_PORT": "65536"}, "DB_PORT", "1..65535"},
		{map[string]string{"DB_SSLMODE": "on"}, "DB_SSLMODE", `"on" is not one of disable, allow, prefer, require, verify-ca, verify-full`},
		{map[string]string{"LOG_LEVEL": "loud"}, "LOG_LEVEL", `config: LOG_LEVEL: "loud" is not one of debug, info, warn, error`},
		{map[string]string{"LOG_LEVEL": "warning"}, "LOG_LEVEL", ""},
		{map[string]string{"LOG_FORMAT": "xml"}, "LOG_FORMAT", `"xml" is not one of text, json`},
		{map[string]string{"TRUSTED_PROXIES": "10.0.0.1,proxy.local"}, "TRUSTED_PROXIES", `"proxy.local"`},
		{map[string]string{"TRUSTED_PROXIES": "10.0.0.0/33"}, "TRUSTED_PROXIES", ""},
		{map[string]string{"ROLLUP_MINUTE_RETENTION": "3d"}, "ROLLUP_MINUTE_RETENTION", "not a duration"},
		{map[string]string{"ROLLUP_MINUTE_RETENTION": "0"}, "ROLLUP_MINUTE_RETENTION", "greater than zero"},
		{map[string]string{"ROLLUP_MINUTE_RETENTION": "3000h"}, "ROLLUP_MINUTE_RETENTION", "longer than ROLLUP_HOUR_RETENTION"},
		{map[string]string{"ROLLUP_HOUR_RETENTION": "-1h"}, "ROLLUP_HOUR_RETENTION", "greater than zero"},
		{map[string]string{"ROLLUP_HOUR_RETENTION": "50000h"}, "ROLLUP_HOUR_RETENTION", "longer than ROLLUP_DAY_RETENTION"},
		{map[string]string{"ROLLUP_HOUR_RETENTION": "48h"}, "ROLLUP_MINUTE_RETENTION", "longer than ROLLUP_HOUR_RETENTION"},
		{map[string]string{"ROLLUP_DAY_RETENTION": "1000h"}, "ROLLUP_HOUR_RETENTION", "longer than ROLLUP_DAY_RETENTION"},
		{map[string]string{"ROLLUP_DAY_RETENTION": "forever"}, "ROLLUP_DAY_RETENTION", "not a duration"},
		{map[string]string{"STREAM_MAX_AGE": "0s"}, "STREAM_MAX_AGE", "greater than zero"},
		{map[string]string{"STREAM_MAX_AGE": "10m"}, "STREAM_DUPLICATE_WINDOW", "longer than STREAM_MAX_AGE"},
		{map[string]string{"PUBLISH_TIMEOUT": "10s"}, "PUBLISH_TIMEOUT", "not shorter than SHUTDOWN_TIMEOUT"},
		{map[string]string{"PUBLISH_TIMEOUT": "3s", "SHUTDOWN_TIMEOUT": "2s"}, "PUBLISH_TIMEOUT", "not shorter than SHUTDOWN_TIMEOUT (2s)"},
		{map[string]string{"STREAM_DUPLICATE_WINDOW": "0s"}, "STREAM_DUPLICATE_WINDOW", "greater than zero"},
		{map[string]string{"SPOOL_MAX_BYTES": "1000"}, "SPOOL_MAX_BYTES", "minimum"},
		{map[string]string{"SPOOL_MAX_BYTES": "1GiB"}, "SPOOL_MAX_BYTES", ""},
		{map[string]string{"PUBLISH_TIMEOUT": "-1s"}, "PUBLISH_TIMEOUT", "greater than zero"},
		{map[string]string{"MAX_PENDING_PUBLISHES": "0"}, "MAX_PENDING_PUBLISHES", "out of range"},
		{map[string]string{"CACHE_MAX_BYTES": "1024"}, "CACHE_MAX_BYTES", "minimum"},
		{map[string]string{"CACHE_IDLE": "0s"}, "CACHE_IDLE", "greater than zero"},
		{map[string]string{"SNAPSHOT_INTERVAL": "soon"}, "SNAPSHOT_INTERVAL", "not a duration"},
		{map[string]string{"STREAM_MAX_AGE": "7 days"}, "STREAM_MAX_AGE", "not a duration"},
		{map[string]string{"SHUTDOWN_TIMEOUT": "10"}, "SHUTDOWN_TIMEOUT", "not a duration"},
		{map[string]string{"SHUTDOWN_TIMEOUT": "-5s"}, "SHUTDOWN_TIMEOUT", "greater than zero"},
		{map[string]string{"CATALOG_REFRESH": "0s"}, "CATALOG_REFRESH", "greater than zero"},
		{map[string]string{"CATALOG_REFRESH": "often"}, "CATALOG_REFRESH", "not a duration"},
	} {
		t.Run(tc.name+"="+strings.Join(mapValues(tc.env), ","), func(t *testing.T) {
			t.Parallel()
			c, err := config.Load(env(tc.env))
			if c != nil {
				t.Errorf("Load returned a config along with error %v", err)
			}
			wantInvalid(t, err, tc.name, tc.contains)
			// One problem, one error: a value that fails to parse is not
			// reported again by Validate.
			if n := strings.Count(err.Error(), "config: "); n != 1 {
				t.Errorf("error reports %d problems, want 1:\n%v", n, err)
			}
		})
	}
}

func mapValues(m map[string]string) []string {
	var vs []string
	for _, v := range m {
		vs = append(vs, v)
	}
	return vs
}

func TestLoadJoinsAllErrors(t *testing.T) {
	t.Parallel()
	_, err := config.Load(env(map[string]string{
		"LOG_LEVEL":        "loud",
		"DB_PORT":          "x",
		"HTTP_ADDR":        "nowhere",
		"ADMIN_TOKEN":      "a",
		"ADMIN_TOKEN_FILE": "/nonexistent",
	}))
	if !errors.Is(err, config.ErrInvalid) {
		t.Fatalf("err = %v, want ErrInvalid", err)
	}
	for _, name := range []string{"LOG_LEVEL", "DB_PORT", "HTTP_ADDR", "ADMIN_TOKEN"} {
		if !strings.Contains(err.Error(), "config: "+name+": ") {
			t.Errorf("error does not name %s:\n%v", name, err)
		}
	}
	var joined interface{ Unwrap() []error }
	if !errors.As(err, &joined) || len(joined.Unwrap()) != 4 {
		t.Errorf("want 4 joined errors, got:\n%v", err)
	}
}

func TestNATSListen(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		env  map[string]string
		want string
	}{
		{"unset uses default", map[string]string{}, "127.0.0.1:4222"},
		{"set to empty disables", map[string]string{"NATS_LISTEN": ""}, ""},
		{"set to blanks disables", map[string]string{"NATS_LISTEN": "  "}, ""},
		{"set", map[string]string{"NATS_LISTEN": "127.0.0.1:4223"}, "127.0.0.1:4223"},
		{"all addresses, with a password", map[string]string{"NATS_LISTEN": ":4223", "NATS_PASSWORD": "s3cret"}, ":4223"},
		{"all addresses, NATS_URL set", map[string]string{"NATS_LISTEN": ":4223", "NATS_URL": "nats://n:4222"}, ":4223"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := mustLoad(t, tc.env).NATSListen; got != tc.want {
				t.Errorf("NATSListen = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestEmbeddedNATS(t *testing.T) {
	t.Parallel()
	if c := mustLoad(t, map[string]string{"NATS_URL": "nats://nats:4222"}); c.EmbeddedNATS() {
		t.Error("EmbeddedNATS() = true with NATS_URL set")
	}
	if c := mustLoad(t, nil); !c.EmbeddedNATS() {
		t.Error("EmbeddedNATS() = false without NATS_URL")
	}
}

// writeFile writes content to a new file in a per-test directory.
func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestSecretFiles(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		value string
		field func(*config.Config) string
	}{
		{"ADMIN_TOKEN", "t0ken with spaces", func(c *config.Config) string { return c.AdminToken }},
		{"ANALYTICS_TOKEN", "read-token-0123456789", func(c *config.Config) string { return c.AnalyticsToken }},
		{"DB_PASSWORD", "p@ss:w/rd", func(c *config.Config) string { return c.DBPassword }},
		{"VISITOR_SALT", "0123456789abcdef", func(c *config.Config) string { return c.VisitorSalt }},
		{"DATABASE_URL", "postgres://u:pw@db/x", func(c *config.Config) string { return c.DatabaseURL }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := writeFile(t, "\n  "+tc.value+"\r\n\n")

			t.Run("read and trimmed", func(t *testing.T) {
				c := mustLoad(t, map[string]string{tc.name + "_FILE": path})
				if got := tc.field(c); got != tc.value {
					t.Errorf("%s = %q, want %q", tc.name, got, tc.value)
				}
			})
			t.Run("empty variable alongside file", func(t *testing.T) {
				c := mustLoad(t, map[string]string{tc.name: "", tc.name + "_FILE": path})
				if got := tc.field(c); got != tc.value {
					t.Errorf("%s = %q, want %q", tc.name, got, tc.value)
				}
			})
			t.Run("both set", func(t *testing.T) {
				_, err := config.Load(env(map[string]string{tc.name: tc.value, tc.name + "_FILE": path}))
				wantInvalid(t, err, tc.name, tc.name+"_FILE")
			})
			t.Run("missing file", func(t *testing.T) {
				missing := filepath.Join(t.TempDir(), "nope")
				_, err := config.Load(env(map[string]string{tc.name + "_FILE": missing}))
				wantInvalid(t, err, tc.name+"_FILE", missing)
				if !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("errors.Is(%v, fs.ErrNotExist) = false", err)
				}
			})
			t.Run("empty file", func(t *testing.T) {
				_, err := config.Load(env(map[string]string{tc.name + "_FILE": writeFile(t, " \n")}))
				wantInvalid(t, err, tc.name+"_FILE", "empty")
			})
		})
	}
}

func TestSecretFileValidated(t *testing.T) {
	t.Parallel()
	path := writeFile(t, "mysql://u:hunter2@db/x\n")
	_, err := config.Load(env(map[string]string{"DATABASE_URL_FILE": path}))
	wantInvalid(t, err, "DATABASE_URL", "mysql")
	if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error leaks the password: %v", err)
	}
}

func TestErrorsDoNotLeakSecrets(t *testing.T) {
	t.Parallel()
	const secret = "hunter2"
	for _, m := range []map[string]string{
		{"DATABASE_URL": "mysql://u:" + secret + "@db/x"},
		{"DATABASE_URL": "postgres://u:" + secret + "@db:port/x"},
		{"DATABASE_URL": "postgres://u:" + secret + "%zz@db/x"},
		{"NATS_URL": "http://u:" + secret + "@nats:4222"},
		{"NATS_URL": "nats://ok:4222,http://" + secret + "@nats:4222"},
		{"NATS_URL": "nats://u:" + secret + "@host:port"},
		{"NATS_URL": "nats://u:" + secret + "%zz@host"},
		{"NATS_URL": "nats:u:" + secret + "@host"},
	} {
		_, err := config.Load(env(m))
		if err == nil {
			t.Errorf("Load(%v) succeeded, want an error", m)
			continue
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("Load(%v) error leaks the secret: %v", m, err)
		}
	}
}

func TestLogValueRedactsSecrets(t *testing.T) {
	t.Parallel()
	const (
		password = "Pa55-word!"
		token    = "admin-token-xyz"
		salt     = "visitor-salt-abc"
		dbURLPW  = "url-secret-123"
		natsPW   = "nats-secret-456"
		natsTok  = "nats-token-789"
	)
	c := mustLoad(t, map[string]string{
		"DATABASE_URL":    "postgres://app:" + dbURLPW + "@db:5432/admetric?sslmode=require&password=" + dbURLPW,
		"DB_HOST":         "db",
		"DB_PASSWORD":     password,
		"ADMIN_TOKEN":     token,
		"VISITOR_SALT":    salt,
		"NATS_URL":        "nats://u:" + natsPW + "@n1:4222,nats://" + natsTok + "@n2:4222",
		"TRUSTED_PROXIES": "10.0.0.0/8",
	})
	secrets := []string{password, token, salt, dbURLPW, natsPW, natsTok}

	for _, tc := range []struct {
		name    string
		handler func(*bytes.Buffer) slog.Handler
	}{
		{"text", func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) }},
		{"json", func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var buf bytes.Buffer
			slog.New(tc.handler(&buf)).Info("starting", "config", c)
			out := buf.String()
			for _, s := range secrets {
				if strings.Contains(out, s) {
					t.Errorf("log output contains secret %q:\n%s", s, out)
				}
			}
			for _, want := range []string{"[redacted]", "HTTP_ADDR", ":8080", "10.0.0.0/8", "app", "n1:4222", "n2:4222", "db:5432/admetric", "sslmode=require"} {
				if !strings.Contains(out, want) {
					t.Errorf("log output lacks %q:\n%s", want, out)
				}
			}
		})
	}

	t.Run("text attributes", func(t *testing.T) {
		t.Parallel()
		var buf bytes.Buffer
		slog.New(slog.NewTextHandler(&buf, nil)).Info("starting", "config", c)
		out := buf.String()
		for _, want := range []string{
			"config.DB_PASSWORD=[redacted]",
			"config.ADMIN_TOKEN=[redacted]",
			"config.VISITOR_SALT=[redacted]",
			`config.DATABASE_URL="postgres://app:[redacted]@db:5432/admetric?sslmode=require&password=[redacted]"`,
			"config.NATS_URL=nats://u:[redacted]@n1:4222,nats://[redacted]@n2:4222 ",
			"config.LOG_LEVEL=info",
			"config.DB_PORT=5432",
			"config.ROLLUP_DAY_RETENTION=43800h0m0s",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("log output lacks %s:\n%s", want, out)
			}
		}
	})
}

func TestLogValueUnsetSecrets(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("starting", "config", mustLoad(t, nil))
	out := buf.String()
	for _, name := range []string{"DB_PASSWORD", "ADMIN_TOKEN", "VISITOR_SALT", "DATABASE_URL"} {
		if want := "config." + name + `=""`; !strings.Contains(out, want) {
			t.Errorf("log output lacks %s:\n%s", want, out)
		}
	}
	if strings.Contains(out, "[redacted]") {
		t.Errorf("unset secrets shown as redacted:\n%s", out)
	}
	if !strings.Contains(out, "config.DATABASE_URL") || !strings.Contains(out, "config.NATS_LISTEN=127.0.0.1:4222") {
		t.Errorf("log output lacks settings:\n%s", out)
	}
}

func TestLogValueListsEverySetting(t *testing.T) {
	t.Parallel()
	v := mustLoad(t, nil).LogValue()
	if v.Kind() != slog.KindGroup {
		t.Fatalf("LogValue kind = %v, want group", v.Kind())
	}
	keys := map[string]bool{}
	for _, a := range v.Group() {
		keys[a.Key] = true
	}
	for _, name := range allVars {
		if strings.HasSuffix(name, "_FILE") {
			continue
		}
		if !keys[name] {
			t.Errorf("LogValue lacks %s", name)
		}
	}
	if n := reflect.TypeFor[config.Config]().NumField(); len(keys) != n {
		t.Errorf("LogValue has %d settings, Config has %d fields", len(keys), n)
	}
}

func TestPostgresDSN(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		env   map[string]string
		want  string
		local bool
	}{
		{"local", map[string]string{"DB_PASSWORD": "x"}, "", true},
		{"DATABASE_URL wins", map[string]string{"DATABASE_URL": "postgresql://a:b@c/d", "DB_HOST": "ignored", "DB_PORT": "1"}, "postgresql://a:b@c/d", false},
		{"DB_* escaped", map[string]string{"DB_HOST": "db.example", "DB_USER": "app", "DB_PASSWORD": "p@ss:w/rd", "DB_SSLMODE": "require"},
			"postgres://app:p%40ss%3Aw%2Frd@db.example:5432/admetric?sslmode=require", false},
		{"DB_* without password", map[string]string{"DB_HOST": "db", "DB_PORT": "6432", "DB_NAME": "ad metric"},
			"postgres://postgres@db:6432/ad%20metric?sslmode=disable", false},
		{"DB_* ipv6", map[string]string{"DB_HOST": "::1", "DB_PASSWORD": "x"}, "postgres://postgres:x@[::1]:5432/admetric?sslmode=disable", false},
		{"DB_* bracketed ipv6", map[string]string{"DB_HOST": "[::1]"}, "postgres://postgres@[::1]:5432/admetric?sslmode=disable", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := mustLoad(t, tc.env)
			if got := c.LocalPostgres(); got != tc.local {
				t.Errorf("LocalPostgres() = %v, want %v", got, tc.local)
			}
			if got := c.PostgresDSN(); got != tc.want {
				t.Errorf("PostgresDSN() = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestPostgresDSNRoundTrip(t *testing.T) {
	t.Parallel()
	for _, pw := range []string{"p@ss:w/rd", "a%20b", "?#&=+ ;[]", "ünïcode", `back\slash"quote'`} {
		c := mustLoad(t, map[string]string{"DB_HOST": "db", "DB_USER": "us:er@", "DB_PASSWORD": pw, "DB_NAME": "n/a?"})
		u, err := url.Parse(c.PostgresDSN())
		if err != nil {
			t.Errorf("password %q: PostgresDSN %q does not parse: %v", pw, c.PostgresDSN(), err)
			continue
		}
		got, _ := u.User.Password()
		if got != pw || u.User.Username() != "us:er@" || u.Host != "db:5432" || u.Path != "/n/a?" || u.Query().Get("sslmode") != "disable" {
			t.Errorf("password %q: PostgresDSN %q parses to user %q password %q host %q path %q", pw, c.PostgresDSN(), u.User.Username(), got, u.Host, u.Path)
		}
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		mutate func(*config.Config)
		want   string // variable named, "" for valid
	}{
		{"defaults", func(*config.Config) {}, ""},
		{"empty HTTP_ADDR", func(c *config.Config) { c.HTTPAddr = "" }, "HTTP_ADDR"},
		{"empty DATA_DIR", func(c *config.Config) { c.DataDir = "" }, "DATA_DIR"},
		{"empty NATS_LISTEN", func(c *config.Config) { c.NATSListen = "" }, ""},
		{"odd LOG_LEVEL", func(c *config.Config) { c.LogLevel = slog.LevelInfo + 2 }, "LOG_LEVEL"},
		{"empty LOG_FORMAT", func(c *config.Config) { c.LogFormat = "" }, "LOG_FORMAT"},
		{"upper-case DB_SSLMODE", func(c *config.Config) { c.DBSSLMode = "DISABLE" }, "DB_SSLMODE"},
		{"empty DB_USER", func(c *config.Config) { c.DBUser = "" }, "DB_USER"},
		{"empty DB_NAME", func(c *config.Config) { c.DBName = "" }, "DB_NAME"},
		{"empty DB_USER with DATABASE_URL", func(c *config.Config) { c.DBUser = ""; c.DatabaseURL = "postgres://x/y" }, ""},
		{"bad proxy", func(c *config.Config) { c.TrustedProxies = []string{""} }, "TRUSTED_PROXIES"},
		{"origin with a path", func(c *config.Config) { c.CORSAllowedOrigins = []string{"https://player.example.com/app"} }, "CORS_ALLOWED_ORIGINS"},
		{"public URL with a path", func(c *config.Config) { c.PublicURL = "https://ads.example.com/vast" }, "PUBLIC_URL"},
		{"public URL *", func(c *config.Config) { c.PublicURL = "*" }, "PUBLIC_URL"},
		{"short pixel secret", func(c *config.Config) { c.PixelSecret = "fifteen-bytes!!" }, "PIXEL_SECRET"},
		{"origin without scheme", func(c *config.Config) { c.CORSAllowedOrigins = []string{"player.example.com"} }, "CORS_ALLOWED_ORIGINS"},
		{"zero STREAM_MAX_AGE", func(c *config.Config) { c.StreamMaxAge = 0 }, "STREAM_MAX_AGE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := mustLoad(t, nil)
			tc.mutate(c)
			err := c.Validate()
			if tc.want == "" {
				if err != nil {
					t.Errorf("Validate() = %v, want nil", err)
				}
				return
			}
			wantInvalid(t, err, tc.want, "")
		})
	}
}

// TestValidateRules checks that each variable's own rule, and the rules
// across variables, apply to a Config changed by hand, one error per problem.
func TestValidateRules(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		mutate   func(*config.Config)
		want     string // variable named
		contains string
		problems int
	}{
		{"HTTP_ADDR", func(c *config.Config) { c.HTTPAddr = "8080" }, "HTTP_ADDR", `"8080" is not host:port`, 1},
		{"NATS_URL", func(c *config.Config) { c.NATSURL = "http://n1:4222" }, "NATS_URL", "nats://", 1},
		{"NATS_LISTEN", func(c *config.Config) { c.NATSListen = "4222" }, "NATS_LISTEN", "host:port", 1},
		{"NATS_REPLICAS", func(c *config.Config) { c.NATSReplicas = 6 }, "NATS_REPLICAS", "6 is out of range 1..5", 1},
		{"PARTITIONS", func(c *config.Config) { c.Partitions = 0 }, "PARTITIONS", "0 is out of range 1..1024", 1},
		{"SPOOL_MAX_BYTES", func(c *config.Config) { c.SpoolMaxBytes = 1<<20 - 1 }, "SPOOL_MAX_BYTES", "1048575 is below the minimum of 1048576 (1 MiB)", 1},
		{"MAX_PENDING_PUBLISHES", func(c *config.Config) { c.MaxPendingPublishes = 1<<20 + 1 }, "MAX_PENDING_PUBLISHES", "1048577 is out of range 1..1048576", 1},
		{"CACHE_MAX_BYTES", func(c *config.Config) { c.CacheMaxBytes = 0 }, "CACHE_MAX_BYTES", "0 is below the minimum", 1},
		{"PUBLISH_TIMEOUT", func(c *config.Config) { c.PublishTimeout = -time.Second }, "PUBLISH_TIMEOUT", "-1s must be greater than zero", 1},
		{"DATABASE_URL", func(c *config.Config) { c.DatabaseURL = "mysql://u@h/db" }, "DATABASE_URL", `scheme "mysql"`, 1},
		{"DB_HOST", func(c *config.Config) { c.DBHost = "db:5432" }, "DB_HOST", "DB_PORT", 1},
		{"DB_PORT", func(c *config.Config) { c.DBPort = 65536 }, "DB_PORT", "65536 is out of range 1..65535", 1},
		{"DB_USER and DB_NAME", func(c *config.Config) { c.DBUser, c.DBName = "", "" }, "DB_NAME", "must not be empty", 2},
		{"LOG_LEVEL", func(c *config.Config) { c.LogLevel = slog.LevelInfo + 2 }, "LOG_LEVEL", `"INFO+2" is not one of debug, info, warn, error`, 1},
		{"two bad proxies", func(c *config.Config) { c.TrustedProxies = []string{"a", "10.0.0.1", "b"} }, "TRUSTED_PROXIES", `"b" is not an IP address or CIDR prefix`, 2},
		{"duplicate window", func(c *config.Config) { c.DuplicateWindow = 169 * time.Hour }, "STREAM_DUPLICATE_WINDOW", "longer than STREAM_MAX_AGE (168h0m0s)", 1},
		{"zero STREAM_MAX_AGE not compared", func(c *config.Config) { c.StreamMaxAge = 0 }, "STREAM_MAX_AGE", "greater than zero", 1},
		{"minute over hour", func(c *config.Config) { c.MinuteRetention = 2401 * time.Hour }, "ROLLUP_MINUTE_RETENTION", "longer than ROLLUP_HOUR_RETENTION", 1},
		{"hour over day", func(c *config.Config) { c.HourRetention = 43801 * time.Hour }, "ROLLUP_HOUR_RETENTION", "longer than ROLLUP_DAY_RETENTION", 1},
		{"zero hour not compared", func(c *config.Config) { c.HourRetention = 0 }, "ROLLUP_HOUR_RETENTION", "greater than zero", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := mustLoad(t, nil)
			tc.mutate(c)
			err := c.Validate()
			wantInvalid(t, err, tc.want, tc.contains)
			if err == nil {
				return
			}
			var joined interface{ Unwrap() []error }
			if !errors.As(err, &joined) || len(joined.Unwrap()) != tc.problems {
				t.Errorf("want %d joined errors, got:\n%v", tc.problems, err)
			}
		})
	}
}

func TestValidateZeroConfig(t *testing.T) {
	t.Parallel()
	err := new(config.Config).Validate()
	for _, name := range []string{"HTTP_ADDR", "DATA_DIR", "DB_PORT", "DB_SSLMODE", "LOG_FORMAT", "ROLLUP_MINUTE_RETENTION", "SHUTDOWN_TIMEOUT", "CATALOG_REFRESH"} {
		wantInvalid(t, err, name, "")
	}
}

func TestEnvExampleListsEveryVariable(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(filepath.Join("..", ".env.example"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range allVars {
		if !strings.Contains(string(b), "# "+name+"=") {
			t.Errorf(".env.example lacks a commented-out %s=", name)
		}
	}
}

// TestReadAccessSettings: ANALYTICS_TOKEN is a secret of at least 16 bytes,
// taken verbatim and never logged; READ_TOKEN_REFRESH a positive duration;
// HTTPLoopback tells a loopback HTTP_ADDR from one that listens beyond it.
func TestReadAccessSettings(t *testing.T) {
	t.Parallel()
	const token = " analytics-token-0123 "
	c := mustLoad(t, map[string]string{"ANALYTICS_TOKEN": token, "READ_TOKEN_REFRESH": "500ms"})
	if c.AnalyticsToken != token || c.ReadTokenRefresh != 500*time.Millisecond {
		t.Errorf("loaded %q, %v; want the token verbatim and 500ms", c.AnalyticsToken, c.ReadTokenRefresh)
	}
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("starting", "config", c)
	if out := buf.String(); strings.Contains(out, "analytics-token") || !strings.Contains(out, "config.ANALYTICS_TOKEN=[redacted]") {
		t.Errorf("ANALYTICS_TOKEN not redacted:\n%s", out)
	}
	_, err := config.Load(env(map[string]string{"ANALYTICS_TOKEN": "short-secret"}))
	wantInvalid(t, err, "ANALYTICS_TOKEN", "want at least 16")
	if err != nil && strings.Contains(err.Error(), "short-secret") {
		t.Errorf("error leaks the token: %v", err)
	}
	_, err = config.Load(env(map[string]string{"READ_TOKEN_REFRESH": "0s"}))
	wantInvalid(t, err, "READ_TOKEN_REFRESH", "")

	for addr, want := range map[string]bool{
		":8080": false, "0.0.0.0:8080": false, "[::]:8080": false, "192.0.2.7:80": false,
		"127.0.0.1:8080": true, "[::1]:8080": true, "localhost:8080": true,
	} {
		if got := mustLoad(t, map[string]string{"HTTP_ADDR": addr}).HTTPLoopback(); got != want {
			t.Errorf("HTTP_ADDR %s: HTTPLoopback %v, want %v", addr, got, want)
		}
	}
}

// TestPrivacySettings: IP_TRUNCATE is off and ARCHIVE_RETENTION 0 (keep
// forever) by default; a retention is written in days or as a duration,
// and is at least a day.
func TestPrivacySettings(t *testing.T) {
	t.Parallel()
	c := mustLoad(t, nil)
	if c.IPTruncate || c.ArchiveRetention != 0 {
		t.Errorf("defaults: IP_TRUNCATE %v, ARCHIVE_RETENTION %v", c.IPTruncate, c.ArchiveRetention)
	}
	for v, want := range map[string]time.Duration{"395d": 395 * 24 * time.Hour, "9480h": 9480 * time.Hour, "0": 0, "": 0, "1d": 24 * time.Hour} {
		c := mustLoad(t, map[string]string{"ARCHIVE_RETENTION": v, "IP_TRUNCATE": "true"})
		if c.ArchiveRetention != want || !c.IPTruncate {
			t.Errorf("ARCHIVE_RETENTION=%q: %v (IP_TRUNCATE %v), want %v", v, c.ArchiveRetention, c.IPTruncate, want)
		}
	}
	for _, v := range []string{"12h", "-1d", "1.5d", "d", "a year"} {
		_, err := config.Load(env(map[string]string{"ARCHIVE_RETENTION": v}))
		wantInvalid(t, err, "ARCHIVE_RETENTION", "")
	}
}
