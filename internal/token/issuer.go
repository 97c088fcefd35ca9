package token

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
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

// Issuer signs user tokens with one key. Build one per key and keep it (as
// [KeyStore] does): the key is checked and the JOSE header encoded once, on
// first use, not for every token. It is safe for concurrent use.
type Issuer struct {
	// Key is the signing key; Private must be set.
	Key Key
	// Issuer is the iss claim.
	Issuer string
	// Audience is the single aud claim value; empty omits aud.
	Audience string
	// Now is the clock; nil means [time.Now].
	Now func() time.Time

	prepare sync.Once
	header  []byte // base64url JOSE header and the dot that follows it
	keyErr  error
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
	i.prepare.Do(i.prep)
	if i.keyErr != nil {
		return "", nil, i.keyErr
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
	payload, err := json.Marshal(c)
	if err != nil {
		return "", nil, fmt.Errorf("encoding claims: %w", err)
	}
	// A compact JWS (RFC 7515): header.payload.signature, each base64url.
	enc := base64.RawURLEncoding
	tok := make([]byte, 0, len(i.header)+enc.EncodedLen(len(payload))+1+enc.EncodedLen(ed25519.SignatureSize))
	tok = append(tok, i.header...)
	tok = enc.AppendEncode(tok, payload)
	sig := ed25519.Sign(i.Key.Private, tok)
	tok = append(tok, '.')
	tok = enc.AppendEncode(tok, sig)
	return string(tok), c, nil
}

// prep checks the key and encodes the header every token of this key shares.
func (i *Issuer) prep() {
	if err := checkKey(i.Key, true); err != nil {
		i.keyErr = fmt.Errorf("issuer key: %w", err)
		return
	}
	h, err := json.Marshal(struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
		Typ string `json:"typ"`
	}{jwt.SigningMethodEdDSA.Alg(), i.Key.ID, "JWT"})
	if err != nil {
		i.keyErr = fmt.Errorf("encoding the JOSE header: %w", err)
		return
	}
	i.header = append(base64.RawURLEncoding.AppendEncode(nil, h), '.')
}
