package store

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// SpreadLeaders moves the leadership of at most one partition stream, when
// one server leads two or more streams more than another server that
// replicates one of them: it asks that stream's leader to step down in
// favour of the other server. Run it now and then (a restarted server leads
// nothing until leaders move back to it); it moves one at a time because a
// move pauses that stream for an election. It returns the stream moved and
// to whom, or "" when the leaders are spread.
func SpreadLeaders(ctx context.Context, js jetstream.JetStream, partitions int) (stream, to string, err error) {
	infos, err := partitionClusters(ctx, js, partitions)
	if err != nil {
		return "", "", err
	}
	counts := leaderCounts(infos)
	// The busiest leader's streams, each to its least busy current replica.
	var best struct {
		stream, to string
		gap        int
	}
	for name, ci := range infos {
		if ci.Leader == "" {
			continue
		}
		for _, r := range ci.Replicas {
			if !r.Current || r.Offline {
				continue
			}
			if gap := counts[ci.Leader] - counts[r.Name]; gap > best.gap || gap == best.gap && gap > 0 && name < best.stream {
				best.stream, best.to, best.gap = name, r.Name, gap
			}
		}
	}
	if best.gap < 2 {
		return "", "", nil
	}
	req, _ := json.Marshal(map[string]any{"placement": map[string]string{"preferred": best.to}})
	msg, err := js.Conn().RequestWithContext(ctx, jetstream.DefaultAPIPrefix+"STREAM.LEADER.STEPDOWN."+best.stream, req)
	if err != nil {
		return "", "", fmt.Errorf("store: stepping down the leader of %s: %w", best.stream, err)
	}
	var resp struct {
		Success bool `json:"success"`
		Error   *struct {
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return "", "", fmt.Errorf("store: stepping down the leader of %s: answer %q: %w", best.stream, msg.Data, err)
	}
	if !resp.Success {
		description := "refused"
		if resp.Error != nil {
			description = resp.Error.Description
		}
		return "", "", fmt.Errorf("store: stepping down the leader of %s: %s", best.stream, description)
	}
	return best.stream, best.to, nil
}

// partitionClusters returns the cluster information of each partition
// stream, by stream name.
func partitionClusters(ctx context.Context, js jetstream.JetStream, partitions int) (map[string]*jetstream.ClusterInfo, error) {
	infos := make(map[string]*jetstream.ClusterInfo, partitions)
	for p := range partitions {
		name := EventStreamName(p)
		s, err := js.Stream(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("store: stream %s: %w", name, err)
		}
		if ci := s.CachedInfo().Cluster; ci != nil {
			infos[name] = ci
		}
	}
	return infos, nil
}

func leaderCounts(infos map[string]*jetstream.ClusterInfo) map[string]int {
	counts := map[string]int{}
	for _, ci := range infos {
		if ci.Leader != "" {
			counts[ci.Leader]++
		}
		for _, r := range ci.Replicas {
			counts[r.Name] += 0
		}
	}
	return counts
}
