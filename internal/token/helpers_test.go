package token

import (
	clocktesting "k8s.io/utils/clock/testing"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const (
	testIssuer   = "https://llm-user-operator.example/issuer"
	testAudience = "llm-proxy"
	testSkew     = 30 * time.Second
)

// t0 is the fixed start of every fake clock.
var t0 = time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)

// fakeClock is a settable clock shared by issuers and verifiers in tests.
type fakeClock = clocktesting.FakeClock

func newClock(t time.Time) *fakeClock { return clocktesting.NewFakeClock(t) }

func mustKey(t testing.TB, now time.Time) Key {
	t.Helper()
	k, err := GenerateKey(now)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newTestVerifier(clock *fakeClock, keys ...Key) *Verifier {
	v := NewVerifier(VerifierOptions{
		Issuer:    testIssuer,
		Audience:  testAudience,
		ClockSkew: testSkew,
		Now:       clock.Now,
	})
	v.SetKeys(keys)
	return v
}

func newTestIssuer(clock *fakeClock, k Key) *Issuer {
	return &Issuer{Key: k, Issuer: testIssuer, Audience: testAudience, Now: clock.Now}
}

// validClaims returns claims that a verifier at now accepts.
func validClaims(now time.Time) *Claims {
	return &Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    testIssuer,
			Subject:   "team-a/alice",
			Audience:  jwt.ClaimStrings{testAudience},
			ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour)),
			NotBefore: jwt.NewNumericDate(now),
			IssuedAt:  jwt.NewNumericDate(now),
			ID:        "jti-1",
		},
		Namespace:  "team-a",
		Name:       "alice",
		UID:        "5f0c2b1e-0000-4000-8000-000000000001",
		Generation: 1,
	}
}

// sign builds a token by hand, bypassing Issuer, so tests can produce tokens
// Issuer never would. kid "" omits the header.
func sign(t testing.TB, method jwt.SigningMethod, key any, kid string, claims jwt.Claims) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
