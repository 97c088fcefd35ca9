package token

import (
	"crypto/ed25519"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// DefaultCacheSize is the verification cache bound used when
// [VerifierOptions.CacheSize] is zero.
const DefaultCacheSize = 10000

// VerifierOptions configures a [Verifier].
type VerifierOptions struct {
	// Issuer is the required iss. Empty disables the check, which only a
	// test should want.
	Issuer string
	// Audience must appear in aud. Empty disables the check, which only a
	// test should want.
	Audience string
	// ClockSkew is the leeway applied to exp and nbf. Zero means
	// [DefaultClockSkew]; negative means no leeway.
	ClockSkew time.Duration
	// Now is the clock; nil means [time.Now].
	Now func() time.Time
	// CacheSize bounds the number of cached successful verifications.
	// Zero means [DefaultCacheSize]; negative disables the cache.
	CacheSize int
}

// Verifier verifies user tokens against a published key set that can be
// swapped at run time. It is safe for concurrent use.
type Verifier struct {
	issuer, audience string
	skew             time.Duration
	now              func() time.Time
	parser           *jwt.Parser
	keys             atomic.Pointer[keySet]
	cache            *cache // nil when disabled
}

// keySet is immutable once published; its identity also tags cache entries,
// so an entry verified under an older set is never served.
type keySet struct {
	byID map[string]ed25519.PublicKey
}

// NewVerifier returns a verifier with an empty key set: every token fails
// with [ReasonUnknownKey] until [Verifier.SetKeys] is called.
func NewVerifier(opts VerifierOptions) *Verifier {
	v := &Verifier{
		issuer:   opts.Issuer,
		audience: opts.Audience,
		skew:     opts.ClockSkew,
		now:      opts.Now,
	}
	switch {
	case v.skew == 0:
		v.skew = DefaultClockSkew
	case v.skew < 0:
		v.skew = 0
	}
	if v.now == nil {
		v.now = time.Now
	}
	popts := []jwt.ParserOption{
		// The algorithm is fixed by the key type, never by the token: this
		// is what defeats alg=none and HS256-keyed-with-the-public-key.
		jwt.WithValidMethods([]string{jwt.SigningMethodEdDSA.Alg()}),
		jwt.WithLeeway(v.skew),
		jwt.WithTimeFunc(v.now),
		jwt.WithExpirationRequired(),
		// Canonical base64 only, so one token has one spelling (and one
		// cache entry).
		jwt.WithStrictDecoding(),
	}
	if v.issuer != "" {
		popts = append(popts, jwt.WithIssuer(v.issuer))
	}
	if v.audience != "" {
		popts = append(popts, jwt.WithAudience(v.audience))
	}
	v.parser = jwt.NewParser(popts...)
	v.keys.Store(&keySet{})
	size := opts.CacheSize
	if size == 0 {
		size = DefaultCacheSize
	}
	if size > 0 {
		v.cache = newCache(size)
	}
	return v
}

// SetKeys atomically replaces the key set (only ID and Public are used) and
// empties the cache, so a token signed by a key that is no longer published
// fails from this call on. If two keys share an ID the later one wins.
func (v *Verifier) SetKeys(keys []Key) {
	ks := &keySet{byID: make(map[string]ed25519.PublicKey, len(keys))}
	for _, k := range keys {
		ks.byID[k.ID] = slices.Clone(k.Public)
	}
	v.keys.Store(ks)
	// Entries are tagged with the set they were verified under and only
	// served under that same set, so an in-flight Verify that still holds
	// the old set and caches after this clear cannot resurrect a dropped
	// key; clearing reclaims the memory.
	if v.cache != nil {
		v.cache.clear()
	}
}

// Verify checks raw and returns its claims, or an *[Error] whose Reason says
// why it was rejected. The returned claims may be shared with other callers
// through the cache and must be treated as read-only.
//
// A successful result is cached until the token's exp (not exp plus skew:
// past exp the full check, with its leeway, runs again); failures are never
// cached.
func (v *Verifier) Verify(raw string) (*Claims, error) {
	ks := v.keys.Load()
	var (
		h   uint64
		now time.Time
	)
	if v.cache != nil {
		h, now = v.cache.hash(raw), v.now()
		if c := v.cache.get(h, raw, ks, now); c != nil {
			return c, nil
		}
	}
	claims := &Claims{}
	tok, err := v.parser.ParseWithClaims(raw, claims, ks.keyfunc)
	if err != nil {
		return nil, v.classify(tok, claims, err)
	}
	if missing := v.missingClaims(claims); len(missing) > 0 {
		return nil, newError(ReasonMissingClaims, "token is missing required claims: %s", strings.Join(missing, ", "))
	}
	if want := Subject(claims.Namespace, claims.Name); claims.Subject != want {
		return nil, newError(ReasonMalformed, "token sub %s does not match ns/name %s", quote(claims.Subject), quote(want))
	}
	if v.cache != nil {
		v.cache.put(h, raw, ks, claims, now, v.skew)
	}
	return claims, nil
}

// CacheStats returns the verification cache counters; all zero when the
// cache is disabled.
func (v *Verifier) CacheStats() CacheStats {
	if v.cache == nil {
		return CacheStats{}
	}
	return v.cache.stats()
}

func (ks *keySet) keyfunc(t *jwt.Token) (any, error) {
	h, present := t.Header["kid"]
	kid, ok := h.(string)
	switch {
	case !present || kid == "" && ok:
		return nil, newError(ReasonMalformed, "token has no kid header")
	case !ok:
		return nil, newError(ReasonMalformed, "token kid header is not a string")
	}
	pub, ok := ks.byID[kid]
	if !ok {
		return nil, newError(ReasonUnknownKey, "token signed with unknown key %s", quote(kid))
	}
	return pub, nil
}

// classify turns a jwt parse error into an *Error. jwt joins every failed
// claim check into one error; the order below picks the most fundamental
// reason when several apply.
func (v *Verifier) classify(tok *jwt.Token, c *Claims, err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e // from keyfunc
	}
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		// jwt's message already says "token is malformed: ..."; keeping its
		// error also keeps errors.Is(err, jwt.ErrTokenMalformed) working.
		return &Error{Reason: ReasonMalformed, Err: err}
	case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
		var alg string
		if tok != nil {
			alg, _ = tok.Header["alg"].(string)
		}
		switch alg {
		case "":
			return newError(ReasonMalformed, "token has no alg header")
		case jwt.SigningMethodEdDSA.Alg():
			return newError(ReasonBadSignature, "token signature is invalid")
		default:
			return newError(ReasonBadSignature, "token algorithm %s is not accepted; only EdDSA is", quote(alg))
		}
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return newError(ReasonMissingClaims, "token is missing required claims: %s", strings.Join(v.missingClaims(c), ", "))
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return newError(ReasonWrongIssuer, "token issuer %s is not %s", quote(c.Issuer), quote(v.issuer))
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return newError(ReasonWrongAudience, "token audience %s does not include %s", quote(strings.Join(c.Audience, ",")), quote(v.audience))
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return newError(ReasonNotYetValid, "token not valid before %s", c.NotBefore.UTC().Format(time.RFC3339))
	case errors.Is(err, jwt.ErrTokenExpired):
		return newError(ReasonExpired, "token expired at %s", c.ExpiresAt.UTC().Format(time.RFC3339))
	}
	return newError(ReasonMalformed, "invalid token: %v", err)
}

func (v *Verifier) missingClaims(c *Claims) []string {
	var m []string
	if c.ExpiresAt == nil {
		m = append(m, "exp")
	}
	if v.issuer != "" && c.Issuer == "" {
		m = append(m, "iss")
	}
	if v.audience != "" && (len(c.Audience) == 0 || len(c.Audience) == 1 && c.Audience[0] == "") {
		m = append(m, "aud")
	}
	if c.Subject == "" {
		m = append(m, "sub")
	}
	if c.UID == "" {
		m = append(m, "uid")
	}
	if c.Namespace == "" {
		m = append(m, "ns")
	}
	if c.Name == "" {
		m = append(m, "name")
	}
	return m
}

// quote quotes attacker-controlled strings for error messages, bounded so a
// huge header cannot bloat logs.
func quote(s string) string {
	const max = 64
	if len(s) > max {
		s = s[:max] + "..."
	}
	return strconv.Quote(s)
}
