package token

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func TestIssueVerifyRoundTrip(t *testing.T) {
	// Sub-second start: NumericDate truncates to seconds, and the claims
	// returned by Issue must equal what the verifier sees.
	clock := newClock(t0.Add(700 * time.Millisecond))
	k := mustKey(t, t0)
	iss := newTestIssuer(clock, k)
	v := newTestVerifier(clock, k)

	raw, issued, err := iss.Issue(IssueRequest{Namespace: "team-a", Name: "alice", UID: "uid-1", Generation: 3, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	got, err := v.Verify(raw)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}

	tok, _, err := jwt.NewParser().ParseUnverified(raw, &Claims{})
	if err != nil {
		t.Fatal(err)
	}
	if tok.Header["kid"] != k.ID || tok.Header["alg"] != "EdDSA" {
		t.Errorf("header = %v, want kid %q alg EdDSA", tok.Header, k.ID)
	}

	for _, c := range []*Claims{issued, got} {
		if c.Issuer != testIssuer {
			t.Errorf("iss = %q", c.Issuer)
		}
		if c.Subject != "team-a/alice" {
			t.Errorf("sub = %q", c.Subject)
		}
		if len(c.Audience) != 1 || c.Audience[0] != testAudience {
			t.Errorf("aud = %v", c.Audience)
		}
		if !c.IssuedAt.Equal(t0) || !c.NotBefore.Equal(t0) {
			t.Errorf("iat = %v, nbf = %v, want %v", c.IssuedAt, c.NotBefore, t0)
		}
		if !c.ExpiresAt.Equal(t0.Add(time.Hour)) {
			t.Errorf("exp = %v, want %v", c.ExpiresAt, t0.Add(time.Hour))
		}
		if n, err := base64.RawURLEncoding.DecodeString(c.ID); err != nil || len(n) != 16 {
			t.Errorf("jti = %q, want 16 random bytes base64url", c.ID)
		}
		if c.Namespace != "team-a" || c.Name != "alice" || c.UID != "uid-1" || c.Generation != 3 {
			t.Errorf("custom claims = %q %q %q %d", c.Namespace, c.Name, c.UID, c.Generation)
		}
	}
	if got.ID != issued.ID {
		t.Errorf("verified jti %q != issued jti %q", got.ID, issued.ID)
	}

	raw2, issued2, err := iss.Issue(IssueRequest{Namespace: "team-a", Name: "alice", UID: "uid-1", Generation: 3, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if raw2 == raw || issued2.ID == issued.ID {
		t.Error("two issues produced the same token or jti")
	}
}

func TestIssueErrors(t *testing.T) {
	clock := newClock(t0)
	k := mustKey(t, t0)
	ok := IssueRequest{Namespace: "ns", Name: "n", UID: "u", TTL: time.Minute}
	pub := k
	pub.Private = nil

	tests := []struct {
		name string
		key  Key
		req  func(IssueRequest) IssueRequest
	}{
		{"public-only key", pub, func(r IssueRequest) IssueRequest { return r }},
		{"no namespace", k, func(r IssueRequest) IssueRequest { r.Namespace = ""; return r }},
		{"no name", k, func(r IssueRequest) IssueRequest { r.Name = ""; return r }},
		{"no uid", k, func(r IssueRequest) IssueRequest { r.UID = ""; return r }},
		{"zero ttl", k, func(r IssueRequest) IssueRequest { r.TTL = 0; return r }},
		{"negative ttl", k, func(r IssueRequest) IssueRequest { r.TTL = -time.Second; return r }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, err := newTestIssuer(clock, tt.key).Issue(tt.req(ok)); err == nil {
				t.Error("Issue succeeded, want error")
			}
		})
	}
}

func TestVerifyRejects(t *testing.T) {
	k := mustKey(t, t0)
	other := mustKey(t, t0)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ed := jwt.SigningMethodEdDSA
	with := func(mut func(*Claims)) *Claims {
		c := validClaims(t0)
		mut(c)
		return c
	}
	valid := sign(t, ed, k.Private, k.ID, validClaims(t0))
	parts := strings.Split(valid, ".")

	tamper := func() string {
		payload, err := base64.RawURLEncoding.DecodeString(parts[1])
		if err != nil {
			t.Fatal(err)
		}
		forged := strings.Replace(string(payload), `"name":"alice"`, `"name":"admin"`, 1)
		forged = strings.Replace(forged, `"sub":"team-a/alice"`, `"sub":"team-a/admin"`, 1)
		if forged == string(payload) {
			t.Fatal("tamper did not change the payload")
		}
		return parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(forged)) + "." + parts[2]
	}
	header := func(h string) string {
		return base64.RawURLEncoding.EncodeToString([]byte(h)) + "." + parts[1] + "." + parts[2]
	}

	tests := []struct {
		name    string
		raw     string
		want    Reason // "" means accepted
		wantMsg string // substring of Error(), optional
	}{
		{"valid", valid, "", ""},
		{"alg none", sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, k.ID, validClaims(t0)), ReasonBadSignature, `"none"`},
		{"HS256 keyed with the public key", sign(t, jwt.SigningMethodHS256, []byte(k.Public), k.ID, validClaims(t0)), ReasonBadSignature, `"HS256"`},
		{"RS256", sign(t, jwt.SigningMethodRS256, rsaKey, k.ID, validClaims(t0)), ReasonBadSignature, `"RS256"`},
		{"ES256", sign(t, jwt.SigningMethodES256, ecKey, k.ID, validClaims(t0)), ReasonBadSignature, `"ES256"`},
		{"unknown alg", header(`{"alg":"XS999","kid":"` + k.ID + `"}`), ReasonBadSignature, ""},
		{"no alg", header(`{"kid":"` + k.ID + `"}`), ReasonMalformed, "alg"},
		{"unknown kid", sign(t, ed, other.Private, other.ID, validClaims(t0)), ReasonUnknownKey, other.ID},
		{"missing kid", sign(t, ed, k.Private, "", validClaims(t0)), ReasonMalformed, "kid"},
		{"non-string kid", header(`{"alg":"EdDSA","kid":7}`), ReasonMalformed, "kid"},
		{"tampered payload", tamper(), ReasonBadSignature, ""},
		{"signed by another key under our kid", sign(t, ed, other.Private, k.ID, validClaims(t0)), ReasonBadSignature, "signature"},
		{"signature stripped", parts[0] + "." + parts[1] + ".", ReasonBadSignature, ""},
		{"expired", sign(t, ed, k.Private, k.ID, with(func(c *Claims) {
			c.ExpiresAt = jwt.NewNumericDate(t0.Add(-time.Minute))
		})), ReasonExpired, "token expired at 2026-11-25T09:59:00Z"},
		{"expired exactly skew ago", sign(t, ed, k.Private, k.ID, with(func(c *Claims) {
			c.ExpiresAt = jwt.NewNumericDate(t0.Add(-testSkew))
		})), ReasonExpired, ""},
		{"expired within skew", sign(t, ed, k.Private, k.ID, with(func(c *Claims) {
			c.ExpiresAt = jwt.NewNumericDate(t0.Add(-10 * time.Second))
		})), "", ""},
		{"nbf beyond skew", sign(t, ed, k.Private, k.ID, with(func(c *Claims) {
			c.NotBefore = jwt.NewNumericDate(t0.Add(time.Minute))
		})), ReasonNotYetValid, "not valid before 2026-11-25T10:01:00Z"},
		{"nbf within skew", sign(t, ed, k.Private, k.ID, with(func(c *Claims) {
			c.NotBefore = jwt.NewNumericDate(t0.Add(10 * time.Second))
		})), "", ""},
		{"wrong iss", sign(t, ed, k.Private, k.ID, with(func(c *Claims) { c.Issuer = "https://evil.example" })), ReasonWrongIssuer, "evil"},
		{"wrong aud", sign(t, ed, k.Private, k.ID, with(func(c *Claims) { c.Audience = jwt.ClaimStrings{"other"} })), ReasonWrongAudience, "other"},
		{"no iss", sign(t, ed, k.Private, k.ID, with(func(c *Claims) { c.Issuer = "" })), ReasonMissingClaims, "iss"},
		{"no aud", sign(t, ed, k.Private, k.ID, with(func(c *Claims) { c.Audience = nil })), ReasonMissingClaims, "aud"},
		{"no exp", sign(t, ed, k.Private, k.ID, with(func(c *Claims) { c.ExpiresAt = nil })), ReasonMissingClaims, "exp"},
		{"no sub", sign(t, ed, k.Private, k.ID, with(func(c *Claims) { c.Subject = "" })), ReasonMissingClaims, "sub"},
		{"no uid", sign(t, ed, k.Private, k.ID, with(func(c *Claims) { c.UID = "" })), ReasonMissingClaims, "uid"},
		{"no ns and name", sign(t, ed, k.Private, k.ID, with(func(c *Claims) { c.Namespace, c.Name = "", "" })), ReasonMissingClaims, "ns, name"},
		{"sub disagrees with ns/name", sign(t, ed, k.Private, k.ID, with(func(c *Claims) { c.Subject = "team-b/alice" })), ReasonMalformed, "sub"},
		{"exp wrong type", sign(t, ed, k.Private, k.ID, jwt.MapClaims{
			"iss": testIssuer, "aud": testAudience, "sub": "team-a/alice", "ns": "team-a", "name": "alice", "uid": "u", "exp": "tomorrow",
		}), ReasonMalformed, ""},
		{"empty", "", ReasonMalformed, ""},
		{"garbage", "not a token", ReasonMalformed, ""},
		{"two segments", "abc.def", ReasonMalformed, ""},
		{"four segments", valid + ".x", ReasonMalformed, ""},
		{"dots", "..", ReasonMalformed, ""},
		{"undecodable segments", "a.b.c", ReasonMalformed, ""},
		{"header not json", base64.RawURLEncoding.EncodeToString([]byte("nope")) + "." + parts[1] + "." + parts[2], ReasonMalformed, ""},
		{"padded base64", parts[0] + "=." + parts[1] + "." + parts[2], ReasonMalformed, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := newTestVerifier(newClock(t0), k)
			c, err := v.Verify(tt.raw)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Verify: %v, want success", err)
				}
				if c == nil || c.UID == "" {
					t.Fatalf("Verify returned claims %+v", c)
				}
				return
			}
			if err == nil {
				t.Fatalf("Verify succeeded, want %s", tt.want)
			}
			if c != nil {
				t.Error("Verify returned claims along with an error")
			}
			t.Logf("%s: %v", tt.want, err)
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %T %v is not *Error", err, err)
			}
			if e.Reason != tt.want {
				t.Errorf("Reason = %s (%v), want %s", e.Reason, err, tt.want)
			}
			if !errors.Is(err, &Error{Reason: tt.want}) {
				t.Errorf("errors.Is(err, sentinel %s) = false", tt.want)
			}
			if tt.wantMsg != "" && !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("Error() = %q, want it to contain %q", err.Error(), tt.wantMsg)
			}
		})
	}
}

