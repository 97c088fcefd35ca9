package openapi

import (
	"net/http"
	"os"
	"strings"
	"testing"
)

// TestDocumentIsWellFormed: the product's document is OpenAPI 3.1, every
// $ref resolves, every operation lists its responses, and every schema and
// example compiles and validates.
func TestDocumentIsWellFormed(t *testing.T) {
	d, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Check(); err != nil {
		t.Fatal(err)
	}
	for _, op := range []string{"/v1/usage get", "/auth/refresh post"} {
		p, m, _ := strings.Cut(op, " ")
		if _, err := d.resolve("#" + pointer("paths", p, m, "responses")); err != nil {
			t.Errorf("%s: %v", op, err)
		}
	}
}

// TestCheckCatchesBrokenDocuments: each planted fault is reported.
func TestCheckCatchesBrokenDocuments(t *testing.T) {
	good, err := os.ReadFile("../../../" + Path)
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct{ old, new, want string }{
		"dangling $ref": {`$ref: "#/components/schemas/UsageQuota"`, `$ref: "#/components/schemas/NoSuchQuota"`, "NoSuchQuota"},
		"no responses":  {"operationId: refreshToken", "", "POST /auth/refresh documents no responses"},
		"bad example":   {"expires_in: 82013", "expires_in: -5", "example perUser"},
		"bad schema":    {"minProperties: 1", "minProperties: one", "UsageUnits"},
		"not 3.1":       {"openapi: 3.1.0", "openapi: 3.0.3", "want 3.1.x"},
	} {
		t.Run(name, func(t *testing.T) {
			src := string(good)
			at := 0
			if name == "no responses" {
				// The refresh operation's own responses, not the first in the file.
				at = strings.Index(src, tc.old)
				tc.old, tc.new = "      responses:\n", "      x-responses:\n"
			}
			i := strings.Index(src[at:], tc.old)
			if i < 0 {
				t.Fatalf("the document no longer contains %q", tc.old)
			}
			src = src[:at+i] + tc.new + src[at+i+len(tc.old):]
			d, err := Parse([]byte(src))
			if err != nil {
				t.Fatal(err)
			}
			err = d.Check()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Check() = %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}

const goodUsage = `{"object":"llm.usage","version":"v1","user":{"namespace":"a","name":"b"},
	"token":{"expires_at":"2026-05-02T10:00:30Z","expires_in":10,"refresh_allowed":true},
	"quota":{"name":"q","scope":"PerUser","enforcement":"Enforce","max_tokens_per_request":null,"max_concurrent_requests":null},
	"windows":[{"window":"Day","start":"2026-05-01T00:00:00Z","resets_at":"2026-05-02T00:00:00Z",
		"used":{"requests":1,"input_tokens":2,"cached_input_tokens":0,"output_tokens":3,"total_tokens":5},
		"reserved":{"requests":0,"input_tokens":0,"cached_input_tokens":0,"output_tokens":0,"total_tokens":0},
		"limit":{"tokens":100},"remaining":{"tokens":95},"models":[]}],
	"lifetime":{"requests":1,"input_tokens":2,"cached_input_tokens":0,"output_tokens":3,"total_tokens":5},
	"shared":null}`

func jsonHeader(extra ...string) http.Header {
	h := http.Header{"Content-Type": {"application/json"}}
	for i := 0; i+1 < len(extra); i += 2 {
		h.Set(extra[i], extra[i+1])
	}
	return h
}

// TestValidate: a documented response passes, and each planted wrong one
// (status, content type, header, body) fails saying why.
func TestValidate(t *testing.T) {
	d, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	ok := Response{Status: 200, Header: jsonHeader("Cache-Control", "no-store", "X-Ratelimit-Remaining-Tokens", "95"), Body: []byte(goodUsage)}
	if err := d.Validate("GET", "/v1/usage", ok); err != nil {
		t.Fatalf("a good reply: %v", err)
	}
	errBody := []byte(`{"error":{"message":"no","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}`)
	if err := d.Validate("GET", "/v1/usage", Response{Status: 401, Header: jsonHeader("WWW-Authenticate", "Bearer"), Body: errBody}); err != nil {
		t.Fatalf("a good 401: %v", err)
	}
	if err := d.Validate("POST", "/auth/refresh", Response{Status: 200, Header: jsonHeader("Cache-Control", "no-store"),
		Body: []byte(`{"access_token":"x.y.z","token_type":"bearer","expires_in":86400}` + "\n")}); err != nil {
		t.Fatalf("a good refresh: %v", err)
	}

	for name, tc := range map[string]struct {
		method, path string
		r            Response
		want         string
	}{
		"undocumented status": {"GET", "/v1/usage", Response{Status: 418, Header: jsonHeader(), Body: errBody}, "does not list"},
		"undocumented path":   {"GET", "/v1/nothing", ok, "not documented"},
		"wrong method":        {"POST", "/v1/usage", ok, "not documented"},
		"wrong content type":  {"GET", "/v1/usage", Response{Status: 200, Header: http.Header{"Content-Type": {"text/plain"}, "Cache-Control": {"no-store"}}, Body: []byte(goodUsage)}, "Content-Type"},
		"missing header":      {"GET", "/v1/usage", Response{Status: 200, Header: jsonHeader(), Body: []byte(goodUsage)}, "Cache-Control is missing"},
		"bad header":          {"GET", "/v1/usage", Response{Status: 200, Header: jsonHeader("Cache-Control", "no-store", "X-Ratelimit-Remaining-Tokens", "-1"), Body: []byte(goodUsage)}, "x-ratelimit-remaining-tokens"},
		"missing field":       {"GET", "/v1/usage", Response{Status: 200, Header: ok.Header, Body: []byte(strings.Replace(goodUsage, `"shared":null`, `"shared2":null`, 1))}, "shared"},
		"wrong type":          {"GET", "/v1/usage", Response{Status: 200, Header: ok.Header, Body: []byte(strings.Replace(goodUsage, `"expires_in":10`, `"expires_in":"10"`, 1))}, "expires_in"},
		"bad enum":            {"GET", "/v1/usage", Response{Status: 200, Header: ok.Header, Body: []byte(strings.Replace(goodUsage, `"Day"`, `"Fortnight"`, 1))}, "window"},
		"float cost":          {"GET", "/v1/usage", Response{Status: 200, Header: ok.Header, Body: []byte(strings.Replace(goodUsage, `"total_tokens":5}`, `"total_tokens":5,"cost":"1.50"}`, 1))}, "cost"},
		"not JSON":            {"GET", "/v1/usage", Response{Status: 200, Header: ok.Header, Body: []byte(`{"object":`)}, "not JSON"},
		"error shape":         {"GET", "/v1/usage", Response{Status: 401, Header: jsonHeader("WWW-Authenticate", "Bearer"), Body: []byte(`{"error":"no"}`)}, "error"},
		"refresh token type":  {"POST", "/auth/refresh", Response{Status: 200, Header: jsonHeader("Cache-Control", "no-store"), Body: []byte(`{"access_token":"x","token_type":"mac","expires_in":1}`)}, "token_type"},
	} {
		t.Run(name, func(t *testing.T) {
			err := d.Validate(tc.method, tc.path, tc.r)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate() = %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}

// TestReadmeExample: the README's example reply of GET /v1/usage is one
// the document admits, so the two cannot drift apart.
func TestReadmeExample(t *testing.T) {
	d, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("../../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "### `/v1/usage`")
	_, example, ok2 := strings.Cut(section, "```json\n")
	example, _, ok3 := strings.Cut(example, "```")
	if !ok || !ok2 || !ok3 {
		t.Fatal("the README has no JSON example under its /v1/usage section")
	}
	r := Response{Status: 200, Header: jsonHeader("Cache-Control", "no-store"), Body: []byte(example)}
	if err := d.Validate("GET", "/v1/usage", r); err != nil {
		t.Fatal(err)
	}
}
