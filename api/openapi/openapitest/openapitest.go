// Package openapitest checks HTTP answers against AdMetric's OpenAPI document
// (package openapi), for tests. Handler wraps a server's handler (a Gin
// engine under httptest, an in-process daemon), Transport wraps a client's
// (for a service run as a subprocess); both fail the test that made the
// request when an answer departs from the document: a status it does not
// list for the operation, a missing or mistyped header or field, a body
// where it describes none, a route it does not describe.
//
// Only answers are checked. Requests are not: tests send bad ones on
// purpose, and the service must answer those as documented. A request's
// method and path only select the operation. A route the document does not
// describe may only be answered as the service answers unknown routes: 404
// (components/responses/NoRoute) or, when the path takes other methods, 405
// (NoMethod), each with the error body.
//
// Validation is kin-openapi's (openapi3filter.ValidateResponse). For an
// OpenAPI 3.1 document it compiles each schema with a JSON Schema 2020-12
// validator (santhosh-tekuri/jsonschema), which validates any schema that
// uses a keyword only 2020-12 has (const, unevaluatedProperties,
// propertyNames...) or no $ref to a component; the others go through
// kin-openapi's own validator, which reads 3.1's type arrays ("null"
// included) too.
package openapitest

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"

	"github.com/admetric/admetric/api/openapi"
)

// TB is the part of testing.TB the checks report to; *testing.T and
// *testing.B are TBs. Errorf must be safe for concurrent use.
type TB interface {
	Helper()
	Errorf(format string, args ...any)
}

// Handler returns h, checking each answer it writes against the document
// once the request is served; t.Errorf reports a departure. An answer to a
// client that went away (the request's context ended) is not checked: nobody
// reads it. The answer is passed through as it is written, but net/http
// sends what it buffered only once the check is done: the check (about a
// millisecond, ten under -race for a large report) delays the answer.
func Handler(t TB, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The request as it came: a router may rewrite its URL (Gin does,
		// to redirect a path with a trailing slash).
		asked := *r
		u := *r.URL
		asked.URL = &u
		rec := &recorder{ResponseWriter: w}
		h.ServeHTTP(rec, r)
		if r.Context().Err() != nil {
			return
		}
		if !rec.wrote {
			rec.snapshot(http.StatusOK) // as net/http answers a handler that wrote nothing
		}
		if err := Check(&asked, rec.status, rec.header, rec.body.Bytes()); err != nil {
			t.Errorf("%v", err)
		}
	})
}

// Transport returns a RoundTripper that sends each request through base
// (http.DefaultTransport when nil) and checks the answer against the
// document; t.Errorf reports a departure. It reads each answer's body
// whole before returning it.
func Transport(t TB, base http.RoundTripper) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return &transport{t: t, base: base}
}

type transport struct {
	t    TB
	base http.RoundTripper
}

func (tr *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := tr.base.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		// The answer broke off (the service was killed, say): the caller
		// sees what came and then the error, as it would have; there is no
		// whole answer to check.
		resp.Body = io.NopCloser(io.MultiReader(bytes.NewReader(body), errReader{err}))
		return resp, nil
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	if err := Check(req, resp.StatusCode, resp.Header, body); err != nil {
		tr.t.Errorf("%v", err)
	}
	return resp, nil
}

