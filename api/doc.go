// Package api is the read side of the HTTP API and the ad management: the
// ads (from the in-memory Catalog of the ads table), analytics summed from the
// rollups (through package rollupcache), health and readiness. Event intake
// lives in package ingest; every error answer is written by package respond.
package api
