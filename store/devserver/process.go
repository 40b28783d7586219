package devserver

import (
	"bufio"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// process is one run of the postmaster.
type process struct {
	child   *child
	drained chan struct{} // closed at the end of the output: every server process is gone
	tail    *outputTail
}

// readOutput logs each line of server output and keeps the last ones for
// error messages.
func (proc *process) readOutput(r *os.File, logger *slog.Logger) {
	defer close(proc.drained)
	defer r.Close()
	br := bufio.NewReader(r)
	for {
		line, err := br.ReadString('\n')
		line = strings.TrimRight(line, "\r\n")
		if line != "" {
			proc.tail.add(line)
			logger.Debug(line, "component", "postgres")
		}
		if err != nil {
			return
		}
	}
}

// kill SIGKILLs the postmaster and waits for it and, up to
// drainTimeout, for the other server processes (each of which postgres
// puts in a session of its own, so they are not signalled; they exit when
// they notice the postmaster's death). It reports whether they are all gone.
func (proc *process) kill() bool {
	_ = proc.child.cmd.Process.Kill() // os.ErrProcessDone once reaped
	<-proc.child.done
	return proc.waitDrained(drainTimeout)
}

func (proc *process) waitDrained(timeout time.Duration) bool {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-proc.drained:
		return true
	case <-t.C:
		return false
	}
}

// bindFailed reports whether the server could not listen on its port.
func (proc *process) bindFailed() bool {
	s := proc.tail.String()
	return strings.Contains(s, "could not bind") ||
		strings.Contains(s, "could not create any TCP/IP sockets") ||
		strings.Contains(s, "Address already in use")
}

// outputTail keeps the last max lines of output.
type outputTail struct {
	mu    sync.Mutex
	max   int
	lines []string
}

func (t *outputTail) add(line string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) == t.max {
		t.lines = slices.Delete(t.lines, 0, 1)
	}
	t.lines = append(t.lines, line)
}

func (t *outputTail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) == 0 {
		return "(no output)"
	}
	return strings.Join(t.lines, "\n")
}

// child is a process started from a dedicated OS thread, so that its
// Pdeathsig fires only when this process dies. The thread stays locked to its
// goroutine, which blocks in Wait, until the child has exited; the goroutine
// then exits without unlocking, so the runtime retires the thread instead of
// reusing it.
type child struct {
	cmd  *exec.Cmd
	tid  int           // the OS thread that forked the child and waits for it
	done chan struct{} // closed when Wait returned
	err  error         // Wait's result; read only after done is closed
}

func startChild(cmd *exec.Cmd) (*child, error) {
	c := &child{cmd: cmd, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Deliberately never unlocked, see child.
		c.tid = syscall.Gettid()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		c.err = cmd.Wait()
		close(c.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return c, nil
}
