package token

import (
	"errors"
	"slices"
	"testing"
	"time"
)

func TestPlanRotation(t *testing.T) {
	const (
		period = 24 * time.Hour
		maxTTL = time.Hour
	)
	at := func(id string, created time.Time) Key { return Key{ID: id, CreatedAt: created} }
	now := t0

	tests := []struct {
		name      string
		keys      []Key
		period    time.Duration
		force     bool
		wantKeep  []string
		wantNew   bool
		wantCheck time.Time
	}{
		{
			name:    "no keys",
			period:  period,
			wantNew: true,
		},
		{
			name:      "young key",
			keys:      []Key{at("a", now.Add(-time.Hour))},
			period:    period,
			wantKeep:  []string{"a"},
			wantCheck: now.Add(-time.Hour).Add(period),
		},
		{
			name:     "old key",
			keys:     []Key{at("a", now.Add(-25*time.Hour))},
			period:   period,
			wantKeep: []string{"a"},
			wantNew:  true,
		},
		{
			name:     "key exactly period old",
			keys:     []Key{at("a", now.Add(-period))},
			period:   period,
			wantKeep: []string{"a"},
			wantNew:  true,
		},
		{
			name:      "force on a young key",
			keys:      []Key{at("a", now.Add(-time.Hour))},
			period:    period,
			force:     true,
			wantKeep:  []string{"a"},
			wantNew:   true,
			wantCheck: now.Add(-time.Hour).Add(period),
		},
		{
			name:      "previous key kept while its tokens may live",
			keys:      []Key{at("old", now.Add(-30*time.Hour)), at("new", now.Add(-10*time.Minute))},
			period:    period,
			wantKeep:  []string{"new", "old"},
			wantCheck: now.Add(-10 * time.Minute).Add(ActivationDelay + maxTTL + DefaultClockSkew),
		},
		{
			name:      "previous key one second before its drop",
			keys:      []Key{at("old", now.Add(-30*time.Hour)), at("new", now.Add(-ActivationDelay-maxTTL-DefaultClockSkew+time.Second))},
			period:    period,
			wantKeep:  []string{"new", "old"},
			wantCheck: now.Add(time.Second),
		},
		{
			name:      "previous key dropped at next.CreatedAt+activation+maxTTL+skew",
			keys:      []Key{at("old", now.Add(-30*time.Hour)), at("new", now.Add(-ActivationDelay-maxTTL-DefaultClockSkew))},
			period:    period,
			wantKeep:  []string{"new"},
			wantCheck: now.Add(-ActivationDelay - maxTTL - DefaultClockSkew).Add(period),
		},
		{
			name: "unordered input, two retired keys, one droppable",
			keys: []Key{
				at("b", now.Add(-2*time.Hour)),
				at("d", now.Add(-5*time.Minute)),
				at("a", now.Add(-50*time.Hour)),
				at("c", now.Add(-10*time.Minute)),
			},
			period: period,
			// a retired when b was created (2h+ ago): dropped.
			// b retired when c was created: kept until c+1h30s.
			// c retired when d was created: kept until d+1h30s.
			wantKeep:  []string{"d", "c", "b"},
			wantCheck: now.Add(-10 * time.Minute).Add(ActivationDelay + maxTTL + DefaultClockSkew),
		},
		{
			name:     "rotation disabled, nothing to drop",
			keys:     []Key{at("a", now.Add(-1000*time.Hour))},
			period:   0,
			wantKeep: []string{"a"},
		},
		{
			name:      "rotation disabled, retired key pending",
			keys:      []Key{at("a", now.Add(-1000*time.Hour)), at("b", now.Add(-time.Minute))},
			period:    0,
			wantKeep:  []string{"b", "a"},
			wantCheck: now.Add(-time.Minute).Add(ActivationDelay + maxTTL + DefaultClockSkew),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			input := slices.Clone(tt.keys)
			p := PlanRotation(tt.keys, now, tt.period, maxTTL, tt.force)
			var keep []string
			for _, k := range p.Keep {
				keep = append(keep, k.ID)
			}
			if !slices.Equal(keep, tt.wantKeep) {
				t.Errorf("Keep = %v, want %v", keep, tt.wantKeep)
			}
			if p.NeedNew != tt.wantNew {
				t.Errorf("NeedNew = %v, want %v", p.NeedNew, tt.wantNew)
			}
			if !p.NextCheck.Equal(tt.wantCheck) {
				t.Errorf("NextCheck = %v, want %v", p.NextCheck, tt.wantCheck)
			}
			if !p.NextCheck.IsZero() && !p.NextCheck.After(now) {
				t.Errorf("NextCheck %v is not in the future", p.NextCheck)
			}
			if !slices.EqualFunc(input, tt.keys, func(a, b Key) bool { return a.ID == b.ID }) {
				t.Error("PlanRotation reordered its argument")
			}
		})
	}
}

