package refresh

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/llm-user-operator/llm-user-operator/internal/testutil/openapi"
	"github.com/llm-user-operator/llm-user-operator/internal/token"
)

// TestRepliesAreDocumented: every status POST /auth/refresh answers is the
// one api/openapi/llm-user-operator.yaml describes, body and headers.
func TestRepliesAreDocumented(t *testing.T) {
	doc, err := openapi.Load()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	key, v := testKey(t, clock)
	signer := &token.Issuer{Key: key, Issuer: "iss", Audience: "aud", Now: clock}
	issue := func(name string) string {
		raw, _, err := signer.Issue(token.IssueRequest{Namespace: "ns", Name: name, UID: "uid-" + name, Generation: 1, TTL: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	users := fakeUsers{
		"ns/alice":     {UID: "uid-alice", TokenGeneration: 1, AllowRefresh: true, TTL: time.Hour},
		"ns/norefresh": {UID: "uid-norefresh", TokenGeneration: 1, TTL: time.Hour},
	}
	h := &Handler{Users: users, Keys: fakeKeys{signer, v}}
	for _, tc := range []struct {
		name, method, token string
		handler             *Handler
		status              int
	}{
		{"fresh token", http.MethodPost, issue("alice"), h, http.StatusOK},
		{"no token", http.MethodPost, "", h, http.StatusUnauthorized},
		{"refresh disabled", http.MethodPost, issue("norefresh"), h, http.StatusForbidden},
		{"GET", http.MethodGet, issue("alice"), h, http.StatusMethodNotAllowed},
		{"no signing key", http.MethodPost, issue("alice"), &Handler{Users: users, Keys: fakeKeys{v: v}}, http.StatusServiceUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(tc.method, "/auth/refresh", nil)
			if tc.token != "" {
				req.Header.Set("Authorization", "Bearer "+tc.token)
			}
			rec := httptest.NewRecorder()
			tc.handler.ServeHTTP(rec, req)
			if rec.Code != tc.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, tc.status, rec.Body)
			}
			// A refusal of any method is documented under the POST it refuses.
			r := openapi.Response{Status: rec.Code, Header: rec.Header(), Body: rec.Body.Bytes()}
			if err := doc.Validate(http.MethodPost, "/auth/refresh", r); err != nil {
				t.Error(err)
			}
		})
	}
}
