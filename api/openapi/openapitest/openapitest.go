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
// (NoMethod), each with the error body. Any route may answer 414
// (URITooLong): the service checks a URL's length before routing.
//
// The status, the headers and the routing are checked with kin-openapi
// (openapi3filter.ValidateResponse, the body left out). A body is checked
// here, against its schema compiled once, as JSON Schema 2020-12 (OpenAPI
// 3.1's dialect), by santhosh-tekuri/jsonschema: openapi.json is one
// resource to the compiler, and each response's schema is compiled from its
// place in it (its JSON pointer), so its $refs to the components resolve as
// they read. kin-openapi, for a 3.1 document, compiles a body's schema on
// every check; here a schema is compiled the first time an answer needs it,
// and kept for every later answer. Formats are checked as kin-openapi checks
// them (its validators, date-time among them).
package openapitest

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"

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
// sends what it buffered only once the check is done: the check delays the
// answer (once the body's schema is compiled: microseconds for a small
// answer, a fraction of a millisecond for a report without series, ten
// milliseconds or so for one with long series; several times that under
// -race).
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
	return s.check(req, status, header, body, false)
}

// check is the package's check against s. With kinBodies the body is
// validated by kin-openapi, as it was before the compiled schemas (kin-openapi
// compiles the schema on every call): the benchmark's baseline, and what the
// compiled schemas are tested to agree with.
func (s *spec) check(req *http.Request, status int, header http.Header, body []byte, kinBodies bool) error {
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
	if status == http.StatusRequestURITooLong && route.Operation.Responses.Status(status) == nil {
		// Answered before routing, whatever the route: components/responses/URITooLong.
		route = &routers.Route{Spec: s.doc, Path: route.Path, PathItem: route.PathItem, Method: req.Method, Operation: s.uriTooLong}
	}
	resp := route.Operation.Responses.Status(status)
	if resp == nil {
		resp = route.Operation.Responses.Default()
	}
	if resp == nil || resp.Value == nil {
		return fmt.Errorf("%s does not document status %d", op, status)
	}
	opts := options
	if kinBodies {
		opts = kinBodyOptions
	}
	err := openapi3filter.ValidateResponse(context.Background(), &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route},
		Status:                 status,
		Header:                 header,
		Body:                   io.NopCloser(bytes.NewReader(body)),
		Options:                opts,
	})
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if !kinBodies {
		if err := s.checkBody(req.Method, status, resp.Value, header, body); err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
	}
	if len(resp.Value.Content) == 0 && len(body) > 0 && req.Method != http.MethodHead {
		return fmt.Errorf("%s: status %d has no body in the document, but the answer has %d bytes", op, status, len(body))
	}
	return nil
}

// options make ValidateResponse fail on an undocumented status and report
// every departure of a header, each in one line; the body is checked by
// checkBody.
var options = func() *openapi3filter.Options {
	o := &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true, ExcludeResponseBody: true}
	o.WithCustomSchemaErrorFunc(schemaMessage)
	return o
}()

// kinBodyOptions are options with kin-openapi validating the body as well.
var kinBodyOptions = func() *openapi3filter.Options {
	o := *options
	o.ExcludeResponseBody = false
	return &o
}()

// schemaMessage says where a value departs from its schema and how, without
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

// checkBody checks an answer's body against the schema the document gives
// it, as ValidateResponse would: not for HEAD nor the statuses it leaves
// alone, with the media type the Content-Type header selects, the body
// decoded by the decoder kin-openapi has for it.
func (s *spec) checkBody(method string, status int, resp *openapi3.Response, header http.Header, body []byte) error {
	if method == http.MethodHead {
		return nil
	}
	switch status {
	case http.StatusNotModified, http.StatusPermanentRedirect, http.StatusTemporaryRedirect, http.StatusMovedPermanently:
		return nil // ValidateResponse does not look at these
	}
	if len(resp.Content) == 0 {
		return nil // checked by the caller: no body then
	}
	ct := header.Get("Content-Type")
	mt := resp.Content.Get(ct)
	if mt == nil {
		return fmt.Errorf("response header Content-Type has unexpected value: %q", ct)
	}
	if mt.Schema == nil {
		return nil
	}
	b := s.bodies[mt]
	if b == nil {
		// Every media type of a response is found when the document is
		// loaded; one that is not is a bug here.
		return fmt.Errorf("openapitest: no place in openapi.json for the schema of %q", ct)
	}
	value, err := decodeBody(body, ct, mt)
	if err != nil {
		return fmt.Errorf("failed to decode response body: %w", err)
	}
	schema, err := b.compile(s)
	if err != nil {
		return err
	}
	if err := schema.Validate(value); err != nil {
		return fmt.Errorf("response body doesn't match schema %s: %s", b.name, describe(err, value))
	}
	return nil
}

