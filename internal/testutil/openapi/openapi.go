// Package openapi checks real HTTP responses against the product's OpenAPI
// 3.1 document (api/openapi/llm-user-operator.yaml): the status must be one
// the operation documents, the content type one that response declares,
// the required headers present, and the body valid against the response's
// schema, which OpenAPI 3.1 writes in JSON Schema 2020-12. It also checks
// the document itself: every $ref resolves, every operation documents its
// responses, every schema and example compiles and validates.
package openapi

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"sigs.k8s.io/yaml"
)

// docURL names the document inside the schema compiler; $refs in it are
// fragments ("#/components/schemas/Usage") resolved against it.
const docURL = "urn:llm-user-operator:openapi"

// Path is the product's document, relative to the repository root.
const Path = "api/openapi/llm-user-operator.yaml"

// Document is a loaded OpenAPI document.
type Document struct {
	raw map[string]any
	c   *jsonschema.Compiler
}

// Load reads the product's document from the repository.
func Load() (*Document, error) {
	_, file, _, _ := runtime.Caller(0)
	return LoadFile(filepath.Join(filepath.Dir(file), "..", "..", "..", Path))
}

// LoadFile reads a document in YAML or JSON.
func LoadFile(path string) (*Document, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(b)
}

// Parse reads a document in YAML or JSON.
func Parse(b []byte) (*Document, error) {
	j, err := yaml.YAMLToJSON(b)
	if err != nil {
		return nil, fmt.Errorf("openapi: not YAML: %w", err)
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(j))
	if err != nil {
		return nil, fmt.Errorf("openapi: %w", err)
	}
	raw, ok := v.(map[string]any)
	if !ok {
		return nil, errors.New("openapi: the document is not an object")
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	if err := c.AddResource(docURL, raw); err != nil {
		return nil, fmt.Errorf("openapi: %w", err)
	}
	return &Document{raw: raw, c: c}, nil
}

// Check reports every way the document is malformed: not OpenAPI 3.1, a
// $ref that resolves to nothing, an operation without responses, a
// response without description, a schema that does not compile, or an
// example its schema refuses.
func (d *Document) Check() error {
	var errs []error
	if v, _ := d.raw["openapi"].(string); !strings.HasPrefix(v, "3.1.") {
		errs = append(errs, fmt.Errorf("openapi is %q, want 3.1.x", v))
	}
	walk(d.raw, "#", func(ptr string, obj map[string]any) {
		if ref, ok := obj["$ref"].(string); ok {
			if _, err := d.resolve(ref); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", ptr, err))
			}
		}
	})
	paths, _ := d.raw["paths"].(map[string]any)
	if len(paths) == 0 {
		errs = append(errs, errors.New("no paths"))
	}
	for p, item := range paths {
		ops, _ := item.(map[string]any)
		for method, op := range ops {
			if !slices.Contains(methods, method) {
				continue
			}
			where := strings.ToUpper(method) + " " + p
			resps, _ := op.(map[string]any)["responses"].(map[string]any)
			if len(resps) == 0 {
				errs = append(errs, fmt.Errorf("%s documents no responses", where))
			}
			for code, r := range resps {
				errs = append(errs, d.checkResponse(where+" "+code, pointer("paths", p, method, "responses", code), r)...)
			}
		}
	}
	schemas, _ := d.components("schemas")
	for name := range schemas {
		if _, err := d.c.Compile(docURL + "#" + pointer("components", "schemas", name)); err != nil {
			errs = append(errs, fmt.Errorf("schema %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

var methods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

func (d *Document) checkResponse(where, ptr string, r any) []error {
	resp, err := d.deref(r)
	if err != nil {
		return []error{fmt.Errorf("%s: %w", where, err)}
	}
	var errs []error
	if s, _ := resp["description"].(string); s == "" {
		errs = append(errs, fmt.Errorf("%s has no description", where))
	}
	content, _ := resp["content"].(map[string]any)
	for mt, m := range content {
		media, _ := m.(map[string]any)
		if _, ok := media["schema"]; !ok {
			errs = append(errs, fmt.Errorf("%s %s has no schema", where, mt))
			continue
		}
		sch, err := d.c.Compile(docURL + "#" + d.mediaPointer(ptr, r, mt) + "/schema")
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", where, mt, err))
			continue
		}
		examples, _ := media["examples"].(map[string]any)
		for name, ex := range examples {
			e, err := d.deref(ex)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s example %s: %w", where, name, err))
				continue
			}
			if err := sch.Validate(e["value"]); err != nil {
				errs = append(errs, fmt.Errorf("%s example %s: %w", where, name, err))
			}
		}
	}
	return errs
}

// mediaPointer is the JSON pointer of a response's media type, through the
// response's $ref if it has one.
func (d *Document) mediaPointer(ptr string, r any, mt string) string {
	if m, ok := r.(map[string]any); ok {
		if ref, ok := m["$ref"].(string); ok {
			ptr = ref[1:]
		}
	}
	return ptr + pointer("content", mt)
}

func (d *Document) components(kind string) (map[string]any, bool) {
	c, _ := d.raw["components"].(map[string]any)
	m, ok := c[kind].(map[string]any)
	return m, ok
}

// resolve returns what a local $ref ("#/a/b") points at.
func (d *Document) resolve(ref string) (any, error) {
	frag, ok := strings.CutPrefix(ref, "#")
	if !ok {
		return nil, fmt.Errorf("$ref %q is not local to the document", ref)
	}
	var cur any = d.raw
	if frag == "" {
		return cur, nil
	}
	for _, tok := range strings.Split(strings.TrimPrefix(frag, "/"), "/") {
		tok, err := url.PathUnescape(tok)
		if err != nil {
			return nil, fmt.Errorf("$ref %q: %w", ref, err)
		}
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("$ref %q resolves to nothing", ref)
		}
		if cur, ok = m[tok]; !ok {
			return nil, fmt.Errorf("$ref %q resolves to nothing", ref)
		}
	}
	return cur, nil
}

// deref follows v's $ref, if any, to an object.
func (d *Document) deref(v any) (map[string]any, error) {
	m, _ := v.(map[string]any)
	if ref, ok := m["$ref"].(string); ok {
		t, err := d.resolve(ref)
		if err != nil {
			return nil, err
		}
		return d.deref(t)
	}
	if m == nil {
		return nil, errors.New("not an object")
	}
	return m, nil
}

// walk calls f on every object of v, with its JSON pointer.
func walk(v any, ptr string, f func(ptr string, obj map[string]any)) {
	switch t := v.(type) {
	case map[string]any:
		f(ptr, t)
		for k, c := range t {
			walk(c, ptr+pointer(k), f)
		}
	case []any:
		for i, c := range t {
			walk(c, ptr+"/"+strconv.Itoa(i), f)
		}
	}
}

// pointer joins tokens into a JSON pointer, escaped for a URI fragment.
func pointer(tokens ...string) string {
	var b strings.Builder
	for _, t := range tokens {
		t = strings.ReplaceAll(strings.ReplaceAll(t, "~", "~0"), "/", "~1")
		b.WriteString("/" + url.PathEscape(t))
	}
	return b.String()
}

// Response is what a client received.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// Read reads resp's body (and closes it) into a Response.
func Read(resp *http.Response) (Response, error) {
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	return Response{Status: resp.StatusCode, Header: resp.Header, Body: b}, err
}

// Validate checks a response to method path (the document's path, such as
// "/v1/usage") against the operation: its status is documented (exactly,
// as a range such as "4XX", or as "default"), its Content-Type is one that
// response declares, its required headers are present and match their
// schemas, and its body is valid against the media type's schema. A
// response documented without content must have an empty body.
func (d *Document) Validate(method, path string, r Response) error {
	ptr := pointer("paths", path, strings.ToLower(method))
	op, err := d.resolve("#" + ptr)
	if err != nil {
		return fmt.Errorf("openapi: %s %s is not documented", method, path)
	}
	resps, _ := op.(map[string]any)["responses"].(map[string]any)
	code := strconv.Itoa(r.Status)
	key := ""
	for _, k := range []string{code, code[:1] + "XX", "default"} {
		if _, ok := resps[k]; ok {
			key = k
			break
		}
	}
	if key == "" {
		return fmt.Errorf("openapi: %s %s answered %d, which the document does not list for it: %s", method, path, r.Status, r.Body)
	}
	ptr += pointer("responses", key)
	resp, err := d.deref(resps[key])
	if err != nil {
		return fmt.Errorf("openapi: %s %s %s: %w", method, path, key, err)
	}
	where := fmt.Sprintf("%s %s %d", method, path, r.Status)
	var errs []error
	headers, _ := resp["headers"].(map[string]any)
	for name, h := range headers {
		if err := d.checkHeader(name, h, r.Header); err != nil {
			errs = append(errs, err)
		}
	}
	content, _ := resp["content"].(map[string]any)
	if len(content) == 0 {
		if len(r.Body) > 0 {
			errs = append(errs, fmt.Errorf("a body where the document has none: %s", r.Body))
		}
		return wrap(where, errs)
	}
	ct := r.Header.Get("Content-Type")
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil || content[mt] == nil {
		errs = append(errs, fmt.Errorf("Content-Type %q, want one of %v", ct, keys(content)))
		return wrap(where, errs)
	}
	sch, err := d.c.Compile(docURL + "#" + d.mediaPointer(ptr, resps[key], mt) + "/schema")
	if err != nil {
		return fmt.Errorf("openapi: %s: the document's schema: %w", where, err)
	}
	body, err := jsonschema.UnmarshalJSON(bytes.NewReader(r.Body))
	if err != nil {
		errs = append(errs, fmt.Errorf("body is not JSON: %w: %s", err, r.Body))
	} else if err := sch.Validate(body); err != nil {
		errs = append(errs, fmt.Errorf("body %s: %w", r.Body, err))
	}
	return wrap(where, errs)
}

func wrap(where string, errs []error) error {
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("openapi: %s does not match the document: %w", where, err)
	}
	return nil
}

// checkHeader checks a documented header: present when required, and its
// value valid against its schema (a string schema takes the raw value; a
// numeric one the value parsed as a number).
func (d *Document) checkHeader(name string, h any, got http.Header) error {
	hdr, err := d.deref(h)
	if err != nil {
		return fmt.Errorf("header %s: %w", name, err)
	}
	vals := got.Values(name)
	if len(vals) == 0 {
		if req, _ := hdr["required"].(bool); req {
			return fmt.Errorf("required header %s is missing", name)
		}
		return nil
	}
	s, ok := hdr["schema"]
	if !ok {
		return nil
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	if err := c.AddResource("urn:header", s); err != nil {
		return fmt.Errorf("header %s: %w", name, err)
	}
	sch, err := c.Compile("urn:header")
	if err != nil {
		return fmt.Errorf("header %s: %w", name, err)
	}
	var v any = vals[0]
	if m, _ := s.(map[string]any); m["type"] == "integer" || m["type"] == "number" {
		if n, err := jsonschema.UnmarshalJSON(strings.NewReader(vals[0])); err == nil {
			v = n
		}
	}
	if err := sch.Validate(v); err != nil {
		return fmt.Errorf("header %s %q: %w", name, vals[0], err)
	}
	return nil
}

func keys(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
