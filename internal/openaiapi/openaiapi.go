// Package openaiapi holds what every HTTP endpoint of the product shares with
// OpenAI's API: the error shape and its codes, and reading the bearer token.
// The proxy and the operator's /auth/refresh both answer clients that are
// OpenAI SDKs, so they answer alike.
package openaiapi

import (
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Error types of OpenAI's error shape.
const (
	TypeInvalidRequest    = "invalid_request_error"
	TypeRateLimit         = "rate_limit_error"
	TypeInsufficientQuota = "insufficient_quota"
	TypeServer            = "server_error"
)

// Error codes used by the proxy and the operator.
const (
	CodeInvalidAPIKey       = "invalid_api_key"
	CodeModelNotAllowed     = "model_not_allowed"
	CodeModelNotFound       = "model_not_found"
	CodeQuotaNotFound       = "quota_not_found"
	CodeMaxTokensExceeded   = "max_tokens_exceeded"
	CodeRequestTooLarge     = "request_too_large"
	CodeRateLimitExceeded   = "rate_limit_exceeded"
	CodeInsufficientQuota   = "insufficient_quota"
	CodeUpstreamUnavailable = "upstream_unavailable"
	CodeUpstreamTimeout     = "upstream_timeout"
	CodeUpstreamError       = "upstream_error"
	CodeQuotaUnavailable    = "quota_unavailable"
	CodeNotFound            = "not_found"
	CodeMethodNotAllowed    = "method_not_allowed"
	CodeRefreshNotAllowed   = "refresh_not_allowed"
	CodeConcurrencyLimit    = "concurrency_limit_exceeded"
	CodeRequestTimeout      = "request_timeout"
	CodeServerBusy          = "server_busy"
	CodeQueueTimeout        = "queue_timeout"
	CodeQueueFull           = "queue_full"
	CodeUnsupported         = "unsupported_parameter"
	CodeUnavailable         = "unavailable"
	CodeInternal            = "internal_error"
)

// WriteError writes an error in OpenAI's JSON shape:
//
//	{"error":{"message":"...","type":"...","param":null,"code":"..."}}
//
// An empty param or code is written as null.
func WriteError(w http.ResponseWriter, status int, typ, code, param, message string) {
	b := make([]byte, 0, 96+len(message))
	b = append(b, `{"error":{"message":`...)
	b = AppendJSONString(b, message)
	b = append(b, `,"type":`...)
	b = AppendJSONString(b, typ)
	b = append(b, `,"param":`...)
	b = appendNullable(b, param)
	b = append(b, `,"code":`...)
	b = appendNullable(b, code)
	b = append(b, "}}"...)
	h := w.Header()
	h["Content-Type"] = []string{"application/json"}
	h["Content-Length"] = []string{strconv.Itoa(len(b))}
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func appendNullable(b []byte, s string) []byte {
	if s == "" {
		return append(b, "null"...)
	}
	return AppendJSONString(b, s)
}

// AppendJSONString appends s as a JSON string. Unlike encoding/json it does
// not escape <, > and &, so error messages stay readable.
func AppendJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < 0x80 {
			switch {
			case c == '"' || c == '\\':
				dst = append(dst, '\\', c)
			case c == '\n':
				dst = append(dst, '\\', 'n')
			case c == '\r':
				dst = append(dst, '\\', 'r')
			case c == '\t':
				dst = append(dst, '\\', 't')
			case c < 0x20:
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				dst = append(dst, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, `\ufffd`...)
		} else {
			dst = append(dst, s[i:i+size]...)
		}
		i += size
	}
	return append(dst, '"')
}

// BearerToken returns the token of an "Authorization: Bearer <token>"
// header. The scheme is matched without regard to case (RFC 9110 11.1) and
// blanks around the token are dropped. present is false when there is no
// Authorization header at all; ok is false when there is one that carries
// no bearer token.
func BearerToken(h http.Header) (token string, present, ok bool) {
	v := h["Authorization"]
	if len(v) == 0 || v[0] == "" {
		return "", false, false
	}
	raw := v[0]
	const scheme = "bearer "
	if len(raw) <= len(scheme) || !strings.EqualFold(raw[:len(scheme)], scheme) {
		return "", true, false
	}
	token = strings.TrimSpace(raw[len(scheme):])
	return token, true, token != ""
}
