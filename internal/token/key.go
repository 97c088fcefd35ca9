package token

import (
	"bytes"
	"cmp"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"
)

// PrivateKeysDataKey is the single entry of the Secret data written by
// [EncodePrivateKeys]. One entry (rather than one per kid) keeps a rotation a
// single atomic write of the whole set.
const PrivateKeysDataKey = "keys.json"

// Key is one Ed25519 signing key.
type Key struct {
	// ID is the kid: the RFC 7638 JWK thumbprint of the public key, so it is
	// stable, derivable by anyone holding the JWKS, and cannot collide
	// between distinct keys.
	ID string
	// Private is the signing half; nil in a public-only set such as one
	// returned by [ParseJWKS].
	Private ed25519.PrivateKey
	// Public is the verification half.
	Public ed25519.PublicKey
	// CreatedAt is when the key was generated; it orders keys for rotation.
	// Zero in a set returned by [ParseJWKS].
	CreatedAt time.Time
}

// GenerateKey returns a new random key created at now.
func GenerateKey(now time.Time) (Key, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return Key{}, fmt.Errorf("generating Ed25519 key: %w", err)
	}
	return Key{
		ID:        Thumbprint(pub),
		Private:   priv,
		Public:    pub,
		CreatedAt: now.UTC().Round(0),
	}, nil
}

