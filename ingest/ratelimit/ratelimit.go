// Package ratelimit holds a token bucket per client (golang.org/x/time/rate)
// in a set bounded in size: what the intake uses to keep one client from
// taking the capacity of all.
//
// The set forgets a client whose bucket has refilled: a full bucket is what
// a client never seen gets, so forgetting it changes nothing. Beyond
// MaxClients the least recently seen client is forgotten even so, and gets a
// full bucket if it comes back: under a flood of addresses memory stays
// bounded, at the cost of some leniency to the clients forgotten early.
//
// It imports nothing of the module.
package ratelimit

import (
	"container/list"
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Limiter answers whether a client may spend tokens now. A nil *Limiter
// allows everything. Safe for concurrent use. Build with New.
type Limiter struct {
	every rate.Limit
	burst int
	max   int

	mu      sync.Mutex
	clients map[string]*list.Element // of *client
	order   list.List                // most recently seen first
}

type client struct {
	key    string
	bucket *rate.Limiter
}

// New returns a Limiter that lets each client spend perSecond tokens a
// second on average and burst at once, remembering at most maxClients
// clients (at least 1). It returns nil, which allows everything, when
// perSecond is 0 or less.
func New(perSecond float64, burst, maxClients int) *Limiter {
	if perSecond <= 0 {
		return nil
	}
	return &Limiter{every: rate.Limit(perSecond), burst: max(burst, 1), max: max(maxClients, 1),
		clients: map[string]*list.Element{}}
}

// Burst is how many tokens a client may spend at once; a cost above it
// costs it.
func (l *Limiter) Burst() int {
	if l == nil {
		return math.MaxInt
	}
	return l.burst
}

// Allow spends n tokens of key's bucket (a cost above the burst costs the
// burst: every request can pass once the bucket is full) at now. When the
// bucket holds fewer it spends none and returns false and how long key must
// wait until it holds them.
func (l *Limiter) Allow(key string, n int, now time.Time) (ok bool, wait time.Duration) {
	if l == nil {
		return true, 0
	}
	n = min(max(n, 1), l.burst)
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bucket(key, now)
	r := b.ReserveN(now, n)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

// bucket returns key's bucket, marked as the most recently seen, forgetting
// the clients whose buckets are full again and, beyond max, the least
// recently seen. l.mu is held.
func (l *Limiter) bucket(key string, now time.Time) *rate.Limiter {
	if e, ok := l.clients[key]; ok {
		l.order.MoveToFront(e)
		return e.Value.(*client).bucket
	}
	for e := l.order.Back(); e != nil; e = l.order.Back() {
		c := e.Value.(*client)
		if l.order.Len() < l.max && c.bucket.TokensAt(now) < float64(l.burst) {
			break
		}
		l.order.Remove(e)
		delete(l.clients, c.key)
	}
	c := &client{key: key, bucket: rate.NewLimiter(l.every, l.burst)}
	l.clients[key] = l.order.PushFront(c)
	return c.bucket
}

// Clients is how many clients l remembers.
func (l *Limiter) Clients() int {
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.order.Len()
}

// RetryAfter is wait as a Retry-After value: whole seconds, rounded up, at
// least 1.
func RetryAfter(wait time.Duration) int {
	return max(1, int(math.Ceil(wait.Seconds())))
}