// TestRotationOverlap drives a rotation the way the controller and the proxy
// will: plan, generate, store, publish through JWKS bytes, verify.
func TestRotationOverlap(t *testing.T) {
	const (
		period = 24 * time.Hour
		ttl    = time.Hour
	)
	clock := newClock(t0)
	v := newTestVerifier(clock)
	publish := func(keys []Key) {
		t.Helper()
		b, err := MarshalJWKS(keys)
		if err != nil {
			t.Fatal(err)
		}
		pub, err := ParseJWKS(b)
		if err != nil {
			t.Fatal(err)
		}
		v.SetKeys(pub)
	}
	// store round-trips through the Secret form, as the controller would.
	store := func(keys []Key) []Key {
		t.Helper()
		data, err := EncodePrivateKeys(keys)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodePrivateKeys(data)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	issueWith := func(k Key) string {
		t.Helper()
		raw, _, err := newTestIssuer(clock, k).Issue(IssueRequest{Namespace: "ns", Name: "n", UID: "u", TTL: ttl})
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	issue := func(keys []Key) string {
		t.Helper()
		active, ok := ActiveKey(keys)
		if !ok {
			t.Fatal("no active key")
		}
		return issueWith(active)
	}

	// Bootstrap.
	plan := PlanRotation(nil, clock.Now(), period, ttl, false)
	if !plan.NeedNew {
		t.Fatal("empty set does not need a key")
	}
	key1 := mustKey(t, clock.Now())
	keys := store(append(plan.Keep, key1))
	publish(keys)

	// A token key1 signs one second before rotation is due.
	clock.SetTime(t0.Add(period - time.Second))
	tok1 := issue(keys)

	// Rotation is due.
	clock.SetTime(t0.Add(period))
	plan = PlanRotation(keys, clock.Now(), period, ttl, false)
	if !plan.NeedNew {
		t.Fatalf("key1 at %v old not due for rotation", period)
	}
	key2 := mustKey(t, clock.Now())
	keys = store(append(plan.Keep, key2))
	plan = PlanRotation(keys, clock.Now(), period, ttl, false)
	if plan.NeedNew || len(plan.Keep) != 2 {
		t.Fatalf("after rotation: NeedNew=%v, %d keys kept, want false and 2", plan.NeedNew, len(plan.Keep))
	}
	publish(plan.Keep)
	tok2 := issue(plan.Keep)
	if active, _ := ActiveKey(plan.Keep); active.ID != key2.ID {
		t.Fatal("new key is not the active key")
	}

	for name, tok := range map[string]string{"key1": tok1, "key2": tok2} {
		if _, err := v.Verify(tok); err != nil {
			t.Errorf("during overlap, %s token: %v", name, err)
		}
	}

	// key2 signs only once it has been published for ActivationDelay: the
	// last token key1 signs is issued a second before that.
	clock.SetTime(key2.CreatedAt.Add(ActivationDelay - time.Second))
	signer, _ := SigningKey(plan.Keep, clock.Now())
	if signer.ID != key1.ID {
		t.Fatalf("key2 signs before its activation delay passed")
	}
	last1 := issueWith(signer)
	clock.SetTime(key2.CreatedAt.Add(ActivationDelay))
	if signer, _ = SigningKey(plan.Keep, clock.Now()); signer.ID != key2.ID {
		t.Fatalf("key2 does not sign once activated")
	}

	// The plan's own deadline is when key1 may go: its last token expires at
	// key2.CreatedAt+ActivationDelay+ttl-1s and is accepted for the skew after that.
	drop := key2.CreatedAt.Add(ActivationDelay + ttl + DefaultClockSkew)
	if !plan.NextCheck.Equal(drop) {
		t.Fatalf("NextCheck = %v, want %v", plan.NextCheck, drop)
	}
	clock.SetTime(drop.Add(-2 * time.Second))
	if _, err := v.Verify(last1); err != nil {
		t.Errorf("key1 token in its last accepted second: %v", err)
	}

	clock.SetTime(drop)
	plan = PlanRotation(plan.Keep, clock.Now(), period, ttl, false)
	if len(plan.Keep) != 1 || plan.Keep[0].ID != key2.ID {
		t.Fatalf("at drop time Keep = %v, want only key2", plan.Keep)
	}
	publish(plan.Keep)
	if _, err := v.Verify(last1); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("key1 token after key1 dropped: %v, want unknown_key", err)
	}
	if _, err := v.Verify(issue(plan.Keep)); err != nil {
		t.Errorf("fresh key2 token: %v", err)
	}
}
