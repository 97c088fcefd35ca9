package openaiapi

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestBearerToken(t *testing.T) {
	for _, c := range []struct {
		header      []string
		token       string
		present, ok bool
	}{
		{nil, "", false, false},
		{[]string{""}, "", false, false},
		{[]string{"Bearer abc"}, "abc", true, true},
		{[]string{"bearer abc"}, "abc", true, true},
		{[]string{"BEARER abc"}, "abc", true, true},
		{[]string{"bEaReR   abc  "}, "abc", true, true},
		{[]string{"Bearer "}, "", true, false},
		{[]string{"Bearer    "}, "", true, false},
		{[]string{"Basic YWxhZGRpbjpvcGVuc2VzYW1l"}, "", true, false},
		{[]string{"Bearerabc"}, "", true, false},
		{[]string{"abc"}, "", true, false},
		{[]string{"Bearer first", "Bearer second"}, "first", true, true},
	} {
		h := http.Header{}
		if c.header != nil {
			h["Authorization"] = c.header
		}
		token, present, ok := BearerToken(h)
		if token != c.token || present != c.present || ok != c.ok {
			t.Errorf("BearerToken(%q) = %q, %t, %t; want %q, %t, %t", c.header, token, present, ok, c.token, c.present, c.ok)
		}
	}
}

func TestWriteError(t *testing.T) {
	w := httptest.NewRecorder()
	WriteError(w, http.StatusTooManyRequests, TypeRateLimit, CodeRateLimitExceeded, "", "Limit <reached> \"now\"\n\x01\xff")
	const want = `{"error":{"message":"Limit <reached> \"now\"\n\u0001\ufffd","type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}}`
	if got := w.Body.String(); got != want {
		t.Errorf("body\n got %s\nwant %s", got, want)
	}
	if w.Code != http.StatusTooManyRequests || w.Header().Get("Content-Type") != "application/json" || w.Header().Get("Content-Length") != "129" {
		t.Errorf("status %d headers %v", w.Code, w.Header())
	}
	w = httptest.NewRecorder()
	WriteError(w, http.StatusBadRequest, TypeInvalidRequest, "", "max_tokens", "m")
	if got := w.Body.String(); got != `{"error":{"message":"m","type":"invalid_request_error","param":"max_tokens","code":null}}` {
		t.Errorf("body %s", got)
	}
}