// bodySchema is the schema of one media type of a response, compiled once,
// when an answer first needs it.
type bodySchema struct {
	ptr  string // its JSON pointer in openapi.json
	name string // for messages: its $ref, else its pointer

	once   sync.Once
	schema *jsonschema.Schema
	err    error
}

func (b *bodySchema) compile(s *spec) (*jsonschema.Schema, error) {
	b.once.Do(func() {
		s.compileMu.Lock() // a Compiler is not safe for concurrent use
		defer s.compileMu.Unlock()
		b.schema, b.err = s.compiler.Compile(documentURL + "#" + encodePointer(b.ptr))
		if b.err != nil {
			b.err = fmt.Errorf("openapi.json: compiling the schema at %s: %w", b.ptr, b.err)
		}
	})
	return b.schema, b.err
}

// documentURL names openapi.json to the schema compiler; nothing is fetched.
const documentURL = "https://admetric.invalid/openapi.json"

// decodeBody decodes a body of media type ct, as kin-openapi's decodeBody
// does for ValidateResponse: JSON into any (numbers as json.Number), text
// and binary content into a string.
func decodeBody(body []byte, ct string, mt *openapi3.MediaType) (any, error) {
	mediaType, _, _ := strings.Cut(ct, ";")
	mediaType = strings.ToLower(strings.TrimSpace(mediaType))
	header := http.Header{"Content-Type": {ct}}
	encFn := func(name string) *openapi3.Encoding { return mt.Encoding[name] }
	enc := encFn("")
	binary := mt.Schema.Value != nil && mt.Schema.Value.Type.Is("string") && mt.Schema.Value.Format == "binary"
	if binary && (enc == nil || enc.ContentType == "") {
		return openapi3filter.FileBodyDecoder(bytes.NewReader(body), header, mt.Schema, encFn)
	}
	if !enc.AllowsContentType(mediaType) {
		return nil, fmt.Errorf("not matching content types: header %q, encoding %q", mediaType, enc.ContentType)
	}
	decoder := openapi3filter.RegisteredBodyDecoder(mediaType)
	if decoder == nil && strings.HasSuffix(mediaType, "+json") && !binary {
		decoder = openapi3filter.RegisteredBodyDecoder("application/json")
	}
	if decoder == nil {
		decoder = openapi3filter.RegisteredBodyDecoder("*/*")
	}
	if decoder == nil {
		if binary || (mt.Schema.Value != nil && mt.Schema.Value.ContentMediaType != "") {
			return openapi3filter.FileBodyDecoder(bytes.NewReader(body), header, mt.Schema, encFn)
		}
		return nil, fmt.Errorf("unsupported content type %q", mediaType)
	}
	return decoder(bytes.NewReader(body), header, mt.Schema, encFn)
}

