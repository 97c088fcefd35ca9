package token

import (
	"sync"
	"time"
)

// JWKSKey is the key, in the ConfigMap the operator publishes and the proxy
// reads, that holds the JWKS document ([MarshalJWKS]).
const JWKSKey = "jwks.json"

// KeyStore holds the signing keys a process loaded, for whatever signs and
// verifies with them (the token reconciler, the refresh endpoint): one
// [Issuer] per key, built when the key arrives and reused for every token,
// and one [Verifier] for the whole set. It is safe for concurrent use.
type KeyStore struct {
	issuer, audience string
	now              func() time.Time
	verifier         *Verifier

	mu      sync.RWMutex
	keys    []Key
	signers map[string]*Issuer // by kid

	ready chan struct{}
	once  sync.Once
}

// NewKeyStore returns an empty store whose tokens carry iss and aud, and
// whose verifier checks them.
func NewKeyStore(issuer, audience string, now func() time.Time) *KeyStore {
	return &KeyStore{
		issuer:   issuer,
		audience: audience,
		now:      now,
		verifier: NewVerifier(VerifierOptions{Issuer: issuer, Audience: audience, Now: now}),
		signers:  map[string]*Issuer{},
		ready:    make(chan struct{}),
	}
}

// Set replaces the keys. A key already loaded keeps its [Issuer].
func (s *KeyStore) Set(keys []Key) {
	signers := make(map[string]*Issuer, len(keys))
	s.mu.Lock()
	for _, k := range keys {
		if is, ok := s.signers[k.ID]; ok {
			signers[k.ID] = is
			continue
		}
		signers[k.ID] = &Issuer{Key: k, Issuer: s.issuer, Audience: s.audience, Now: s.now}
	}
	s.keys, s.signers = keys, signers
	s.mu.Unlock()
	s.verifier.SetKeys(keys)
	if len(keys) > 0 {
		s.once.Do(func() { close(s.ready) })
	}
}

// Signer returns the issuer of the key that signs new tokens now: a new key
// only once it has been published for [ActivationDelay] (see [SigningKey]).
func (s *KeyStore) Signer() (*Issuer, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	k, ok := SigningKey(s.keys, s.now())
	if !ok {
		return nil, false
	}
	return s.signers[k.ID], true
}

// Verifier verifies tokens against every loaded key.
func (s *KeyStore) Verifier() *Verifier { return s.verifier }

// Ready is closed once the first key is loaded.
func (s *KeyStore) Ready() <-chan struct{} { return s.ready }
