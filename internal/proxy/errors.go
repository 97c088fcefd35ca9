package proxy

import (
	"net/http"
	"strconv"
)

// Error types and codes of the OpenAI error shape used by the proxy.
const (
	TypeInvalidRequest    = "invalid_request_error"
	TypeRateLimit         = "rate_limit_error"
	TypeInsufficientQuota = "insufficient_quota"
	TypeServer            = "server_error"

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
)

// WriteError writes an error in OpenAI's JSON shape:
//
//	{"error":{"message":"...","type":"...","param":null,"code":"..."}}
//
// An empty param or code is written as null.
func WriteError(w http.ResponseWriter, status int, typ, code, param, message string) {
	b := make([]byte, 0, 96+len(message))
	b = append(b, `{"error":{"message":`...)
	b = appendJSONString(b, message)
	b = append(b, `,"type":`...)
	b = appendJSONString(b, typ)
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
	return appendJSONString(b, s)
}