// CloseIdleConnections closes base's idle connections, as
// http.Client.CloseIdleConnections asks.
func (tr *transport) CloseIdleConnections() {
	if c, ok := tr.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// recorder passes an answer through to the ResponseWriter and keeps a copy:
// the status and headers as they were sent, and the body.
type recorder struct {
	http.ResponseWriter
	wrote  bool
	status int
	header http.Header
	body   bytes.Buffer
}

func (r *recorder) snapshot(status int) {
	r.wrote, r.status, r.header = true, status, r.ResponseWriter.Header().Clone()
}

func (r *recorder) WriteHeader(status int) {
	if !r.wrote && status >= 200 { // 1xx answers are not the answer
		r.snapshot(status)
	}
	r.ResponseWriter.WriteHeader(status)
}

func (r *recorder) Write(b []byte) (int, error) {
	if !r.wrote {
		r.snapshot(http.StatusOK)
	}
	r.body.Write(b)
	return r.ResponseWriter.Write(b)
}

// Flush lets a handler flush through the recorder.
func (r *recorder) Flush() {
	if !r.wrote {
		r.snapshot(http.StatusOK)
	}
	http.NewResponseController(r.ResponseWriter).Flush() //nolint:errcheck // as http.Flusher, which has no error
}

// Unwrap gives http.ResponseController the ResponseWriter underneath.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// Check returns what is wrong with an answer to req, of status with header
// and body, by the document: nil when nothing is. The error names the
// request's method, path and the status. A body with Content-Encoding gzip is
// checked decompressed.
func Check(req *http.Request, status int, header http.Header, body []byte) error {
	if err := check(req, status, header, body); err != nil {
		return fmt.Errorf("openapitest: %s %s answered %d: %w%s", req.Method, req.URL.RequestURI(), status, err, excerpt(header, body))
	}
	return nil
}

func check(req *http.Request, status int, header http.Header, body []byte) error {
	s, err := loadSpec()
	if err != nil {
		return err
	}
	if strings.EqualFold(header.Get("Content-Encoding"), "gzip") {
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err != nil {
			return fmt.Errorf("the body is not gzip, as its Content-Encoding says: %w", err)
		}
		if body, err = io.ReadAll(zr); err != nil {
			return fmt.Errorf("the body is not gzip, as its Content-Encoding says: %w", err)
		}
	}
	route, params := s.find(req.Method, req.URL.Path)
	var op string
	if route.Operation == nil {
		// Not a route of the document: the unknown-route answers only.
		route, op = s.unknown(req.Method, req.URL.Path)
	} else {
		op = req.Method + " " + route.Path
	}
	resp := route.Operation.Responses.Status(status)
	if resp == nil {
		resp = route.Operation.Responses.Default()
	}
	if resp == nil || resp.Value == nil {
		return fmt.Errorf("%s does not document status %d", op, status)
	}
	err = openapi3filter.ValidateResponse(context.Background(), &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route},
		Status:                 status,
		Header:                 header,
		Body:                   io.NopCloser(bytes.NewReader(body)),
		Options:                options,
	})
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if len(resp.Value.Content) == 0 && len(body) > 0 && req.Method != http.MethodHead {
		return fmt.Errorf("%s: status %d has no body in the document, but the answer has %d bytes", op, status, len(body))
	}
	return nil
}

// options make ValidateResponse fail on an undocumented status and report
// every departure of a body, each in one line.
var options = func() *openapi3filter.Options {
	o := &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true}
	o.WithCustomSchemaErrorFunc(schemaMessage)
	return o
}()

// schemaMessage says where a body departs from its schema and how, without
// the schema and the value that kin-openapi's messages show in full.
func schemaMessage(e *openapi3.SchemaError) string {
	// The JSON Schema 2020-12 validator's reasons name the place themselves.
	if rest, ok := strings.CutPrefix(e.Reason, `error at "`); ok {
		if _, msg, ok := strings.Cut(rest, `": `); ok {
			return msg
		}
	}
	return fmt.Sprintf("at '/%s': %s", strings.Join(e.JSONPointer(), "/"), e.Reason)
}

// excerpt is the start of a body, to show with a departure.
func excerpt(header http.Header, body []byte) string {
	const max = 300
	if len(body) == 0 {
		return ""
	}
	ct := header.Get("Content-Type")
	if !strings.Contains(ct, "json") && !strings.HasPrefix(ct, "text/") {
		return fmt.Sprintf(" (body: %d bytes of %s)", len(body), ct)
	}
	if len(body) > max {
		return fmt.Sprintf(" (body: %s...)", body[:max])
	}
	return fmt.Sprintf(" (body: %s)", body)
}

// Operations lists the document's operations as "METHOD /path/{param}",
// sorted: what a service that answers the whole API routes.
func Operations() ([]string, error) {
	s, err := loadSpec()
	if err != nil {
		return nil, err
	}
	var ops []string
	for _, p := range s.paths {
		for method := range p.item.Operations() {
			ops = append(ops, method+" "+p.path)
		}
	}
	slices.Sort(ops)
	return ops, nil
}

// spec is the loaded document and its paths in matching order.
type spec struct {
	doc   *openapi3.T
	paths []pathTemplate
	// noRoute, noMethod and slashRedirect are the operations of the
	// unknown-route answers.
	noRoute, noMethod, slashRedirect *openapi3.Operation
}