func TestErrorSentinels(t *testing.T) {
	sentinels := map[Reason]*Error{
		ReasonMalformed:     ErrMalformed,
		ReasonExpired:       ErrExpired,
		ReasonNotYetValid:   ErrNotYetValid,
		ReasonUnknownKey:    ErrUnknownKey,
		ReasonBadSignature:  ErrBadSignature,
		ReasonWrongIssuer:   ErrWrongIssuer,
		ReasonWrongAudience: ErrWrongAudience,
		ReasonMissingClaims: ErrMissingClaims,
	}
	detail := errors.New("detail")
	for r, s := range sentinels {
		e := &Error{Reason: r, Err: detail}
		if !errors.Is(e, s) {
			t.Errorf("errors.Is(%s error, its sentinel) = false", r)
		}
		if !errors.Is(e, detail) {
			t.Errorf("%s error does not unwrap to its detail", r)
		}
		if e.Error() != "detail" {
			t.Errorf("Error() = %q, want the detail", e.Error())
		}
		if s.Error() == "" {
			t.Errorf("sentinel %s has an empty message", r)
		}
		for r2, s2 := range sentinels {
			if r2 != r && errors.Is(e, s2) {
				t.Errorf("%s error matches sentinel %s", r, r2)
			}
		}
	}
}