// describe says, in one line, where value, a body, departs from its schema
// and how: each failure at the bottom of the validator's tree, as "at
// '/path/in/body': what failed [#/the/keyword/in/openapi.json]" ("at the top"
// for the body itself), at most ten.
func describe(err error, value any) string {
	var verr *jsonschema.ValidationError
	if !errors.As(err, &verr) {
		return err.Error()
	}
	var fails []failure
	var walk func(*jsonschema.ValidationError)
	walk = func(e *jsonschema.ValidationError) {
		if pn, ok := e.ErrorKind.(*kind.PropertyNames); ok {
			fails = append(fails, propertyNameFailure(e, pn, value))
			return
		}
		if len(e.Causes) == 0 {
			fails = append(fails, leafFailure(e))
		}
		for _, c := range e.Causes {
			walk(c)
		}
	}
	walk(verr)
	// A property (an item) that unevaluatedProperties (unevaluatedItems)
	// refuses only because a subschema that would have evaluated it failed
	// (allOf's, say) is no departure of its own: leave it out when another
	// failure is inside the same object (array).
	var kept []failure
	for _, f := range fails {
		if f.unevaluated && slices.ContainsFunc(fails, func(o failure) bool {
			return !o.unevaluated && within(o.at, f.at[:len(f.at)-1])
		}) {
			continue
		}
		kept = append(kept, f)
	}
	const most = 10
	var msgs []string
	for i, f := range kept {
		if i == most {
			msgs = append(msgs, fmt.Sprintf("and %d more", len(kept)-most))
			break
		}
		where := "at the top"
		if f.where != "" {
			where = f.where
		} else if len(f.at) > 0 {
			where = "at '" + pointer(f.at) + "'"
		}
		msgs = append(msgs, fmt.Sprintf("%s: %s [#%s]", where, f.msg, f.keyword))
	}
	return strings.Join(msgs, "; ")
}

// failure is one way a body departs from its schema.
type failure struct {
	at      []string // where in the body
	where   string   // where in the body, in words, when at is not known
	msg     string   // what is wrong
	keyword string   // the pointer of the keyword that failed, in openapi.json

	// unevaluated: a property or an item unevaluatedProperties or
	// unevaluatedItems refuses.
	unevaluated bool
}

func leafFailure(e *jsonschema.ValidationError) failure {
	f := failure{at: e.InstanceLocation, msg: e.BasicOutput().Error.String(), keyword: keywordOf(e)}
	if _, ok := e.ErrorKind.(*kind.FalseSchema); ok {
		f.msg = "not allowed (false schema)"
		f.unevaluated = len(e.InstanceLocation) > 0 &&
			(strings.HasSuffix(f.keyword, "/unevaluatedProperties") || strings.HasSuffix(f.keyword, "/unevaluatedItems"))
	}
	return f
}

// propertyNameFailure is a property name that propertyNames refuses. The
// validator's causes are about the name (their places are the name's); the
// error's own place is not to be trusted (jsonschema v6.0.3 keeps a slice it
// goes on writing to), so the object is looked for in the body by the name.
func propertyNameFailure(e *jsonschema.ValidationError, pn *kind.PropertyNames, value any) failure {
	f := failure{msg: fmt.Sprintf("invalid property name '%s'", pn.Property), keyword: keywordOf(e)}
	var why []string
	var walk func(*jsonschema.ValidationError)
	walk = func(c *jsonschema.ValidationError) {
		if len(c.Causes) == 0 {
			why = append(why, c.BasicOutput().Error.String())
			f.keyword = keywordOf(c)
		}
		for _, cc := range c.Causes {
			walk(cc)
		}
	}
	for _, c := range e.Causes {
		walk(c)
	}
	if len(why) > 0 {
		f.msg += ": " + strings.Join(why, "; ")
	}
	var objects [][]string
	findKey(value, pn.Property, nil, &objects)
	switch len(objects) {
	case 1:
		f.at = objects[0]
	case 0:
		f.where = "at an object"
	default:
		f.where = fmt.Sprintf("at one of the %d objects with it (the first at '%s')", len(objects), pointer(objects[0]))
	}
	return f
}

// findKey adds to found the place of each object in v that has key.
func findKey(v any, key string, at []string, found *[][]string) {
	switch v := v.(type) {
	case map[string]any:
		if _, ok := v[key]; ok {
			*found = append(*found, slices.Clone(at))
		}
		for k, vv := range v {
			findKey(vv, key, append(at, k), found)
		}
	case []any:
		for i, vv := range v {
			findKey(vv, key, append(at, strconv.Itoa(i)), found)
		}
	}
}

