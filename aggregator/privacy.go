package aggregator

import (
	"bytes"
	"encoding/json"
	"strings"

	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/store"
)

// scrubAddress returns a poison message's data fit for the dead-letter
// stream of a deployment that truncates addresses: a JSON object with its
// "ip" member (matched as encoding/json matches it, without regard to case)
// truncated, or dropped when it is not an address; anything that is not a
// JSON object, nothing, since it cannot be told where an address would be
// in it. The poison reason, subject and sequence still say what it was.
func scrubAddress(data []byte) []byte {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(trimmed, &obj); err != nil {
		return nil
	}
	changed := false
	for k, raw := range obj {
		if !strings.EqualFold(k, "ip") {
			continue
		}
		changed = true
		var ip string
		if json.Unmarshal(raw, &ip) == nil {
			if t := event.TruncateIP(ip); t != "" {
				obj[k], _ = json.Marshal(t)
				continue
			}
		}
		delete(obj, k)
	}
	if !changed {
		return data
	}
	out, err := json.Marshal(obj)
	if err != nil {
		return nil
	}
	return out
}

// isDecision reports whether msg is a decision message (event IDs and
// reasons, no addresses) rather than an event stream's.
func isDecision(msg interface{ Subject() string }) bool {
	_, _, _, isEvent := store.ParseEventSubject(msg.Subject())
	return !isEvent
}