func TestVerifierWithoutKeys(t *testing.T) {
	k := mustKey(t, t0)
	raw := sign(t, jwt.SigningMethodEdDSA, k.Private, k.ID, validClaims(t0))
	v := NewVerifier(VerifierOptions{Issuer: testIssuer, Audience: testAudience, Now: newClock(t0).Now})
	if _, err := v.Verify(raw); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("Verify with no keys = %v, want unknown_key", err)
	}
}

func TestVerifierDefaultSkew(t *testing.T) {
	k := mustKey(t, t0)
	c := validClaims(t0)
	c.ExpiresAt = jwt.NewNumericDate(t0.Add(-DefaultClockSkew + time.Second))
	raw := sign(t, jwt.SigningMethodEdDSA, k.Private, k.ID, c)

	v := NewVerifier(VerifierOptions{Issuer: testIssuer, Audience: testAudience, Now: newClock(t0).Now})
	v.SetKeys([]Key{k})
	if _, err := v.Verify(raw); err != nil {
		t.Errorf("default skew: %v, want accepted", err)
	}
	strict := NewVerifier(VerifierOptions{Issuer: testIssuer, Audience: testAudience, Now: newClock(t0).Now, ClockSkew: -1})
	strict.SetKeys([]Key{k})
	if _, err := strict.Verify(raw); !errors.Is(err, ErrExpired) {
		t.Errorf("no skew: %v, want expired", err)
	}
}

