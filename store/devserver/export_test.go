package devserver

// Kill sends SIGKILL to the postmaster, a crash, and waits until it and its
// backends are gone (see killLocked); a later start on the same Dir performs
// crash recovery. Only the tests of this package crash a server this way, so
// it is not exported.
func (p *Postgres) Kill() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.killLocked()
}

// ForkThread returns the OS thread (tid) that forked the running postmaster,
// whose exit would send the postmaster its parent-death signal; 0 when the
// server is not running.
func (p *Postgres) ForkThread() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc == nil {
		return 0
	}
	return p.proc.child.tid
}
