package aggregator

import (
	"context"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/admetric/admetric/store"
)

// LeaderSpreader keeps the leaders of the partition streams spread over the
// NATS servers: a stream's leader takes its publishes and feeds its
// consumers, so streams led by one server cap the cluster at that server.
// JetStream places new streams' leaders, but a server that restarts leads
// nothing until leaderships move back to it; the spreader moves one every
// Every while one server leads two or more than another (store.SpreadLeaders).
// Several processes may run one; a move made twice is harmless.
type LeaderSpreader struct {
	JS         jetstream.JetStream
	Partitions int
	// Every is the pause between looks; default 30s.
	Every  time.Duration
	Logger *slog.Logger
}

// Run spreads the leaders until ctx ends; a failure is logged and tried again
// at the next look. It returns nil.
func (s *LeaderSpreader) Run(ctx context.Context) error {
	every := s.Every
	if every <= 0 {
		every = 30 * time.Second
	}
	logger := s.Logger.With("component", "leader-spreader")
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		stream, to, err := store.SpreadLeaders(lctx, s.JS, s.Partitions)
		cancel()
		switch {
		case err != nil && ctx.Err() == nil:
			logger.Warn("spreading the partition streams' leaders failed", "err", err)
		case stream != "":
			logger.Info("moved a partition stream's leader", "stream", stream, "to", to)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
