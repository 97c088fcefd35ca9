package token

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Claims are the claims carried by each user token.
type Claims struct {
	// RegisteredClaims holds iss, sub ("<namespace>/<name>"), aud, exp, nbf,
	// iat and jti.
	jwt.RegisteredClaims
	// Namespace is the LLMUser's namespace.
	Namespace string `json:"ns"`
	// Name is the LLMUser's name.
	Name string `json:"name"`
	// UID is the LLMUser's metadata.uid, so a token outlives neither a
	// deleted user nor one recreated under the same name.
	UID string `json:"uid"`
	// Generation is the token generation, bumped on a forced re-issue so
	// that the proxy can refuse tokens older than the user's current one
	// (Verify does not know the current generation and does not check it).
	Generation int64 `json:"gen"`
}

// Subject returns the sub claim value for a user: "<namespace>/<name>".
func Subject(namespace, name string) string { return namespace + "/" + name }

// Issuer signs user tokens with one key.
type Issuer struct {
	// Key is the active signing key; Private must be set.
	Key Key
	// Issuer is the iss claim.
	Issuer string
	// Audience is the single aud claim value; empty omits aud.
	Audience string
	// Now is the clock; nil means [time.Now].
	Now func() time.Time
}

// IssueRequest describes the token to issue.
type IssueRequest struct {
	// Namespace and Name identify the LLMUser; UID is its metadata.uid.
	Namespace, Name, UID string
	// Generation is copied into the gen claim.
	Generation int64
	// TTL is the token lifetime; it must be positive and should not exceed
	// the maxTTL given to [PlanRotation].
	TTL time.Duration
}

// Issue returns a signed token and the claims it carries. The header carries
// the key's kid; jti is random; iat = nbf = now and exp = now + TTL, all at
// the one-second precision of JWT NumericDate (truncated), so the returned
// claims are exactly what a verifier will see.
func (i *Issuer) Issue(r IssueRequest) (string, *Claims, error) {
	if err := checkKey(i.Key, true); err != nil {
		return "", nil, fmt.Errorf("issuer key: %w", err)
	}
	if r.Namespace == "" || r.Name == "" || r.UID == "" {
		return "", nil, errors.New("issue request needs namespace, name and uid")
	}
	if r.TTL <= 0 {
		return "", nil, fmt.Errorf("issue request TTL %v is not positive", r.TTL)
	}
	now := time.Now
	if i.Now != nil {
		now = i.Now
	}
	t := now()
	var jti [16]byte
	if _, err := rand.Read(jti[:]); err != nil {
		return "", nil, fmt.Errorf("generating jti: %w", err)
	}
	c := &Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    i.Issuer,
			Subject:   Subject(r.Namespace, r.Name),
			ExpiresAt: jwt.NewNumericDate(t.Add(r.TTL)),
			NotBefore: jwt.NewNumericDate(t),
			IssuedAt:  jwt.NewNumericDate(t),
			ID:        base64.RawURLEncoding.EncodeToString(jti[:]),
		},
		Namespace:  r.Namespace,
		Name:       r.Name,
		UID:        r.UID,
		Generation: r.Generation,
	}
	if i.Audience != "" {
		c.Audience = jwt.ClaimStrings{i.Audience}
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, c)
	tok.Header["kid"] = i.Key.ID
	s, err := tok.SignedString(i.Key.Private)
	if err != nil {
		return "", nil, fmt.Errorf("signing token: %w", err)
	}
	return s, c, nil
}
