package controller

import (
	"fmt"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/token"
)

var iat0 = time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)

func TestRenewAt(t *testing.T) {
	tests := []struct {
		uid  types.UID
		ttl  time.Duration
		want time.Time
	}{
		{"5f0c2b1e-0000-4000-8000-000000000001", 24 * time.Hour, time.Date(2026, 11, 26, 6, 21, 4, 0, time.UTC)},
		// One character apart, an hour apart.
		{"5f0c2b1e-0000-4000-8000-000000000002", 24 * time.Hour, time.Date(2026, 11, 26, 7, 20, 42, 0, time.UTC)},
		{"c0ffee00-1111-4222-8333-444455556666", time.Hour, time.Date(2026, 11, 25, 10, 48, 15, 0, time.UTC)},
		// The same user's point of the band whatever the ttl.
		{"c0ffee00-1111-4222-8333-444455556666", 10 * time.Minute, time.Date(2026, 11, 25, 10, 8, 2, 0, time.UTC)},
		{"", 24 * time.Hour, time.Date(2026, 11, 26, 7, 20, 4, 0, time.UTC)},
	}
	for _, tc := range tests {
		if got := RenewAt(tc.uid, iat0, iat0.Add(tc.ttl)); !got.Equal(tc.want) {
			t.Errorf("RenewAt(%q, ttl %v) = %v, want %v", tc.uid, tc.ttl, got, tc.want)
		}
	}
}

func claimsFor(u *llmv1alpha1.LLMUser, gen int64, iat time.Time, ttl time.Duration) *token.Claims {
	return &token.Claims{
		RegisteredClaims: jwt.RegisteredClaims{IssuedAt: jwt.NewNumericDate(iat), ExpiresAt: jwt.NewNumericDate(iat.Add(ttl))},
		Namespace:        u.Namespace, Name: u.Name, UID: string(u.UID), Generation: gen,
	}
}

func TestReissueReason(t *testing.T) {
	u := &llmv1alpha1.LLMUser{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "alice", UID: "5f0c2b1e-0000-4000-8000-000000000001"}}
	other := u.DeepCopy()
	other.UID = "recreated"
	short := u.DeepCopy()
	short.Spec.Token.TTL = &metav1.Duration{Duration: time.Hour}
	renew := time.Date(2026, 11, 26, 6, 21, 4, 0, time.UTC) // TestRenewAt's first row
	tests := []struct {
		name   string
		now    time.Time
		user   *llmv1alpha1.LLMUser
		gen    int64
		claims *token.Claims
		want   string
	}{
		{"no token", iat0, u, 1, nil, "NoValidToken"},
		{"valid", iat0.Add(time.Hour), u, 1, claimsFor(u, 1, iat0, 24*time.Hour), ""},
		{"a second before the renewal point", renew.Add(-time.Second), u, 1, claimsFor(u, 1, iat0, 24*time.Hour), ""},
		{"at the renewal point", renew, u, 1, claimsFor(u, 1, iat0, 24*time.Hour), "Renewal"},
		{"another user's token", iat0, other, 1, claimsFor(u, 1, iat0, 24*time.Hour), "WrongSubject"},
		{"older generation", iat0, u, 2, claimsFor(u, 1, iat0, 24*time.Hour), "Rotated"},
		{"ttl changed", iat0, short, 1, claimsFor(short, 1, iat0, 24*time.Hour), "TTLChanged"},
		{"no expiry", iat0, u, 1, &token.Claims{Namespace: "ns", Name: "alice", UID: string(u.UID), Generation: 1}, "NoValidToken"},
	}
	for _, tc := range tests {
		if got := reissueReason(tc.now, tc.user, tc.gen, tc.claims); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

// TestRenewalsSpread walks a fake clock minute by minute through the life of
// 1,000 tokens issued in the same second (a team onboarded at once) and
// records when each becomes due: none before 80% of the 24h lifetime, all by
// 90%, and no minute with more than a few renewals, where without the spread
// all 1,000 would fall in one.
func TestRenewalsSpread(t *testing.T) {
	const n = 1000
	ttl := 24 * time.Hour
	clk := clocktesting.NewFakeClock(iat0)
	type tok struct {
		user   *llmv1alpha1.LLMUser
		claims *token.Claims
	}
	toks := make([]tok, n)
	for i := range toks {
		u := &llmv1alpha1.LLMUser{ObjectMeta: metav1.ObjectMeta{
			Namespace: "team", Name: fmt.Sprintf("user-%04d", i), UID: types.UID(fmt.Sprintf("5f0c2b1e-0000-4000-8000-%012d", i)),
		}}
		toks[i] = tok{u, claimsFor(u, 1, iat0, ttl)}
	}
	perMinute := map[int]int{}
	renewed := 0
	for minute := 0; renewed < n && minute <= 24*60; minute++ {
		for i := range toks {
			if toks[i].claims != nil && reissueReason(clk.Now(), toks[i].user, 1, toks[i].claims) == "Renewal" {
				toks[i].claims = nil
				perMinute[minute]++
				renewed++
			}
		}
		clk.Step(time.Minute)
	}
	first, last, peak := 24*60, 0, 0
	for m, c := range perMinute {
		first, last, peak = min(first, m), max(last, m), max(peak, c)
	}
	// 80% of 24h is minute 1152, 90% minute 1296.
	if renewed != n || first < 1152 || last > 1296 {
		t.Fatalf("%d renewed, between minute %d and %d; want all, within [1152, 1296]", renewed, first, last)
	}
	t.Logf("renewals from minute %d to %d, at most %d in a minute", first, last, peak)
	// 1,000 over 144 minutes is 7 a minute on average.
	if peak > 20 {
		t.Errorf("%d renewals in one minute", peak)
	}
	// Each tenth of the band (14.4 minutes) holds about a tenth of the tokens.
	var tenths [10]int
	for m, c := range perMinute {
		tenths[min((m-1152)*10/144, 9)] += c
	}
	t.Logf("per tenth of the band: %v", tenths)
	for i, c := range tenths {
		if c < 60 || c > 140 {
			t.Errorf("tenth %d of the band holds %d renewals, want about 100: %v", i, c, tenths)
		}
	}
}
