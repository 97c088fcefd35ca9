package token

import (
	"sync"
	"time"
)

// JWKSKey is the key, in the ConfigMap the operator publishes and the proxy
// reads, that holds the JWKS document ([MarshalJWKS]).
const JWKSKey = "jwks.json"

// KeyStore holds the signing keys a process loaded, for whatever signs and
// verifies with them (the token reconciler, the refresh endpoint). It is safe
// for concurrent use.
type KeyStore struct {
	mu       sync.RWMutex
	keys     []Key
	now      func() time.Time
	verifier *Verifier
	ready    chan struct{}
	once     sync.Once
}

// NewKeyStore returns an empty store whose verifier checks iss and aud.
func NewKeyStore(issuer, audience string, now func() time.Time) *KeyStore {
	return &KeyStore{
		now:      now,
		verifier: NewVerifier(VerifierOptions{Issuer: issuer, Audience: audience, Now: now}),
		ready:    make(chan struct{}),
	}
}

// Set replaces the keys.
func (s *KeyStore) Set(keys []Key) {
	s.mu.Lock()
	s.keys = keys
	s.mu.Unlock()
	s.verifier.SetKeys(keys)
	if len(keys) > 0 {
		s.once.Do(func() { close(s.ready) })
	}
}

// Active returns the key that signs new tokens now: a new key only once it
// has been published for [ActivationDelay].
func (s *KeyStore) Active() (Key, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return SigningKey(s.keys, s.now())
}

// Verifier verifies tokens against every loaded key.
func (s *KeyStore) Verifier() *Verifier { return s.verifier }

// Ready is closed once the first key is loaded.
func (s *KeyStore) Ready() <-chan struct{} { return s.ready }