// Thumbprint returns the RFC 7638 JWK thumbprint (SHA-256, base64url without
// padding) of an Ed25519 public key, which this package uses as the kid.
func Thumbprint(pub ed25519.PublicKey) string {
	// RFC 7638 §3.2: required members only, lexicographic order, no spaces.
	canon := `{"crv":"Ed25519","kty":"OKP","x":"` + base64.RawURLEncoding.EncodeToString(pub) + `"}`
	sum := sha256.Sum256([]byte(canon))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// SortNewestFirst sorts keys in place by CreatedAt descending, breaking ties
// by ID so the order (and anything serialized from it) is deterministic.
func SortNewestFirst(keys []Key) {
	slices.SortFunc(keys, func(a, b Key) int {
		if c := b.CreatedAt.Compare(a.CreatedAt); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
}

// ActivationDelay is how long a new key is published before it signs, so
// that every verifier (the proxy watches the JWKS) knows it before the first
// token it signed arrives. Rotation never makes a valid token fail.
const ActivationDelay = 10 * time.Second

// ActiveKey returns the newest key of keys, and false when keys is empty.
// keys may be in any order and is not modified.
func ActiveKey(keys []Key) (Key, bool) {
	if len(keys) == 0 {
		return Key{}, false
	}
	sorted := slices.Clone(keys)
	SortNewestFirst(sorted)
	return sorted[0], true
}

// SigningKey returns the key that signs at now: the newest key published for
// at least [ActivationDelay]. When no key is that old (a fresh install), the
// oldest key signs, since no verifier can have seen any earlier one.
func SigningKey(keys []Key, now time.Time) (Key, bool) {
	if len(keys) == 0 {
		return Key{}, false
	}
	sorted := slices.Clone(keys)
	SortNewestFirst(sorted)
	for _, k := range sorted {
		if !now.Before(k.CreatedAt.Add(ActivationDelay)) {
			return k, true
		}
	}
	return sorted[len(sorted)-1], true
}

// jwk is the JSON Web Key shape of RFC 7517 with the OKP members of RFC 8037.
// CreatedAt is a private extension, written only in the Secret form.
type jwk struct {
	Kty       string     `json:"kty"`
	Crv       string     `json:"crv"`
	Kid       string     `json:"kid"`
	Alg       string     `json:"alg,omitempty"`
	Use       string     `json:"use,omitempty"`
	X         string     `json:"x"`
	D         string     `json:"d,omitempty"`
	CreatedAt *time.Time `json:"created_at,omitempty"`
}

type jwkSet struct {
	Keys []jwk `json:"keys"`
}

// EncodePrivateKeys returns the Secret data holding keys, including their
// private halves: a single [PrivateKeysDataKey] entry containing a JWK set
// (RFC 8037 "d" is the 32-byte seed) whose entries also carry "created_at".
// Keys are written newest first so equal sets encode to equal bytes and the
// caller can skip no-op writes. Every key must have its private half.
func EncodePrivateKeys(keys []Key) (map[string][]byte, error) {
	sorted := slices.Clone(keys)
	SortNewestFirst(sorted)
	set := jwkSet{Keys: make([]jwk, 0, len(sorted))}
	seen := make(map[string]bool, len(sorted))
	for _, k := range sorted {
		if err := checkKey(k, true); err != nil {
			return nil, err
		}
		if seen[k.ID] {
			return nil, fmt.Errorf("duplicate key id %q", k.ID)
		}
		seen[k.ID] = true
		created := k.CreatedAt.UTC()
		set.Keys = append(set.Keys, jwk{
			Kty:       "OKP",
			Crv:       "Ed25519",
			Kid:       k.ID,
			Alg:       "EdDSA",
			Use:       "sig",
			X:         base64.RawURLEncoding.EncodeToString(k.Public),
			D:         base64.RawURLEncoding.EncodeToString(k.Private.Seed()),
			CreatedAt: &created,
		})
	}
	b, err := json.Marshal(set)
	if err != nil {
		return nil, err
	}
	return map[string][]byte{PrivateKeysDataKey: b}, nil
}

// DecodePrivateKeys is the inverse of [EncodePrivateKeys]; keys come back
// newest first. Empty or nil data (a Secret not yet filled) yields no keys and
// no error; non-empty data without the [PrivateKeysDataKey] entry is an error,
// because silently treating it as empty would make the caller replace every
// key and invalidate every token. Each key is checked: the seed must derive
// the stored public key and the kid must be its thumbprint.
func DecodePrivateKeys(data map[string][]byte) ([]Key, error) {
	if len(data) == 0 {
		return nil, nil
	}
	raw, ok := data[PrivateKeysDataKey]
	if !ok {
		return nil, fmt.Errorf("private key data has no %q entry", PrivateKeysDataKey)
	}
	var set jwkSet
	if err := json.Unmarshal(raw, &set); err != nil {
		return nil, fmt.Errorf("decoding %s: %w", PrivateKeysDataKey, err)
	}
	keys := make([]Key, 0, len(set.Keys))
	seen := make(map[string]bool, len(set.Keys))
	for i, j := range set.Keys {
		k, err := j.toKey()
		if err != nil {
			return nil, fmt.Errorf("%s: key %d: %w", PrivateKeysDataKey, i, err)
		}
		if j.D == "" {
			return nil, fmt.Errorf("%s: key %q has no private part", PrivateKeysDataKey, k.ID)
		}
		seed, err := base64.RawURLEncoding.DecodeString(j.D)
		if err != nil || len(seed) != ed25519.SeedSize {
			return nil, fmt.Errorf("%s: key %q: d is not a base64url %d-byte Ed25519 seed", PrivateKeysDataKey, k.ID, ed25519.SeedSize)
		}
		k.Private = ed25519.NewKeyFromSeed(seed)
		if !bytes.Equal(k.Private.Public().(ed25519.PublicKey), k.Public) {
			return nil, fmt.Errorf("%s: key %q: private part does not match x", PrivateKeysDataKey, k.ID)
		}
		if k.ID != Thumbprint(k.Public) {
			return nil, fmt.Errorf("%s: key %q: kid is not the thumbprint of x", PrivateKeysDataKey, k.ID)
		}
		if j.CreatedAt == nil {
			return nil, fmt.Errorf("%s: key %q has no created_at", PrivateKeysDataKey, k.ID)
		}
		k.CreatedAt = j.CreatedAt.UTC()
		if seen[k.ID] {
			return nil, fmt.Errorf("%s: duplicate key id %q", PrivateKeysDataKey, k.ID)
		}
		seen[k.ID] = true
		keys = append(keys, k)
	}
	SortNewestFirst(keys)
	return keys, nil
}

// MarshalJWKS returns the public JWK set (RFC 7517, RFC 8037: kty OKP, crv
// Ed25519, x, kid, alg EdDSA, use sig) for verifiers, newest first. Private
// halves and creation times are never written. The output is deterministic
// for a given set.
func MarshalJWKS(keys []Key) ([]byte, error) {
	sorted := slices.Clone(keys)
	SortNewestFirst(sorted)
	set := jwkSet{Keys: make([]jwk, 0, len(sorted))}
	seen := make(map[string]bool, len(sorted))
	for _, k := range sorted {
		if err := checkKey(k, false); err != nil {
			return nil, err
		}
		if seen[k.ID] {
			return nil, fmt.Errorf("duplicate key id %q", k.ID)
		}
		seen[k.ID] = true
		set.Keys = append(set.Keys, jwk{
			Kty: "OKP",
			Crv: "Ed25519",
			Kid: k.ID,
			Alg: "EdDSA",
			Use: "sig",
			X:   base64.RawURLEncoding.EncodeToString(k.Public),
		})
	}
	return json.Marshal(set)
}

// ParseJWKS parses a JWK set into public-only keys, in document order.
// It is strict because the set is ours: any entry that is not an Ed25519
// signing key (kty OKP, crv Ed25519, alg EdDSA or absent, use sig or absent),
// lacks a kid, repeats a kid, or carries private material ("d") is an error
// rather than skipped, so a misconfigured ConfigMap is noticed instead of
// silently rejecting tokens. An empty set is valid.
func ParseJWKS(data []byte) ([]Key, error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("decoding JWKS: %w", err)
	}
	if set.Keys == nil {
		return nil, errors.New(`decoding JWKS: no "keys" array`)
	}
	keys := make([]Key, 0, len(set.Keys))
	seen := make(map[string]bool, len(set.Keys))
	for i, raw := range set.Keys {
		var j jwk
		if err := json.Unmarshal(raw, &j); err != nil {
			return nil, fmt.Errorf("JWKS key %d: %w", i, err)
		}
		if j.D != "" {
			return nil, fmt.Errorf("JWKS key %d (%q) contains private key material", i, j.Kid)
		}
		k, err := j.toKey()
		if err != nil {
			return nil, fmt.Errorf("JWKS key %d: %w", i, err)
		}
		if seen[k.ID] {
			return nil, fmt.Errorf("JWKS: duplicate key id %q", k.ID)
		}
		seen[k.ID] = true
		keys = append(keys, k)
	}
	return keys, nil
}

// toKey validates the public members of j and returns the public-only key.
func (j jwk) toKey() (Key, error) {
	if j.Kty != "OKP" || j.Crv != "Ed25519" {
		return Key{}, fmt.Errorf("kid %q: unsupported key type kty=%q crv=%q; only OKP/Ed25519 is accepted", j.Kid, j.Kty, j.Crv)
	}
	if j.Alg != "" && j.Alg != "EdDSA" {
		return Key{}, fmt.Errorf("kid %q: unsupported alg %q; only EdDSA is accepted", j.Kid, j.Alg)
	}
	if j.Use != "" && j.Use != "sig" {
		return Key{}, fmt.Errorf("kid %q: unsupported use %q; only sig is accepted", j.Kid, j.Use)
	}
	if j.Kid == "" {
		return Key{}, errors.New("missing kid")
	}
	x, err := base64.RawURLEncoding.DecodeString(j.X)
	if err != nil || len(x) != ed25519.PublicKeySize {
		return Key{}, fmt.Errorf("kid %q: x is not a base64url %d-byte Ed25519 public key", j.Kid, ed25519.PublicKeySize)
	}
	return Key{ID: j.Kid, Public: ed25519.PublicKey(x)}, nil
}

func checkKey(k Key, needPrivate bool) error {
	if k.ID == "" {
		return errors.New("key has no id")
	}
	if len(k.Public) != ed25519.PublicKeySize {
		return fmt.Errorf("key %q: public key has %d bytes, want %d", k.ID, len(k.Public), ed25519.PublicKeySize)
	}
	if needPrivate && len(k.Private) != ed25519.PrivateKeySize {
		return fmt.Errorf("key %q: private key has %d bytes, want %d", k.ID, len(k.Private), ed25519.PrivateKeySize)
	}
	if needPrivate && !bytes.Equal(k.Private.Public().(ed25519.PublicKey), k.Public) {
		return fmt.Errorf("key %q: private key does not match public key", k.ID)
	}
	return nil
}
