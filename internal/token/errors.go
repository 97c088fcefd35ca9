package token

import "fmt"

// Reason classifies why a token was rejected, so that an HTTP layer can answer
// precisely without parsing error strings.
type Reason string

// Reasons returned in [Error.Reason].
const (
	// ReasonMalformed: not a compact JWS, undecodable segments, a missing or
	// non-string kid header, or claims of the wrong type or shape.
	ReasonMalformed Reason = "malformed"
	// ReasonExpired: now is at or past exp plus the clock skew allowance.
	ReasonExpired Reason = "expired"
	// ReasonNotYetValid: now is before nbf minus the clock skew allowance.
	ReasonNotYetValid Reason = "not_yet_valid"
	// ReasonUnknownKey: the kid is not in the published key set.
	ReasonUnknownKey Reason = "unknown_key"
	// ReasonBadSignature: the signature does not verify, or the token uses an
	// algorithm other than EdDSA.
	ReasonBadSignature Reason = "bad_signature"
	// ReasonWrongIssuer: iss is not the expected issuer.
	ReasonWrongIssuer Reason = "wrong_issuer"
	// ReasonWrongAudience: aud does not contain the expected audience.
	ReasonWrongAudience Reason = "wrong_audience"
	// ReasonMissingClaims: exp, sub, uid, ns or name is absent, or iss/aud is
	// absent while the verifier expects one.
	ReasonMissingClaims Reason = "missing_claims"
)

// Error is the error returned by [Verifier.Verify] for every rejected token.
type Error struct {
	// Reason is the machine-readable classification.
	Reason Reason
	// Err carries the human-readable detail; it may be nil for sentinels.
	Err error
}

// Sentinel errors, one per [Reason], for use with [errors.Is]. An *Error
// matches a sentinel when their reasons are equal.
var (
	ErrMalformed     = &Error{Reason: ReasonMalformed}
	ErrExpired       = &Error{Reason: ReasonExpired}
	ErrNotYetValid   = &Error{Reason: ReasonNotYetValid}
	ErrUnknownKey    = &Error{Reason: ReasonUnknownKey}
	ErrBadSignature  = &Error{Reason: ReasonBadSignature}
	ErrWrongIssuer   = &Error{Reason: ReasonWrongIssuer}
	ErrWrongAudience = &Error{Reason: ReasonWrongAudience}
	ErrMissingClaims = &Error{Reason: ReasonMissingClaims}
)

// Error returns the detail message, such as "token expired at
// 2026-11-25T10:00:00Z", or a generic message for the reason.
func (e *Error) Error() string {
	if e.Err != nil {
		return e.Err.Error()
	}
	return "token rejected: " + string(e.Reason)
}

// Unwrap returns the underlying detail error.
func (e *Error) Unwrap() error { return e.Err }

// Is reports whether target is an *Error with the same reason, which makes the
// sentinels such as [ErrExpired] work with [errors.Is].
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Reason == e.Reason
}

func newError(r Reason, format string, args ...any) *Error {
	return &Error{Reason: r, Err: fmt.Errorf(format, args...)}
}
