package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestRebuildRefusesBadArguments: the rebuild subcommand answers a flag or
// setting it cannot use with exit code 2 and a message naming it, before it
// opens anything.
func TestRebuildRefusesBadArguments(t *testing.T) {
	env := func(name string) (string, bool) { return "", false }
	badEnv := func(name string) (string, bool) {
		if name == "PARTITIONS" {
			return "zero", true
		}
		return "", false
	}
	for _, tc := range []struct {
		name   string
		args   []string
		lookup func(string) (string, bool)
		want   string
	}{
		{"no flags", nil, env, "--from is required"},
		{"no to", []string{"--from", "2026-11-01"}, env, "--to is required"},
		{"unknown flag", []string{"--since", "2026-11-01"}, env, "usage: admetric rebuild"},
		{"bad from", []string{"--from", "yesterday", "--to", "2026-11-02"}, env, `--from: "yesterday" is neither RFC 3339 nor YYYY-MM-DD`},
		{"bad to", []string{"--from", "2026-11-01", "--to", "2026-13-01"}, env, "--to:"},
		{"from after to", []string{"--from", "2026-11-02", "--to", "2026-11-01"}, env, "--from must be before --to"},
		{"empty range", []string{"--from", "2026-11-01T00:00:00Z", "--to", "2026-11-01"}, env, "--from must be before --to"},
		{"bad setting", []string{"--from", "2026-11-01", "--to", "2026-11-02"}, badEnv, "PARTITIONS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			if code := runRebuild(context.Background(), tc.args, tc.lookup, &stderr); code != 2 {
				t.Fatalf("exit code %d, want 2; stderr:\n%s", code, stderr.String())
			}
			if !strings.Contains(stderr.String(), tc.want) {
				t.Fatalf("stderr does not say %q:\n%s", tc.want, stderr.String())
			}
		})
	}
}