func TestVerifyCacheHit(t *testing.T) {
	clock := newClock(t0)
	k := mustKey(t, t0)
	v := newTestVerifier(clock, k)
	raw, _, err := newTestIssuer(clock, k).Issue(IssueRequest{Namespace: "ns", Name: "n", UID: "u", TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	first, err := v.Verify(raw)
	if err != nil {
		t.Fatal(err)
	}
	second, err := v.Verify(raw)
	if err != nil {
		t.Fatal(err)
	}
	if first != second {
		t.Error("second Verify did not return the cached claims")
	}
	if got, want := v.CacheStats(), (CacheStats{Hits: 1, Misses: 1, Entries: 1}); got != want {
		t.Errorf("CacheStats = %+v, want %+v", got, want)
	}
}

func TestVerifyCacheNotServedAfterExp(t *testing.T) {
	clock := newClock(t0)
	k := mustKey(t, t0)
	v := newTestVerifier(clock, k)
	raw, _, err := newTestIssuer(clock, k).Issue(IssueRequest{Namespace: "ns", Name: "n", UID: "u", TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	exp := t0.Add(time.Minute)

	steps := []struct {
		at       time.Time
		want     Reason // "" means accepted
		wantHits uint64
	}{
		{t0, "", 0},                    // verified and cached
		{exp.Add(-time.Second), "", 1}, // served from cache
		{exp, "", 1},                   // past exp: re-verified, accepted only thanks to the skew
		{exp.Add(testSkew - time.Second), "", 1},
		{exp.Add(testSkew), ReasonExpired, 1},
	}
	for _, s := range steps {
		clock.SetTime(s.at)
		_, err := v.Verify(raw)
		switch {
		case s.want == "" && err != nil:
			t.Errorf("at exp%+v: %v, want accepted", s.at.Sub(exp), err)
		case s.want != "" && !errors.Is(err, &Error{Reason: s.want}):
			t.Errorf("at exp%+v: %v, want %s", s.at.Sub(exp), err, s.want)
		}
		if got := v.CacheStats().Hits; got != s.wantHits {
			t.Errorf("at exp%+v: cache hits = %d, want %d", s.at.Sub(exp), got, s.wantHits)
		}
	}
}

func TestVerifyCacheRespectsNotBefore(t *testing.T) {
	// A clock that steps backwards (the fake one here, NTP in real life)
	// must not let a cached entry outlive the nbf rule.
	clock := newClock(t0)
	k := mustKey(t, t0)
	v := newTestVerifier(clock, k)
	raw, _, err := newTestIssuer(clock, k).Issue(IssueRequest{Namespace: "ns", Name: "n", UID: "u", TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(raw); err != nil {
		t.Fatal(err)
	}
	clock.SetTime(t0.Add(-time.Minute))
	if _, err := v.Verify(raw); !errors.Is(err, ErrNotYetValid) {
		t.Errorf("Verify before nbf = %v, want not_yet_valid", err)
	}
}

func TestSetKeysClearsCache(t *testing.T) {
	clock := newClock(t0)
	k1, k2 := mustKey(t, t0), mustKey(t, t0.Add(time.Second))
	v := newTestVerifier(clock, k1, k2)
	raw, _, err := newTestIssuer(clock, k1).Issue(IssueRequest{Namespace: "ns", Name: "n", UID: "u", TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := v.Verify(raw); err != nil {
			t.Fatal(err)
		}
	}
	if v.CacheStats().Hits != 1 {
		t.Fatalf("token was not cached: %+v", v.CacheStats())
	}

	v.SetKeys([]Key{k2})
	if n := v.CacheStats().Entries; n != 0 {
		t.Errorf("cache holds %d entries after SetKeys", n)
	}
	if _, err := v.Verify(raw); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("Verify after its key was dropped = %v, want unknown_key", err)
	}
}

func TestCacheFailuresNotCached(t *testing.T) {
	clock := newClock(t0)
	k := mustKey(t, t0)
	v := newTestVerifier(clock, k)
	c := validClaims(t0)
	c.Issuer = "someone-else"
	raw := sign(t, jwt.SigningMethodEdDSA, k.Private, k.ID, c)
	for range 3 {
		if _, err := v.Verify(raw); !errors.Is(err, ErrWrongIssuer) {
			t.Fatalf("Verify = %v, want wrong_issuer", err)
		}
	}
	if got := v.CacheStats(); got.Entries != 0 || got.Hits != 0 || got.Misses != 3 {
		t.Errorf("CacheStats = %+v, want 3 misses and nothing cached", got)
	}
}

func TestCacheBounded(t *testing.T) {
	tests := []struct{ size, tokens int }{
		{1, 10},
		{5, 40},
		{100, 300},
	}
	for _, tt := range tests {
		clock := newClock(t0)
		k := mustKey(t, t0)
		v := NewVerifier(VerifierOptions{Issuer: testIssuer, Audience: testAudience, Now: clock.Now, CacheSize: tt.size})
		v.SetKeys([]Key{k})
		iss := newTestIssuer(clock, k)
		for i := range tt.tokens {
			raw, _, err := iss.Issue(IssueRequest{Namespace: "ns", Name: "n", UID: "u", Generation: int64(i), TTL: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := v.Verify(raw); err != nil {
				t.Fatal(err)
			}
		}
		if got := v.CacheStats().Entries; got > tt.size || got == 0 {
			t.Errorf("size %d after %d tokens: %d entries, want 1..%d", tt.size, tt.tokens, got, tt.size)
		}
	}
}

func TestCacheDisabled(t *testing.T) {
	clock := newClock(t0)
	k := mustKey(t, t0)
	v := NewVerifier(VerifierOptions{Issuer: testIssuer, Audience: testAudience, Now: clock.Now, CacheSize: -1})
	v.SetKeys([]Key{k})
	raw, _, err := newTestIssuer(clock, k).Issue(IssueRequest{Namespace: "ns", Name: "n", UID: "u", TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	a, err := v.Verify(raw)
	if err != nil {
		t.Fatal(err)
	}
	b, err := v.Verify(raw)
	if err != nil {
		t.Fatal(err)
	}
	if a == b {
		t.Error("disabled cache returned shared claims")
	}
	if got := v.CacheStats(); got != (CacheStats{}) {
		t.Errorf("CacheStats = %+v, want zero", got)
	}
}

// TestVerifyConcurrentWithSetKeys is meant for -race: readers hammer the
// cache while the key set flips between containing and lacking the key.
func TestVerifyConcurrentWithSetKeys(t *testing.T) {
	clock := newClock(t0)
	k := mustKey(t, t0)
	v := newTestVerifier(clock, k)
	iss := newTestIssuer(clock, k)
	var raws []string
	for i := range 16 {
		raw, _, err := iss.Issue(IssueRequest{Namespace: "ns", Name: "n", UID: "u", Generation: int64(i), TTL: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		raws = append(raws, raw)
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 200 {
				_, err := v.Verify(raws[(g+i)%len(raws)])
				if err != nil && !errors.Is(err, ErrUnknownKey) {
					t.Errorf("Verify: %v", err)
					return
				}
			}
		})
	}
	for i := range 50 {
		if i%2 == 0 {
			v.SetKeys(nil)
		} else {
			v.SetKeys([]Key{k})
		}
	}
	wg.Wait()
	v.SetKeys(nil)
	for _, raw := range raws {
		if _, err := v.Verify(raw); !errors.Is(err, ErrUnknownKey) {
			t.Fatalf("after final SetKeys(nil): %v, want unknown_key", err)
		}
	}
}

// fixedKey is a key from a fixed seed, so that a fuzz corpus entry means the
// same token on every run.
func fixedKey(now time.Time) Key {
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))
	pub := priv.Public().(ed25519.PublicKey)
	return Key{ID: Thumbprint(pub), Private: priv, Public: pub, CreatedAt: now}
}

// FuzzVerify: whatever the input, the verifier either refuses it with a
// classified error or accepts one of the tokens the fixed key signed, byte
// for byte, with the claims it was signed with. No re-encoding, no
// forged header, no other key's or algorithm's signature gets through.
func FuzzVerify(f *testing.F) {
	clock := newClock(t0)
	k := fixedKey(t0)
	// Ed25519 signatures are deterministic, so with fixed claims (jti
	// included) every fuzz worker process builds the same tokens.
	issued := map[string]*Claims{}
	for i, who := range [][3]string{{"ns", "n", "u"}, {"team-a", "alice", "uid-alice"}} {
		c := validClaims(t0)
		c.Subject = Subject(who[0], who[1])
		c.Namespace, c.Name, c.UID, c.Generation = who[0], who[1], who[2], int64(i)
		raw := sign(f, jwt.SigningMethodEdDSA, k.Private, k.ID, c)
		issued[raw] = c
		f.Add(raw)
		f.Add(raw + "=")
		f.Add(strings.ToUpper(raw[:1]) + raw[1:])
	}
	other := mustKey(f, t0)
	otherRaw, _, err := newTestIssuer(clock, other).Issue(IssueRequest{Namespace: "ns", Name: "n", UID: "u", TTL: time.Hour})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(otherRaw)
	f.Add(sign(f, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, k.ID, validClaims(t0)))
	f.Add("eyJhbGciOiJFZERTQSJ9.e30.")
	f.Add("..")
	f.Add("")
	v := newTestVerifier(clock, k)
	f.Fuzz(func(t *testing.T, s string) {
		c, err := v.Verify(s)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Reason == "" {
				t.Fatalf("error %v is not a classified *Error", err)
			}
			if c != nil {
				t.Fatal("claims returned with an error")
			}
			return
		}
		want, ok := issued[s]
		if !ok {
			t.Fatalf("accepted %q, which the key never signed (claims %+v)", s, c)
		}
		if c.Namespace != want.Namespace || c.Name != want.Name || c.UID != want.UID || c.Generation != want.Generation || c.ID != want.ID {
			t.Fatalf("accepted %q with claims %+v, signed with %+v", s, c, want)
		}
	})
}
