package aggregator

import (
	"context"
	"time"

	"github.com/cenkalti/backoff/v5"
)

// retryForever returns the options of a backoff.Retry that tries until the
// operation succeeds or its context ends, pausing between tries for a
// jittered, exponentially growing time from initial to most, and telling
// notify of each failure.
func retryForever(initial, most time.Duration, notify backoff.Notify) []backoff.RetryOption {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval = initial, most
	return []backoff.RetryOption{
		backoff.WithBackOff(b),
		backoff.WithMaxElapsedTime(0),
		backoff.WithNotify(notify),
	}
}

// pause waits d or until ctx ends, whichever comes first.
func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
