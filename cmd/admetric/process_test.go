package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// buildBinary compiles admetric once for the tests that run it as a child process.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "admetric")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// proc is admetric running as a child process.
type proc struct {
	cmd      *exec.Cmd
	httpAddr string
	exited   chan error
	reaped   bool // exited was received from
}

// startProc starts bin with env and waits until it logs that it is up.
func startProc(t *testing.T, bin string, env map[string]string) *proc {
	t.Helper()
	return startProcArgs(t, bin, nil, env)
}

func startProcArgs(t *testing.T, bin string, args []string, env map[string]string) *proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "LOG_FORMAT=json")
	for k, v := range rateLimitsOff {
		cmd.Env = append(cmd.Env, k+"="+v) // env may set them again: the last one counts
	}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, exited: make(chan error, 1)}
	up := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var line struct {
				Msg  string `json:"msg"`
				HTTP string `json:"http"`
			}
			if json.Unmarshal(sc.Bytes(), &line) != nil {
				t.Logf("child: %s", sc.Text()) // not a log line: a configuration error, a panic
				continue
			}
			if line.Msg == "admetric is up" {
				up <- strings.TrimPrefix(line.HTTP, "http://")
			}
			if line.Msg != "" && strings.Contains(sc.Text(), `"level":"ERROR"`) {
				t.Logf("child: %s", sc.Text())
			}
		}
		p.exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		if !p.reaped {
			_ = cmd.Process.Kill()
			if err := <-p.exited; err == nil {
				t.Log("admetric exited 0 before the kill")
			}
		}
	})
	select {
	case p.httpAddr = <-up:
		return p
	case err := <-p.exited:
		p.reaped = true
		t.Fatalf("admetric exited before it was up: %v", err)
	case <-time.After(2 * time.Minute):
		t.Fatal("admetric did not come up within 2 minutes")
	}
	return nil
}

// kill SIGKILLs the process and waits until it is gone.
func (p *proc) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := <-p.exited; err == nil {
		t.Log("the process exited 0 before the kill")
	}
	p.reaped = true
}

// stop sends sig and returns how long the exit took and the exit error.
func (p *proc) stop(t *testing.T, sig syscall.Signal) (time.Duration, error) {
	t.Helper()
	start := time.Now()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.exited:
		p.reaped = true
		return time.Since(start), err
	case <-time.After(30 * time.Second):
		t.Fatalf("admetric did not exit within 30 s of %s", sig)
	}
	return 0, nil
}

// TestSignalShutdownAndRestart runs the built binary: on SIGTERM and on SIGINT
// it exits 0 within 10 seconds having stopped its private PostgreSQL, and a
// restart on the same DATA_DIR still has the ad and its counts.
func TestSignalShutdownAndRestart(t *testing.T) {
	bin := buildBinary(t)
	dataDir := testDataDir(t)
	env := testEnv(dataDir)
	env["LOG_LEVEL"] = "info"

	p := startProc(t, bin, env)
	c := client{t: t, base: "http://" + p.httpAddr}
	adJSON, _ := json.Marshal(map[string]any{"id": "restart-ad", "title": "Survives restarts"})
	if status, body := c.do(http.MethodPost, "/ads", testToken, "application/json", adJSON); status != http.StatusCreated {
		t.Fatalf("create: status %d body %v", status, body)
	}
	for i := range 3 {
		if status, body := c.postJSON("/ads/click", map[string]any{"ad_id": "restart-ad", "ip": fmt.Sprintf("192.0.2.%d", i+1), "playback_time": 4}); status != http.StatusAccepted {
			t.Fatalf("click: status %d body %v", status, body)
		}
	}
	c.analytics("timeframe=1h&ad_id=restart-ad", func(a map[string]any) bool { return num(a, "clicks") == 3 })

	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		took, err := p.stop(t, sig)
		if err != nil {
			t.Fatalf("exit after %s: %v, want status 0", sig, err)
		}
		t.Logf("exited 0 %s after %s", took, sig)
		if took > 10*time.Second {
			t.Errorf("exit after %s took %s, want at most 10 s", sig, took)
		}
		if _, err := os.Stat(filepath.Join(dataDir, "pg", "postmaster.pid")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("private PostgreSQL still running after %s (postmaster.pid: %v)", sig, err)
		}

		p = startProc(t, bin, env)
		c = client{t: t, base: "http://" + p.httpAddr}
		if status, body := c.do(http.MethodGet, "/ads/restart-ad", "", "", nil); status != http.StatusOK {
			t.Fatalf("after restart: ad: status %d body %v", status, body)
		}
		body, _ := c.analytics("timeframe=1h&ad_id=restart-ad", func(a map[string]any) bool { return true })
		a := body["ads"].([]any)[0].(map[string]any)
		if num(a, "clicks") != 3 || num(a, "unique_visitors") != 3 || num(a, "avg_playback_time") != 4 {
			t.Fatalf("after restart: %v, want 3 clicks from 3 visitors at 4 s", a)
		}
	}
	if _, err := p.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("final exit: %v", err)
	}

	// With the service stopped, `admetric rebuild` recomputes today's rollups
	// from the archive on the same DATA_DIR, and the counts stay.
	today := time.Now().UTC().Format(time.DateOnly)
	tomorrow := time.Now().UTC().AddDate(0, 0, 1).Format(time.DateOnly)
	rb := exec.Command(bin, "rebuild", "--from", today, "--to", tomorrow)
	rb.Env = os.Environ()
	for k, v := range env {
		rb.Env = append(rb.Env, k+"="+v)
	}
	if out, err := rb.CombinedOutput(); err != nil || !strings.Contains(string(out), "rebuild done") {
		t.Fatalf("rebuild: %v\n%s", err, out)
	}
	p = startProc(t, bin, env)
	c = client{t: t, base: "http://" + p.httpAddr}
	body, _ := c.analytics("timeframe=1h&ad_id=restart-ad", func(a map[string]any) bool { return true })
	if a := body["ads"].([]any)[0].(map[string]any); num(a, "clicks") != 3 || num(a, "unique_visitors") != 3 {
		t.Fatalf("after rebuild: %v, want 3 clicks from 3 visitors", a)
	}
	if _, err := p.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("exit after rebuild: %v", err)
	}
}
