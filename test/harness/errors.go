package harness

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/openai/openai-go/v3"
)

// APIError returns err as the SDK's API error, or nil if it is another error.
func APIError(err error) *openai.Error {
	var e *openai.Error
	if errors.As(err, &e) {
		return e
	}
	return nil
}

// RequireAPIError returns err as the SDK's API error, failing t if it is not
// one with the wanted status.
func RequireAPIError(t testing.TB, err error, status int) *openai.Error {
	t.Helper()
	e := APIError(err)
	if e == nil {
		t.Fatalf("got error %v (%T), want an *openai.Error with status %d", err, err, status)
	}
	if e.StatusCode != status {
		t.Fatalf("status %d (%s), want %d; body: %s", e.StatusCode, e.Type, status, e.RawJSON())
	}
	return e
}

// ErrorShape checks that e's body is exactly OpenAI's error shape,
// {"error":{"message":"...","type":"...","param":null,"code":"..."}}, with
// the wanted status, type and code, and returns what is wrong ("" if
// nothing).
func ErrorShape(e *openai.Error, status int, typ, code string) string {
	if e.StatusCode != status {
		return fmt.Sprintf("status %d, want %d", e.StatusCode, status)
	}
	body, err := io.ReadAll(e.Response.Body)
	if err != nil {
		return "reading the error body: " + err.Error()
	}
	var outer map[string]json.RawMessage
	if err := json.Unmarshal(body, &outer); err != nil || len(outer) != 1 || outer["error"] == nil {
		return fmt.Sprintf("body %s is not {\"error\":{...}}", body)
	}
	var inner map[string]any
	if err := json.Unmarshal(outer["error"], &inner); err != nil {
		return fmt.Sprintf("body %s: error is not an object", body)
	}
	for _, k := range []string{"message", "type", "param", "code"} {
		if _, ok := inner[k]; !ok {
			return fmt.Sprintf("body %s has no error.%s", body, k)
		}
	}
	if msg, _ := inner["message"].(string); msg == "" {
		return fmt.Sprintf("body %s has no message", body)
	}
	if inner["type"] != typ || inner["code"] != code {
		return fmt.Sprintf("body %s, want type %q and code %q", body, typ, code)
	}
	return ""
}