// keywordOf is the pointer, in openapi.json, of the keyword e is about.
func keywordOf(e *jsonschema.ValidationError) string {
	_, frag, _ := strings.Cut(e.SchemaURL, "#")
	if f, err := url.PathUnescape(frag); err == nil {
		frag = f
	}
	if _, ok := e.ErrorKind.(*kind.PropertyNames); ok {
		return frag // its SchemaURL is the propertyNames schema's
	}
	for _, k := range e.ErrorKind.KeywordPath() {
		frag += "/" + escapeToken(k)
	}
	return frag
}

// within reports whether loc is at or under parent.
func within(loc, parent []string) bool {
	return len(loc) >= len(parent) && slices.Equal(loc[:len(parent)], parent)
}

// pointer is the JSON pointer of tokens.
func pointer(tokens []string) string {
	var sb strings.Builder
	for _, t := range tokens {
		sb.WriteByte('/')
		sb.WriteString(escapeToken(t))
	}
	return sb.String()
}

func escapeToken(t string) string {
	return strings.ReplaceAll(strings.ReplaceAll(t, "~", "~0"), "/", "~1")
}

// encodePointer is a JSON pointer as a URL fragment, each token
// percent-encoded as the schema compiler decodes it.
func encodePointer(ptr string) string {
	toks := strings.Split(ptr, "/")
	for i, t := range toks {
		toks[i] = url.PathEscape(t)
	}
	return strings.Join(toks, "/")
}

// kinFormat checks a format as kin-openapi does: with its validator for the
// format (openapi3.SchemaStringFormats, SchemaIntegerFormats,
// SchemaNumberFormats), a format it has none for being no constraint.
func kinFormat(name string) *jsonschema.Format {
	number := func(v float64) error {
		if v == math.Trunc(v) && !math.IsInf(v, 0) {
			if f, ok := openapi3.SchemaIntegerFormats[name]; ok {
				return f.Validate(int64(v))
			}
		}
		if f, ok := openapi3.SchemaNumberFormats[name]; ok {
			return f.Validate(v)
		}
		return nil
	}
	return &jsonschema.Format{Name: name, Validate: func(v any) error {
		switch v := v.(type) {
		case string:
			if f, ok := openapi3.SchemaStringFormats[name]; ok {
				return f.Validate(v)
			}
		case json.Number:
			if n, err := v.Float64(); err == nil {
				return number(n)
			}
		case float64:
			return number(v)
		}
		return nil
	}}
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
	// uriTooLong is the operation of the answer any route may give to a
	// URL too long (414).
	uriTooLong *openapi3.Operation

	// bodies are the schemas of the responses' media types, by media type:
	// one for each (operation, status, media type) the document lists, a
	// response of components/responses being one wherever it is used. The
	// map is not written once loaded; each schema is compiled once, by
	// compiler (which holds openapi.json), under compileMu.
	bodies    map[*openapi3.MediaType]*bodySchema
	compiler  *jsonschema.Compiler
	compileMu sync.Mutex
}

type pathTemplate struct {
	path     string
	segments []string
	item     *openapi3.PathItem
}

// loadSpec loads and validates the document once.
var loadSpec = sync.OnceValues(newSpec)

// newSpec loads and validates the document.
func newSpec() (*spec, error) {
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
	if s.uriTooLong, err = only(http.StatusRequestURITooLong, "URITooLong"); err != nil {
		return nil, err
	}
	if s.slashRedirect, err = only(http.StatusMovedPermanently, "TrailingSlashRedirect"); err != nil {
		return nil, err
	}
	s.slashRedirect.Responses.Set(strconv.Itoa(http.StatusTemporaryRedirect), doc.Components.Responses["TrailingSlashRedirect"])
	if err := s.placeBodies(); err != nil {
		return nil, err
	}
	return s, nil
}

