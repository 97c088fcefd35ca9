package token

import (
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// TestKeyStoreSigner: the store keeps one issuer per key across reloads,
// switches to a new key only after the activation delay, and its tokens are
// what the jwt library itself would have produced (same header, claims that
// verify).
func TestKeyStoreSigner(t *testing.T) {
	clk := newClock(t0)
	old := mustKey(t, t0.Add(-time.Hour))
	s := NewKeyStore(testIssuer, testAudience, clk.Now)
	if _, ok := s.Signer(); ok {
		t.Fatal("an empty store signs")
	}
	s.Set([]Key{old})
	first, ok := s.Signer()
	if !ok || first.Key.ID != old.ID {
		t.Fatalf("signer %+v", first)
	}

	fresh := mustKey(t, t0)
	s.Set([]Key{fresh, old})
	again, _ := s.Signer()
	if again != first {
		t.Error("reloading the same key built a new issuer")
	}
	clk.Step(ActivationDelay)
	next, _ := s.Signer()
	if next.Key.ID != fresh.ID {
		t.Fatalf("after the activation delay the store signs with %s, want the new key %s", next.Key.ID, fresh.ID)
	}

	raw, claims, err := next.Issue(IssueRequest{Namespace: "team-a", Name: "alice", UID: "uid-1", Generation: 3, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Verifier().Verify(raw)
	if err != nil || got.UID != "uid-1" || got.Generation != 3 || !got.ExpiresAt.Equal(t0.Add(ActivationDelay+time.Hour)) {
		t.Fatalf("verified %+v (%v)", got, err)
	}
	// The library's encoding of the same claims differs only in the signature.
	lib := sign(t, jwt.SigningMethodEdDSA, fresh.Private, fresh.ID, claims)
	if head(raw, 2) != head(lib, 2) {
		t.Errorf("token %s\nlibrary %s", head(raw, 2), head(lib, 2))
	}
}

// head returns the first n dot-separated segments of a compact JWS.
func head(raw string, n int) string {
	for i, c := range raw {
		if c == '.' {
			if n--; n == 0 {
				return raw[:i]
			}
		}
	}
	return raw
}

func TestIssuerRefusesABrokenKey(t *testing.T) {
	k := mustKey(t, t0)
	k.Private = k.Private[:10]
	iss := newTestIssuer(newClock(t0), k)
	for range 2 {
		if _, _, err := iss.Issue(IssueRequest{Namespace: "n", Name: "u", UID: "x", TTL: time.Hour}); err == nil ||
			err.Error() != `issuer key: key "`+k.ID+`": private key has 10 bytes, want 64` {
			t.Errorf("err = %v", err)
		}
	}
}
