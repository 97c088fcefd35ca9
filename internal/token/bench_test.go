package token

import (
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// The cached path skips base64, JSON and the Ed25519 signature check, leaving
// a hash, a read-locked map lookup and a clock read, so BenchmarkVerifyCached
// is expected to be about three orders of magnitude faster than
// BenchmarkVerifyUncached: tens of nanoseconds and no allocations, against
// tens of microseconds (dominated by Ed25519) and ~60 allocations.

// benchSetup returns a verifier and n distinct valid tokens.
func benchSetup(b *testing.B, n, cacheSize int) (*Verifier, []string) {
	b.Helper()
	clock := newClock(t0)
	k := mustKey(b, t0)
	iss := newTestIssuer(clock, k)
	raws := make([]string, n)
	for i := range raws {
		raw, _, err := iss.Issue(IssueRequest{
			Namespace: "team-" + strconv.Itoa(i%50),
			Name:      "user-" + strconv.Itoa(i),
			UID:       "uid-" + strconv.Itoa(i),
			TTL:       time.Hour,
		})
		if err != nil {
			b.Fatal(err)
		}
		raws[i] = raw
	}
	v := NewVerifier(VerifierOptions{Issuer: testIssuer, Audience: testAudience, Now: clock.Now, CacheSize: cacheSize})
	v.SetKeys([]Key{k})
	return v, raws
}

func BenchmarkVerifyUncached(b *testing.B) {
	v, raws := benchSetup(b, 1, -1)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(raws[0]); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifyCached(b *testing.B) {
	v, raws := benchSetup(b, 1, 0)
	if _, err := v.Verify(raws[0]); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(raws[0]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyCachedParallel spreads 1024 users' tokens over all
// goroutines, as a busy proxy would, so shards rather than one hot entry are
// exercised.
func BenchmarkVerifyCachedParallel(b *testing.B) {
	v, raws := benchSetup(b, 1024, 0)
	for _, raw := range raws {
		if _, err := v.Verify(raw); err != nil {
			b.Fatal(err)
		}
	}
	var next atomic.Uint64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := next.Add(7919) // distinct starting points per goroutine
		for pb.Next() {
			if _, err := v.Verify(raws[i%uint64(len(raws))]); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
	if st := v.CacheStats(); st.Misses != uint64(len(raws)) {
		b.Errorf("cache misses = %d, want only the %d warm-up misses", st.Misses, len(raws))
	}
}

func BenchmarkVerifyUncachedParallel(b *testing.B) {
	v, raws := benchSetup(b, 64, -1)
	var next atomic.Uint64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := next.Add(7919)
		for pb.Next() {
			if _, err := v.Verify(raws[i%uint64(len(raws))]); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}

func BenchmarkIssue(b *testing.B) {
	k := mustKey(b, t0)
	iss := newTestIssuer(newClock(t0), k)
	req := IssueRequest{Namespace: "team-a", Name: "alice", UID: "uid-1", TTL: time.Hour}
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := iss.Issue(req); err != nil {
			b.Fatal(err)
		}
	}
}
