// Package api is the read side and the ad management of the HTTP API: ads,
// analytics from the rollups, health and readiness. Event intake lives in
// package ingest.
package api

import (
	"errors"

	"github.com/admetric/admetric/ingest/event"
)

// fieldMessage is what a validation error says about its field, without the
// package prefix and field name that its Error adds.
func fieldMessage(err error) string {
	var fe *event.FieldError
	if errors.As(err, &fe) {
		return fe.Message
	}
	return err.Error()
}