type pathTemplate struct {
	path     string
	segments []string
	item     *openapi3.PathItem
}

// loadSpec loads and validates the document once.
var loadSpec = sync.OnceValues(func() (*spec, error) {
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(openapi.Document())
	if err != nil {
		return nil, fmt.Errorf("loading openapi.json: %w", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		return nil, fmt.Errorf("openapi.json is not a valid OpenAPI document: %w", err)
	}
	s := &spec{doc: doc}
	for _, p := range doc.Paths.InMatchingOrder() {
		s.paths = append(s.paths, pathTemplate{path: p, segments: strings.Split(p, "/"), item: doc.Paths.Value(p)})
	}
	only := func(status int, name string) (*openapi3.Operation, error) {
		ref := doc.Components.Responses[name]
		if ref == nil {
			return nil, fmt.Errorf("openapi.json has no components/responses/%s", name)
		}
		op := openapi3.NewOperation()
		op.Responses = openapi3.NewResponses(openapi3.WithStatus(status, ref))
		return op, nil
	}
	if s.noRoute, err = only(http.StatusNotFound, "NoRoute"); err != nil {
		return nil, err
	}
	if s.noMethod, err = only(http.StatusMethodNotAllowed, "NoMethod"); err != nil {
		return nil, err
	}
	if s.slashRedirect, err = only(http.StatusMovedPermanently, "TrailingSlashRedirect"); err != nil {
		return nil, err
	}
	s.slashRedirect.Responses.Set(strconv.Itoa(http.StatusTemporaryRedirect), doc.Components.Responses["TrailingSlashRedirect"])
	return s, nil
})

// find returns the route of the document that serves method on path, as
// Gin routes: each method apart, and among the paths that take it the first
// that matches, those with fewer parameters first. The route has no
// Operation when there is none.
func (s *spec) find(method, path string) (*routers.Route, map[string]string) {
	segs := strings.Split(path, "/")
	for _, p := range s.paths {
		op := p.item.GetOperation(method)
		if op == nil {
			continue
		}
		if params, ok := p.match(segs); ok {
			return &routers.Route{Spec: s.doc, Path: p.path, PathItem: p.item, Method: method, Operation: op}, params
		}
	}
	return &routers.Route{Spec: s.doc, Path: path, Method: method}, nil
}

// unknown returns the route of the answers to a route the document does
// not describe: a redirect when the path without its trailing slash, or
// with one, is a route (301 for GET, else 307); 405 when the path takes
// other methods; else 404.
func (s *spec) unknown(method, path string) (*routers.Route, string) {
	other := path + "/"
	if trimmed, ok := strings.CutSuffix(path, "/"); ok {
		other = trimmed
	}
	if r, _ := s.find(method, other); path != "/" && r.Operation != nil {
		return &routers.Route{Spec: s.doc, Path: path, PathItem: &openapi3.PathItem{}, Method: method, Operation: s.slashRedirect},
			method + " " + path + " (" + r.Path + " with its trailing slash toggled)"
	}
	segs := strings.Split(path, "/")
	for _, p := range s.paths {
		if _, ok := p.match(segs); ok {
			return &routers.Route{Spec: s.doc, Path: p.path, PathItem: p.item, Method: method, Operation: s.noMethod},
				method + " " + p.path + " (a method the path does not take)"
		}
	}
	return &routers.Route{Spec: s.doc, Path: path, PathItem: &openapi3.PathItem{}, Method: method, Operation: s.noRoute},
		method + " " + path + " (a path the document does not describe)"
}

// match reports whether the path's segments fit the template, a {name}
// segment taking any non-empty one, and returns the parameters.
func (p pathTemplate) match(segs []string) (map[string]string, bool) {
	if len(segs) != len(p.segments) {
		return nil, false
	}
	var params map[string]string
	for i, t := range p.segments {
		if name, ok := strings.CutPrefix(t, "{"); ok && strings.HasSuffix(name, "}") {
			if segs[i] == "" {
				return nil, false
			}
			if params == nil {
				params = map[string]string{}
			}
			params[strings.TrimSuffix(name, "}")] = segs[i]
			continue
		}
		if t != segs[i] {
			return nil, false
		}
	}
	return params, true
}