// placeBodies finds where in openapi.json the schema of each response's
// media type is, and readies the compiler that compiles them from there.
func (s *spec) placeBodies() error {
	raw, err := jsonschema.UnmarshalJSON(bytes.NewReader(openapi.Document()))
	if err != nil {
		return fmt.Errorf("loading openapi.json: %w", err)
	}
	s.compiler = jsonschema.NewCompiler()
	s.compiler.DefaultDraft(jsonschema.Draft2020)
	formats := map[string]bool{}
	collectFormats(raw, formats)
	for name := range formats {
		s.compiler.RegisterFormat(kinFormat(name))
	}
	s.compiler.AssertFormat()
	if err := s.compiler.AddResource(documentURL, raw); err != nil {
		return fmt.Errorf("openapi.json as a JSON Schema resource: %w", err)
	}
	s.bodies = map[*openapi3.MediaType]*bodySchema{}
	place := func(resp *openapi3.ResponseRef, at ...string) error {
		if resp == nil || resp.Value == nil {
			return nil
		}
		for key, mt := range resp.Value.Content {
			if mt == nil || mt.Schema == nil || s.bodies[mt] != nil {
				continue
			}
			ptr, err := locate(raw, slices.Concat(at, []string{"content", key, "schema"})...)
			if err != nil {
				return fmt.Errorf("openapi.json: the schema of %s: %w", pointer(slices.Concat(at, []string{"content", key})), err)
			}
			name := mt.Schema.Ref
			if name == "" {
				name = "#" + ptr
			}
			s.bodies[mt] = &bodySchema{ptr: ptr, name: name}
		}
		return nil
	}
	if s.doc.Components != nil {
		for name, resp := range s.doc.Components.Responses {
			if err := place(resp, "components", "responses", name); err != nil {
				return err
			}
		}
	}
	for _, p := range s.paths {
		for method, op := range p.item.Operations() {
			if op.Responses == nil {
				continue
			}
			for status, resp := range op.Responses.Map() {
				if err := place(resp, "paths", p.path, strings.ToLower(method), "responses", status); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// locate returns the JSON pointer of the value at tokens in doc, following
// the $ref of each object on the way (a path item, a response) but not of
// the value itself (a schema's $ref is the compiler's).
func locate(doc any, tokens ...string) (string, error) {
	at, v := "", doc
	for i, tok := range tokens {
		for hops := 0; ; hops++ {
			m, _ := v.(map[string]any)
			ref, ok := m["$ref"].(string)
			if !ok {
				break
			}
			frag, err := url.PathUnescape(strings.TrimPrefix(ref, "#"))
			if hops == 32 || !strings.HasPrefix(ref, "#") || err != nil {
				return "", fmt.Errorf("at %s: cannot follow $ref %q", at, ref)
			}
			at = frag
			if v, err = lookup(doc, at); err != nil {
				return "", err
			}
		}
		m, ok := v.(map[string]any)
		if !ok {
			return "", fmt.Errorf("at %s: not an object (looking for %s)", at, pointer(tokens[i:]))
		}
		if v, ok = m[tok]; !ok {
			return "", fmt.Errorf("at %s: no %q", at, tok)
		}
		at += "/" + escapeToken(tok)
	}
	return at, nil
}

// lookup returns the value at ptr, a JSON pointer into doc's objects.
func lookup(doc any, ptr string) (any, error) {
	v := doc
	if ptr == "" {
		return v, nil
	}
	for _, tok := range strings.Split(strings.TrimPrefix(ptr, "/"), "/") {
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		m, ok := v.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("%s: not found", ptr)
		}
		if v, ok = m[tok]; !ok {
			return nil, fmt.Errorf("%s: not found", ptr)
		}
	}
	return v, nil
}

// collectFormats adds to formats the name of every format in node.
func collectFormats(node any, formats map[string]bool) {
	switch node := node.(type) {
	case map[string]any:
		if f, ok := node["format"].(string); ok {
			formats[f] = true
		}
		for _, v := range node {
			collectFormats(v, formats)
		}
	case []any:
		for _, v := range node {
			collectFormats(v, formats)
		}
	}
}

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
// not describe: a redirect when the path without its trailing slashes, or
// with one, is a route (301 for GET, else 307); 405 when the path takes
// other methods; else 404.
func (s *spec) unknown(method, path string) (*routers.Route, string) {
	// Gin redirects a path with trailing slashes to be cut ("/vast//" to
	// "/vast/", then "/vast") as it does one with a slash too many.
	other := path + "/"
	if trimmed := strings.TrimRight(path, "/"); trimmed != path {
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
