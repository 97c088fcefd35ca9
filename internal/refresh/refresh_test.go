package refresh

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/llm-user-operator/llm-user-operator/internal/token"
)

type fakeUsers map[string]User

func (f fakeUsers) User(_ context.Context, ns, name string) (User, bool, error) {
	u, ok := f[ns+"/"+name]
	return u, ok, nil
}

type fakeKeys struct {
	issuer *token.Issuer
	v      *token.Verifier
}

func (k fakeKeys) Signer() (*token.Issuer, bool) { return k.issuer, k.issuer != nil }
func (k fakeKeys) Verifier() *token.Verifier     { return k.v }

// testKey is a signing key made an hour before the clock's time, and a
// verifier of issuer "iss" and audience "aud" that knows it.
func testKey(t *testing.T, clock func() time.Time) (token.Key, *token.Verifier) {
	t.Helper()
	key, err := token.GenerateKey(clock().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	v := token.NewVerifier(token.VerifierOptions{Issuer: "iss", Audience: "aud", Now: clock})
	v.SetKeys([]token.Key{key})
	return key, v
}

func TestRefresh(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	key, v := testKey(t, clock)
	issue := func(name string, gen int64, ttl time.Duration) string {
		iss := &token.Issuer{Key: key, Issuer: "iss", Audience: "aud", Now: clock}
		raw, _, err := iss.Issue(token.IssueRequest{Namespace: "ns", Name: name, UID: "uid-" + name, Generation: gen, TTL: ttl})
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	active := User{UID: "uid-alice", TokenGeneration: 2, AllowRefresh: true, TTL: 2 * time.Hour}
	users := fakeUsers{
		"ns/alice":     active,
		"ns/suspended": {UID: "uid-suspended", TokenGeneration: 1, Suspended: true, AllowRefresh: true, TTL: time.Hour},
		"ns/norefresh": {UID: "uid-norefresh", TokenGeneration: 1, AllowRefresh: false, TTL: time.Hour},
		"ns/recreated": {UID: "a-different-uid", TokenGeneration: 1, AllowRefresh: true, TTL: time.Hour},
	}
	h := &Handler{Users: users, Keys: fakeKeys{&token.Issuer{Key: key, Issuer: "iss", Audience: "aud", Now: clock}, v}}

	expired := func() string {
		iss := &token.Issuer{Key: key, Issuer: "iss", Audience: "aud", Now: func() time.Time { return now.Add(-3 * time.Hour) }}
		raw, _, _ := iss.Issue(token.IssueRequest{Namespace: "ns", Name: "alice", UID: "uid-alice", Generation: 2, TTL: time.Hour})
		return raw
	}()

	tests := []struct {
		name, method, auth string
		handler            *Handler
		status             int
		code               string
	}{
		{"fresh token", http.MethodPost, "Bearer " + issue("alice", 2, time.Hour), h, 200, ""},
		{"scheme in lower case", http.MethodPost, "bearer " + issue("alice", 2, time.Hour), h, 200, ""},
		{"scheme in upper case", http.MethodPost, "BEARER " + issue("alice", 2, time.Hour), h, 200, ""},
		{"blanks around the token", http.MethodPost, "Bearer   " + issue("alice", 2, time.Hour) + " ", h, 200, ""},
		{"scheme without token", http.MethodPost, "Bearer ", h, 401, "invalid_api_key"},
		{"token without scheme", http.MethodPost, issue("alice", 2, time.Hour), h, 401, "invalid_api_key"},
		{"GET", http.MethodGet, "Bearer " + issue("alice", 2, time.Hour), h, 405, "method_not_allowed"},
		{"no header", http.MethodPost, "", h, 401, "invalid_api_key"},
		{"not bearer", http.MethodPost, "Basic abc", h, 401, "invalid_api_key"},
		{"garbage", http.MethodPost, "Bearer not.a.jwt", h, 401, "invalid_api_key"},
		{"expired", http.MethodPost, "Bearer " + expired, h, 401, "invalid_api_key"},
		{"older generation", http.MethodPost, "Bearer " + issue("alice", 1, time.Hour), h, 401, "invalid_api_key"},
		{"suspended", http.MethodPost, "Bearer " + issue("suspended", 1, time.Hour), h, 401, "invalid_api_key"},
		{"deleted user", http.MethodPost, "Bearer " + issue("gone", 1, time.Hour), h, 401, "invalid_api_key"},
		{"recreated user (new uid)", http.MethodPost, "Bearer " + issue("recreated", 1, time.Hour), h, 401, "invalid_api_key"},
		{"refresh disabled", http.MethodPost, "Bearer " + issue("norefresh", 1, time.Hour), h, 403, "refresh_not_allowed"},
		{"no signing key", http.MethodPost, "Bearer " + issue("alice", 2, time.Hour),
			&Handler{Users: users, Keys: fakeKeys{v: v}}, 503, "unavailable"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(tc.method, "/auth/refresh", nil)
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			rec := httptest.NewRecorder()
			tc.handler.ServeHTTP(rec, req)
			if rec.Code != tc.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, tc.status, rec.Body)
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("content type %q", ct)
			}
			if tc.status != 200 {
				var body struct {
					Error struct {
						Message, Type string
						Code          string
						Param         *string
					}
				}
				if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || body.Error.Code != tc.code || body.Error.Message == "" || body.Error.Param != nil {
					t.Fatalf("error body %s (%v)", rec.Body, err)
				}
				return
			}
			var resp Response
			if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
				t.Fatal(err)
			}
			if resp.TokenType != "bearer" || resp.ExpiresIn != 7200 {
				t.Errorf("response %+v, want bearer and the user's 2h ttl", resp)
			}
			c, err := v.Verify(resp.AccessToken)
			if err != nil || c.UID != "uid-alice" || c.Generation != 2 || !c.ExpiresAt.Equal(now.Add(2*time.Hour)) {
				t.Errorf("refreshed claims %+v (%v)", c, err)
			}
		})
	}
}

// TestRefusalShape pins the exact bytes of refusals: the OpenAI error shape
// the proxy writes, with the message that says what to send.
func TestRefusalShape(t *testing.T) {
	h := &Handler{Keys: fakeKeys{}}
	tests := []struct {
		auth   string
		status int
		body   string
	}{
		{"", 401, `{"error":{"message":"missing API key: send the header 'Authorization: Bearer <token>' with the token to refresh","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}`},
		{"Basic dXNlcjpwYXNz", 401, `{"error":{"message":"malformed Authorization header: expected 'Bearer <token>'","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}`},
		{"bearer x", 503, `{"error":{"message":"no signing key loaded yet; retry shortly","type":"server_error","param":null,"code":"unavailable"}}`},
	}
	for _, tc := range tests {
		req := httptest.NewRequest(http.MethodPost, "/auth/refresh", nil)
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != tc.status || rec.Body.String() != tc.body {
			t.Errorf("Authorization %q: %d %s\nwant %d %s", tc.auth, rec.Code, rec.Body, tc.status, tc.body)
		}
		if rec.Header().Get("Content-Length") != strconv.Itoa(len(tc.body)) || rec.Header().Get("Cache-Control") != "no-store" {
			t.Errorf("Authorization %q: headers %v", tc.auth, rec.Header())
		}
	}
}
