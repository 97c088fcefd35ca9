package quota

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"

	clocktesting "k8s.io/utils/clock/testing"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
)

// The suite in this file is the contract of [Counter]; every implementation
// runs it through testCounter.

// fakeClock is the injected clock; tests move it by hand.
type fakeClock = clocktesting.FakeClock

func newFakeClock(t time.Time) *fakeClock { return clocktesting.NewFakeClock(t) }

func ptr(v int64) *int64 { return &v }

// t0 is a Wednesday, in the middle of its minute, hour, day, week and month.
var t0 = utc("2027-03-10T12:30:15Z")

const (
	minute = llmv1alpha1.WindowMinute
	hour   = llmv1alpha1.WindowHour
	day    = llmv1alpha1.WindowDay
)

func reserve(t testing.TB, c Counter, budgets []Budget, est Amount) (*Reservation, Decision) {
	t.Helper()
	r, d, err := c.Reserve(context.Background(), Request{Budgets: budgets, Estimate: est})
	if err != nil {
		t.Fatalf("Reserve(%v): %v", est, err)
	}
	if d.Allowed != (r != nil) {
		t.Fatalf("Reserve(%v): Allowed %v with reservation %v", est, d.Allowed, r)
	}
	return r, d
}

// admit reserves est and fails the test unless it was admitted.
func admit(t testing.TB, c Counter, budgets []Budget, est Amount) *Reservation {
	t.Helper()
	r, d := reserve(t, c, budgets, est)
	if !d.Allowed {
		t.Fatalf("Reserve(%v) refused: %+v", est, d.Exceeded)
	}
	return r
}

func settle(t testing.TB, c Counter, r *Reservation, actual Amount) {
	t.Helper()
	if err := c.Settle(context.Background(), r, actual); err != nil {
		t.Fatalf("Settle(%v): %v", actual, err)
	}
}

// charge reserves and settles amount at once: usage already done.
func charge(t testing.TB, c Counter, budgets []Budget, amount Amount) {
	t.Helper()
	settle(t, c, admit(t, c, budgets, amount), amount)
}

func status(t testing.TB, c Counter, b Budget) []WindowStatus {
	t.Helper()
	s, err := c.Status(context.Background(), b)
	if err != nil {
		t.Fatalf("Status(%s): %v", b.Key, err)
	}
	return s
}

func window(b Budget, i int, now time.Time, used, reserved Amount) WindowStatus {
	l := b.Limits[i]
	return WindowStatus{
		Budget:   b.Key,
		Limit:    l,
		Start:    WindowStart(l.Window, now),
		ResetAt:  WindowEnd(l.Window, now),
		Used:     used,
		Reserved: reserved,
	}
}

func sameWindow(a, b WindowStatus) bool {
	return a.Budget == b.Budget && reflect.DeepEqual(a.Limit, b.Limit) &&
		a.Start.Equal(b.Start) && a.ResetAt.Equal(b.ResetAt) &&
		a.Used == b.Used && a.Reserved == b.Reserved
}

func fmtWindows(ws []WindowStatus) string {
	s := ""
	for _, w := range ws {
		s += fmt.Sprintf("\n  %s %s [%s, %s) used %+v reserved %+v", w.Budget, w.Limit.Window,
			w.Start.Format(time.RFC3339), w.ResetAt.Format(time.RFC3339), w.Used, w.Reserved)
	}
	return s
}

func checkWindows(t testing.TB, what string, got []WindowStatus, want ...WindowStatus) {
	t.Helper()
	ok := len(got) == len(want)
	for i := 0; ok && i < len(got); i++ {
		ok = sameWindow(got[i], want[i])
	}
	if !ok {
		t.Errorf("%s windows:%s\nwant:%s", what, fmtWindows(got), fmtWindows(want))
	}
}

func sameExceeded(a, b *Exceeded) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Budget == b.Budget && a.Window == b.Window && a.Resource == b.Resource &&
		a.Limit == b.Limit && a.Used == b.Used && a.ResetAt.Equal(b.ResetAt) && a.DryRun == b.DryRun
}

func checkExceeded(t testing.TB, got, want *Exceeded) {
	t.Helper()
	if !sameExceeded(got, want) {
		t.Errorf("Exceeded = %+v, want %+v", got, want)
	}
}

func testCounter(t *testing.T, newCounter func(now func() time.Time) Counter) {
	ctx := context.Background()
	setup := func() (*fakeClock, Counter) {
		clock := newFakeClock(t0)
		return clock, newCounter(clock.Now)
	}
	alice := UserBudget("team", "alice", "uid-alice", []Limit{{Window: day, Tokens: ptr(1000), Requests: ptr(10)}}, false)

	t.Run("admit under limit", func(t *testing.T) {
		_, c := setup()
		est := amt(1, 100, 200)
		r, d := reserve(t, c, []Budget{alice}, est)
		if !d.Allowed || d.Exceeded != nil {
			t.Fatalf("Decision = %+v, want allowed with nothing exceeded", d)
		}
		if r.Amount != est || !r.At.Equal(t0) || len(r.Budgets) != 1 || r.Budgets[0].Key != alice.Key {
			t.Errorf("Reservation = %+v", r)
		}
		checkWindows(t, "decision", d.Windows, window(alice, 0, t0, Amount{}, est))
		checkWindows(t, "status after reserve", status(t, c, alice), window(alice, 0, t0, Amount{}, est))

		settle(t, c, r, amt(1, 100, 150))
		checkWindows(t, "status after settle", status(t, c, alice), window(alice, 0, t0, amt(1, 100, 150), Amount{}))
	})

	t.Run("reservation ids are unique", func(t *testing.T) {
		_, c := setup()
		seen := map[uint64]bool{}
		for range 5 {
			r := admit(t, c, []Budget{alice}, amt(1, 1, 1))
			if seen[r.ID] {
				t.Errorf("reservation ID %d reused", r.ID)
			}
			seen[r.ID] = true
		}
	})

	refusals := []struct {
		name    string
		limit   Limit
		first   Amount // charged before
		pending Amount // reserved, in flight
		est     Amount // refused
		res     Resource
		cap     int64
		held    int64
		fits    Amount // admitted once pending is released: exactly at the cap
	}{
		{"tokens", Limit{Window: hour, Tokens: ptr(100)}, amt(1, 40, 30), amt(1, 5, 5), amt(1, 10, 11), ResourceTokens, 100, 80, amt(1, 15, 15)},
		{"input tokens", Limit{Window: hour, InputTokens: ptr(50)}, amt(1, 30, 500), amt(1, 10, 0), amt(1, 11, 0), ResourceInputTokens, 50, 40, amt(1, 20, 1000)},
		{"output tokens", Limit{Window: hour, OutputTokens: ptr(50)}, amt(1, 500, 30), amt(1, 0, 10), amt(1, 0, 11), ResourceOutputTokens, 50, 40, amt(1, 1000, 20)},
		{"requests", Limit{Window: hour, Requests: ptr(2)}, amt(1, 10, 10), amt(1, 0, 0), amt(1, 1, 1), ResourceRequests, 2, 2, amt(1, 1000, 1000)},
	}
	for _, tt := range refusals {
		t.Run("refuse over "+tt.name, func(t *testing.T) {
			_, c := setup()
			b := UserBudget("team", "bob", "uid-bob", []Limit{tt.limit}, false)
			charge(t, c, []Budget{b}, tt.first)
			pending := admit(t, c, []Budget{b}, tt.pending)

			r, d := reserve(t, c, []Budget{b}, tt.est)
			if d.Allowed || r != nil {
				t.Fatalf("Reserve(%v) admitted, want refused", tt.est)
			}
			checkExceeded(t, d.Exceeded, &Exceeded{
				Budget: b.Key, Window: hour, Resource: tt.res, Limit: tt.cap, Used: tt.held,
				ResetAt: utc("2027-03-10T13:00:00Z"),
			})
			before := window(b, 0, t0, tt.first, tt.pending)
			checkWindows(t, "refused decision", d.Windows, before)
			checkWindows(t, "status after refusal", status(t, c, b), before)

			settle(t, c, pending, Amount{})
			r = admit(t, c, []Budget{b}, tt.fits)
			checkWindows(t, "status at the cap", status(t, c, b), window(b, 0, t0, tt.first, tt.fits))
			settle(t, c, r, Amount{})
		})
	}

	t.Run("the first limit without room is reported", func(t *testing.T) {
		_, c := setup()
		b := UserBudget("team", "carol", "uid-carol", []Limit{
			{Window: minute, Requests: ptr(100)},
			{Window: hour, OutputTokens: ptr(10), Requests: ptr(1)},
			{Window: day, Tokens: ptr(8)},
		}, false)
		charge(t, c, []Budget{b}, amt(1, 0, 5))
		_, d := reserve(t, c, []Budget{b}, amt(1, 0, 6))
		checkExceeded(t, d.Exceeded, &Exceeded{
			Budget: b.Key, Window: hour, Resource: ResourceOutputTokens, Limit: 10, Used: 5,
			ResetAt: WindowEnd(hour, t0),
		})
	})

	t.Run("an oversized request is refused, even in an empty window", func(t *testing.T) {
		_, c := setup()
		b := UserBudget("team", "dave", "uid-dave", []Limit{{Window: minute, Tokens: ptr(100)}}, false)
		_, d := reserve(t, c, []Budget{b}, amt(1, 60, 41))
		checkExceeded(t, d.Exceeded, &Exceeded{Budget: b.Key, Window: minute, Resource: ResourceTokens, Limit: 100, Used: 0, ResetAt: WindowEnd(minute, t0)})

		// Exactly at the cap is admitted.
		r := admit(t, c, []Budget{b}, amt(1, 60, 40))
		settle(t, c, r, amt(1, 50, 50))
		// At the cap, even a request estimated at no tokens is refused.
		_, d = reserve(t, c, []Budget{b}, amt(1, 0, 0))
		checkExceeded(t, d.Exceeded, &Exceeded{Budget: b.Key, Window: minute, Resource: ResourceTokens, Limit: 100, Used: 100, ResetAt: WindowEnd(minute, t0)})
	})

	t.Run("output shrinks to the room left, in whole steps", func(t *testing.T) {
		_, c := setup()
		b := UserBudget("team", "olga", "uid-olga", []Limit{{Window: hour, Tokens: ptr(400)}, {Window: day, OutputTokens: ptr(1000)}}, false)
		charge(t, c, []Budget{b}, amt(1, 200, 173)) // 27 tokens left in the hour
		for _, tt := range []struct {
			est    Amount
			step   int64
			grant  int64 // output granted, 0 = refused
			bound  Resource
			window llmv1alpha1.Window
		}{
			{amt(1, 10, 64), 1, 17, "", ""},               // 27 - 10 input
			{amt(1, 10, 64), 4, 16, "", ""},               // 4 sequences of 4 tokens
			{amt(1, 10, 64), 16, 16, "", ""},              // 16 sequences of 1 token
			{amt(1, 10, 64), 17, 17, "", ""},              // 17 sequences of 1 token
			{amt(1, 10, 64), 18, 0, ResourceTokens, hour}, // not one token each for 18
			{amt(1, 10, 12), 1, 12, "", ""},               // fits whole: nothing lowered
			{amt(1, 27, 64), 1, 0, ResourceTokens, hour},  // the prompt alone fills it
			{amt(1, 10, 64), 0, 0, ResourceTokens, hour},  // no step: all or nothing
			{amt(1, 0, 0), 1, 0, "", ""},                  // nothing to lower
		} {
			r, d, err := c.Reserve(ctx, Request{Budgets: []Budget{b}, Estimate: tt.est, OutputStep: tt.step})
			if err != nil {
				t.Fatal(err)
			}
			if tt.bound == "" {
				want := amt(tt.est.Requests, tt.est.InputTokens, tt.grant)
				if !d.Allowed || d.Granted != want || r.Amount != want || d.Exceeded != nil {
					t.Errorf("est %+v step %d: allowed %t granted %+v reserved %+v exceeded %+v; want %+v", tt.est, tt.step, d.Allowed, d.Granted, r, d.Exceeded, want)
				}
				settle(t, c, r, Amount{})
				continue
			}
			if d.Allowed || r != nil || !d.Granted.IsZero() {
				t.Errorf("est %+v step %d: admitted %+v, want refused", tt.est, tt.step, d.Granted)
				continue
			}
			checkExceeded(t, d.Exceeded, &Exceeded{Budget: b.Key, Window: tt.window, Resource: tt.bound, Limit: 400, Used: 373, ResetAt: WindowEnd(tt.window, t0)})
		}
		checkWindows(t, "nothing left held", status(t, c, b), window(b, 0, t0, amt(1, 200, 173), Amount{}), window(b, 1, t0, amt(1, 200, 173), Amount{}))

		// The tighter of two limits binds: 1000-173 output left by day, 27 by hour.
		_, d, _ := c.Reserve(ctx, Request{Budgets: []Budget{b}, Estimate: amt(1, 0, 5000), OutputStep: 1})
		if d.Granted != (amt(1, 0, 27)) {
			t.Errorf("granted %+v, want the hour's 27 tokens", d.Granted)
		}
	})

	t.Run("output shrinks to an output cap", func(t *testing.T) {
		_, c := setup()
		b := UserBudget("team", "pia", "uid-pia", []Limit{{Window: hour, OutputTokens: ptr(50), InputTokens: ptr(1000)}}, false)
		charge(t, c, []Budget{b}, amt(1, 500, 20))
		_, d, _ := c.Reserve(ctx, Request{Budgets: []Budget{b}, Estimate: amt(1, 400, 100), OutputStep: 3})
		if !d.Allowed || d.Granted != (amt(1, 400, 30)) {
			t.Errorf("granted %+v (allowed %t), want 30 output tokens (10 per sequence)", d.Granted, d.Allowed)
		}
		// An input cap is never lowered: it refuses whatever the output.
		_, d, _ = c.Reserve(ctx, Request{Budgets: []Budget{b}, Estimate: amt(1, 101, 1), OutputStep: 1})
		checkExceeded(t, d.Exceeded, &Exceeded{Budget: b.Key, Window: hour, Resource: ResourceInputTokens, Limit: 1000, Used: 900, ResetAt: WindowEnd(hour, t0)})
	})

	t.Run("dry-run limits report what they would have granted", func(t *testing.T) {
		_, c := setup()
		b := PoolBudget("team", "shadow", "uid-shadow", []Limit{{Window: hour, Tokens: ptr(100)}}, true)
		charge(t, c, []Budget{b}, amt(1, 60, 10))
		r, d, _ := c.Reserve(ctx, Request{Budgets: []Budget{b}, Estimate: amt(1, 10, 50), OutputStep: 2})
		if !d.Allowed || d.Granted != (amt(1, 10, 50)) || d.WouldGrant != (amt(1, 10, 20)) || d.Exceeded != nil {
			t.Errorf("decision %+v, want everything granted and 20 output tokens that would have been", d)
		}
		settle(t, c, r, Amount{})
		_, d, _ = c.Reserve(ctx, Request{Budgets: []Budget{b}, Estimate: amt(1, 30, 50), OutputStep: 2})
		if !d.Allowed || d.Granted != (amt(1, 30, 50)) || !d.WouldGrant.IsZero() {
			t.Errorf("decision %+v, want everything granted, nothing that would have been", d)
		}
		checkExceeded(t, d.Exceeded, &Exceeded{Budget: b.Key, Window: hour, Resource: ResourceTokens, Limit: 100, Used: 70, ResetAt: WindowEnd(hour, t0), DryRun: true})
	})

	// Costs are in pico-units; a price is what a token costs in them.
	price := Price{Input: 2, CachedInput: 1, Output: 5}
	priced := func(c Counter, budgets []Budget, est Amount, step int64, p Price) (*Reservation, Decision) {
		t.Helper()
		r, d, err := c.Reserve(ctx, Request{Budgets: budgets, Estimate: est, OutputStep: step, Model: "org/model", Price: p})
		if err != nil {
			t.Fatalf("Reserve(%+v): %v", est, err)
		}
		return r, d
	}
	costed := func(a Amount, cost int64) Amount { a.Cost = cost; return a }

	t.Run("a cost cap refuses like a token cap", func(t *testing.T) {
		_, c := setup()
		b := UserBudget("team", "cora", "uid-cora", []Limit{{Window: hour, Cost: ptr(1000)}}, false)
		charge(t, c, []Budget{b}, costed(amt(1, 100, 100), 600))
		// 50 input tokens at 2 and 50 output at 5: at most 350.
		pending, d := priced(c, []Budget{b}, amt(1, 50, 50), 0, price)
		if !d.Allowed || d.Granted != costed(amt(1, 50, 50), 350) {
			t.Fatalf("decision %+v, want 350 reserved", d)
		}
		checkWindows(t, "reserved", d.Windows, window(b, 0, t0, costed(amt(1, 100, 100), 600), costed(amt(1, 50, 50), 350)))
		// 950 held, and 10 + 10 tokens may cost 70.
		r, d := priced(c, []Budget{b}, amt(1, 10, 10), 0, price)
		if d.Allowed || r != nil {
			t.Fatal("admitted past the cost cap")
		}
		checkExceeded(t, d.Exceeded, &Exceeded{Budget: b.Key, Window: hour, Resource: ResourceCost, Limit: 1000, Used: 950, ResetAt: WindowEnd(hour, t0)})
		settle(t, c, pending, costed(amt(1, 50, 10), 150))
		// 750 used: 70 fits, and exactly 250 fits.
		r, d = priced(c, []Budget{b}, amt(1, 25, 40), 0, price)
		if !d.Allowed || d.Granted.Cost != 250 {
			t.Fatalf("decision %+v, want exactly the 250 left reserved", d)
		}
		settle(t, c, r, Amount{})
		if _, d := priced(c, []Budget{b}, amt(1, 25, 41), 0, price); d.Allowed {
			t.Error("admitted 255 with 250 left")
		}
	})

	t.Run("output shrinks to the cost left", func(t *testing.T) {
		_, c := setup()
		b := UserBudget("team", "cleo", "uid-cleo", []Limit{{Window: hour, Cost: ptr(1000)}, {Window: day, Tokens: ptr(10_000)}}, false)
		charge(t, c, []Budget{b}, costed(amt(1, 0, 0), 600))
		for _, tc := range []struct {
			est        Amount
			step       int64
			grant      int64
			cost       int64
			refusedFor Resource
		}{
			{amt(1, 10, 100), 1, 76, 20 + 76*5, ""}, // (400 - 20) / 5
			{amt(1, 10, 100), 3, 75, 20 + 75*5, ""},
			{amt(1, 10, 50), 1, 50, 20 + 50*5, ""}, // fits whole
			{amt(1, 10, 100), 77, 0, 0, ResourceCost},
			{amt(1, 200, 100), 1, 0, 0, ResourceCost}, // the prompt alone costs 400
			{amt(1, 10, 100), 0, 0, 0, ResourceCost},  // no step: all or nothing
		} {
			r, d := priced(c, []Budget{b}, tc.est, tc.step, price)
			if tc.refusedFor != "" {
				if d.Allowed {
					t.Errorf("est %+v step %d: admitted %+v, want refused", tc.est, tc.step, d.Granted)
					continue
				}
				checkExceeded(t, d.Exceeded, &Exceeded{Budget: b.Key, Window: hour, Resource: ResourceCost, Limit: 1000, Used: 600, ResetAt: WindowEnd(hour, t0)})
				continue
			}
			want := costed(amt(1, tc.est.InputTokens, tc.grant), tc.cost)
			if !d.Allowed || d.Granted != want || r.Amount != want {
				t.Errorf("est %+v step %d: granted %+v (allowed %t), want %+v", tc.est, tc.step, d.Granted, d.Allowed, want)
			}
			settle(t, c, r, Amount{})
		}
	})

	t.Run("a request that costs nothing passes an exhausted cost cap", func(t *testing.T) {
		_, c := setup()
		b := UserBudget("team", "fred", "uid-fred", []Limit{{Window: hour, Cost: ptr(100), Tokens: ptr(1000)}}, false)
		charge(t, c, []Budget{b}, costed(amt(1, 10, 10), 100))
		if _, d := priced(c, []Budget{b}, amt(1, 10, 10), 0, Price{}); !d.Allowed {
			t.Errorf("a free model's request refused: %+v", d.Exceeded)
		}
		_, d := priced(c, []Budget{b}, amt(1, 1, 0), 0, price)
		checkExceeded(t, d.Exceeded, &Exceeded{Budget: b.Key, Window: hour, Resource: ResourceCost, Limit: 100, Used: 100, ResetAt: WindowEnd(hour, t0)})
	})

	t.Run("the higher input price bounds a reservation", func(t *testing.T) {
		_, c := setup()
		b := UserBudget("team", "gus", "uid-gus", []Limit{{Window: hour, Cost: ptr(1000)}}, false)
		_, d := priced(c, []Budget{b}, amt(1, 10, 0), 0, Price{Input: 1, CachedInput: 3})
		if d.Granted.Cost != 30 {
			t.Errorf("reserved %d for 10 input tokens at 1 (3 cached), want 30", d.Granted.Cost)
		}
	})

	t.Run("a dry-run cost cap counts and reports", func(t *testing.T) {
		_, c := setup()
		b := UserBudget("team", "dina", "uid-dina", []Limit{{Window: day, Cost: ptr(100)}}, true)
		r, d := priced(c, []Budget{b}, amt(1, 20, 20), 0, price) // at most 140
		if !d.Allowed || r == nil {
			t.Fatal("a dry-run cost cap refused")
		}
		checkExceeded(t, d.Exceeded, &Exceeded{Budget: b.Key, Window: day, Resource: ResourceCost, Limit: 100, Used: 0, ResetAt: WindowEnd(day, t0), DryRun: true})
		settle(t, c, r, Amount{Requests: 1, InputTokens: 20, CachedInputTokens: 4, OutputTokens: 20, Cost: 16*2 + 4*1 + 20*5})
		checkWindows(t, "counted past the cap", status(t, c, b), window(b, 0, t0, Amount{Requests: 1, InputTokens: 20, CachedInputTokens: 4, OutputTokens: 20, Cost: 136}, Amount{}))
	})

	t.Run("usage is split by model, the first models by name", func(t *testing.T) {
		_, c := setup()
		b := UserBudget("team", "mo", "uid-mo", []Limit{{Window: day, Requests: ptr(100)}, {Window: hour}}, false)
		use := func(model string, a Amount) {
			t.Helper()
			r, _, err := c.Reserve(ctx, Request{Budgets: []Budget{b}, Estimate: a, Model: model})
			if err != nil {
				t.Fatal(err)
			}
			settle(t, c, r, a)
		}
		for i := range MaxModels + 2 {
			use(fmt.Sprintf("org/m%02d", MaxModels+1-i), Amount{Requests: 1, InputTokens: 10, CachedInputTokens: 2, OutputTokens: int64(i), Cost: 7})
		}
		use("org/m11", Amount{Requests: 1, InputTokens: 1, OutputTokens: 1, Cost: 1}) // named
		use("org/m00", Amount{Requests: 1, InputTokens: 1, OutputTokens: 1, Cost: 1}) // came eleventh
		use("other", Amount{Requests: 1, Cost: 1})
		ws := status(t, c, b)
		for _, w := range ws {
			var names []string
			var sum Amount
			for _, m := range w.Models {
				names = append(names, m.Model)
				sum = sum.Add(m.Amount)
			}
			want := []string{"org/m02", "org/m03", "org/m04", "org/m05", "org/m06", "org/m07", "org/m08", "org/m09", "org/m10", "org/m11", "other"}
			if fmt.Sprint(names) != fmt.Sprint(want) {
				t.Errorf("%s models %v, want %v", w.Limit.Window, names, want)
			}
			if sum != w.Used {
				t.Errorf("%s: the models sum to %+v, the window to %+v", w.Limit.Window, sum, w.Used)
			}
			if got := w.Models[9].Amount; got != (Amount{Requests: 2, InputTokens: 11, CachedInputTokens: 2, OutputTokens: 1, Cost: 8}) {
				t.Errorf("%s org/m11 = %+v", w.Limit.Window, got)
			}
			// org/m01, org/m00 (twice) and the model named other.
			if got := w.Models[10].Amount; got != (Amount{Requests: 4, InputTokens: 21, CachedInputTokens: 4, OutputTokens: 10 + 11 + 1, Cost: 16}) {
				t.Errorf("%s other = %+v", w.Limit.Window, got)
			}
		}
		if got, _ := c.Lifetime(ctx, b); got != ws[0].Used {
			t.Errorf("lifetime %+v, want the window's %+v", got, ws[0].Used)
		}
	})

	t.Run("seed restores cost, cached tokens and models", func(t *testing.T) {
		_, c := setup()
		b := UserBudget("team", "sid", "uid-sid", []Limit{{Window: day, Cost: ptr(1_000_000)}}, false)
		start := WindowStart(day, t0)
		seed := func(used Amount, models ...ModelAmount) {
			t.Helper()
			if err := c.Seed(ctx, b, day, start, used, models); err != nil {
				t.Fatal(err)
			}
		}
		seed(Amount{Requests: 3, InputTokens: 30, CachedInputTokens: 9, OutputTokens: 3, Cost: 900},
			ModelAmount{"org/a", Amount{Requests: 2, InputTokens: 20, CachedInputTokens: 9, OutputTokens: 2, Cost: 600}},
			ModelAmount{"org/b", Amount{Requests: 1, InputTokens: 10, OutputTokens: 1, Cost: 300}})
		seed(Amount{Requests: 1, CachedInputTokens: 20, Cost: 50},
			ModelAmount{"org/a", Amount{Requests: 1, Cost: 700}})
		ws := status(t, c, b)
		if want := (Amount{Requests: 3, InputTokens: 30, CachedInputTokens: 20, OutputTokens: 3, Cost: 900}); ws[0].Used != want {
			t.Errorf("used %+v, want %+v", ws[0].Used, want)
		}
		if want := "[{org/a {2 20 2 9 700}} {org/b {1 10 1 0 300}}]"; fmt.Sprint(ws[0].Models) != want {
			t.Errorf("models %v, want %s", ws[0].Models, want)
		}
		if err := c.SeedLifetime(ctx, b, Amount{Requests: 1, CachedInputTokens: 5, Cost: 123_456_789_012_345_678}); err != nil {
			t.Fatal(err)
		}
		if got, _ := c.Lifetime(ctx, b); got != (Amount{Requests: 1, CachedInputTokens: 5, Cost: 123_456_789_012_345_678}) {
			t.Errorf("lifetime %+v", got)
		}
	})

	t.Run("costs near the 64-bit limit stay exact", func(t *testing.T) {
		_, c := setup()
		const capv = 9_000_000_000_000_000_000 // 9,000,000 currency units
		b := UserBudget("team", "rich", "uid-rich", []Limit{{Window: day, Cost: ptr(capv)}}, false)
		used := Amount{Requests: 1, Cost: capv - 1000 - 3}
		if err := c.Seed(ctx, b, day, WindowStart(day, t0), used, nil); err != nil {
			t.Fatal(err)
		}
		// 1003 left: 1 input token at 3, then 142 output tokens at 7.
		r, d := priced(c, []Budget{b}, amt(1, 1, 5000), 1, Price{Input: 3, Output: 7})
		if want := costed(amt(1, 1, 142), 3+142*7); !d.Allowed || d.Granted != want {
			t.Fatalf("granted %+v, want %+v", d.Granted, want)
		}
		checkWindows(t, "held", status(t, c, b), window(b, 0, t0, used, costed(amt(1, 1, 142), 997)))
		settle(t, c, r, costed(amt(1, 1, 100), 703))
		checkWindows(t, "charged", status(t, c, b), window(b, 0, t0, costed(amt(2, 1, 100), capv-300), Amount{}))
		// A charge past the int64 range saturates instead of wrapping.
		r, _ = priced(c, []Budget{b}, amt(1, 0, 0), 0, Price{})
		settle(t, c, r, costed(amt(1, 0, 0), math.MaxInt64-5))
		checkWindows(t, "saturated", status(t, c, b), window(b, 0, t0, costed(amt(3, 1, 100), math.MaxInt64), Amount{}))
		if got, _ := c.Lifetime(ctx, b); got.Cost != math.MaxInt64 {
			t.Errorf("lifetime cost %d, want it saturated at %d", got.Cost, int64(math.MaxInt64))
		}
		// Prices at the API's highest (9999999.999999 per million tokens).
		top := Price{Input: 9_999_999_999_999, CachedInput: 9_999_999_999_999, Output: 9_999_999_999_999}
		big := UserBudget("team", "big", "uid-big", []Limit{{Window: day, Cost: ptr(capv)}}, false)
		_, d = priced(c, []Budget{big}, amt(1, 100_000, 1_000_000), 1, top)
		want := costed(amt(1, 100_000, 800_000), 900_000*9_999_999_999_999)
		if !d.Allowed || d.Granted != want {
			t.Errorf("granted %+v, want %+v", d.Granted, want)
		}
		checkWindows(t, "held near the limit", status(t, c, big), window(big, 0, t0, Amount{}, want))
	})

	t.Run("requests in flight are capped per user", func(t *testing.T) {
		_, c := setup()
		conc := &Concurrency{Key: alice.Key, Limit: 2}
		req := Request{Budgets: []Budget{alice}, Estimate: amt(1, 1, 1), Concurrency: conc}
		var held []*Reservation
		for range 2 {
			r, d, err := c.Reserve(ctx, req)
			if err != nil || !d.Allowed {
				t.Fatalf("Reserve: %v %+v", err, d.Exceeded)
			}
			held = append(held, r)
		}
		r, d, _ := c.Reserve(ctx, req)
		if r != nil || d.Allowed {
			t.Fatal("a third request in flight was admitted")
		}
		checkExceeded(t, d.Exceeded, &Exceeded{Budget: alice.Key, Resource: ResourceConcurrency, Limit: 2, Used: 2})
		// A refusal held nothing in the windows either.
		checkWindows(t, "after refusal", status(t, c, alice), window(alice, 0, t0, Amount{}, amt(2, 2, 2)))
		// Without the limit the same budget admits it: the count is the user's, not the window's.
		admit(t, c, []Budget{alice}, amt(1, 1, 1))

		settle(t, c, held[0], amt(1, 1, 1))
		r, d, _ = c.Reserve(ctx, req)
		if !d.Allowed {
			t.Fatal("refused with one request in flight under a limit of 2")
		}
		if _, d, _ := c.Reserve(ctx, req); d.Allowed {
			t.Error("admitted past the limit after one settle")
		}
		settle(t, c, r, Amount{})
		settle(t, c, held[1], Amount{})
		// A dry-run limit reports and admits.
		dry := Request{Budgets: []Budget{alice}, Estimate: amt(1, 1, 1), Concurrency: &Concurrency{Key: alice.Key, Limit: 0, DryRun: true}}
		r, d, _ = c.Reserve(ctx, dry)
		if !d.Allowed {
			t.Fatal("a dry-run concurrency limit refused")
		}
		checkExceeded(t, d.Exceeded, &Exceeded{Budget: alice.Key, Resource: ResourceConcurrency, Limit: 0, Used: 0, DryRun: true})
		settle(t, c, r, Amount{})
	})

	t.Run("a zero cap admits nothing", func(t *testing.T) {
		for _, tt := range []struct {
			limit Limit
			res   Resource
		}{
			{Limit{Window: hour, Requests: ptr(0)}, ResourceRequests},
			{Limit{Window: hour, Tokens: ptr(0)}, ResourceTokens},
			{Limit{Window: hour, OutputTokens: ptr(0)}, ResourceOutputTokens},
		} {
			_, c := setup()
			b := UserBudget("team", "erin", "uid-erin", []Limit{tt.limit}, false)
			_, d := reserve(t, c, []Budget{b}, amt(1, 0, 0))
			checkExceeded(t, d.Exceeded, &Exceeded{Budget: b.Key, Window: hour, Resource: tt.res, Limit: 0, Used: 0, ResetAt: WindowEnd(hour, t0)})
		}
	})

	t.Run("dry run admits and reports", func(t *testing.T) {
		_, c := setup()
		b := PoolBudget("team", "shadow", "uid-shadow", []Limit{{Window: hour, Tokens: ptr(100)}}, true)
		first := admit(t, c, []Budget{b}, amt(1, 50, 0))
		r, d := reserve(t, c, []Budget{b}, amt(1, 60, 0))
		if !d.Allowed || r == nil {
			t.Fatal("dry-run budget refused")
		}
		checkExceeded(t, d.Exceeded, &Exceeded{Budget: b.Key, Window: hour, Resource: ResourceTokens, Limit: 100, Used: 50, ResetAt: WindowEnd(hour, t0), DryRun: true})
		checkWindows(t, "decision", d.Windows, window(b, 0, t0, Amount{}, amt(2, 110, 0)))
		settle(t, c, first, amt(1, 50, 0))
		settle(t, c, r, amt(1, 60, 0))
		checkWindows(t, "status", status(t, c, b), window(b, 0, t0, amt(2, 110, 0), Amount{}))
	})

	t.Run("an enforcing refusal outranks an earlier dry-run report", func(t *testing.T) {
		_, c := setup()
		dry := PoolBudget("team", "shadow", "uid-shadow", []Limit{{Window: hour, Tokens: ptr(10)}}, true)
		enf := UserBudget("team", "frank", "uid-frank", []Limit{{Window: hour, Requests: ptr(1)}}, false)
		admit(t, c, []Budget{dry, enf}, amt(1, 5, 0))
		r, d := reserve(t, c, []Budget{dry, enf}, amt(1, 10, 0))
		if d.Allowed || r != nil {
			t.Fatal("admitted over an enforcing limit")
		}
		checkExceeded(t, d.Exceeded, &Exceeded{Budget: enf.Key, Window: hour, Resource: ResourceRequests, Limit: 1, Used: 1, ResetAt: WindowEnd(hour, t0)})
		checkWindows(t, "dry-run status", status(t, c, dry), window(dry, 0, t0, Amount{}, amt(1, 5, 0)))
	})

	t.Run("user and pool are checked atomically", func(t *testing.T) {
		_, c := setup()
		pool := PoolBudget("team", "shared", "uid-shared", []Limit{{Window: day, Tokens: ptr(100)}}, false)
		bob := UserBudget("team", "bob", "uid-bob", []Limit{{Window: day, Tokens: ptr(1000)}}, false)
		small := UserBudget("team", "alice", "uid-alice", []Limit{{Window: hour, Tokens: ptr(10)}}, false)

		charge(t, c, []Budget{bob, pool}, amt(1, 50, 40))

		// The pool refuses: alice's budget keeps nothing of the request.
		_, d := reserve(t, c, []Budget{alice, pool}, amt(1, 10, 10))
		checkExceeded(t, d.Exceeded, &Exceeded{Budget: pool.Key, Window: day, Resource: ResourceTokens, Limit: 100, Used: 90, ResetAt: WindowEnd(day, t0)})
		checkWindows(t, "refused decision", d.Windows,
			window(alice, 0, t0, Amount{}, Amount{}), window(pool, 0, t0, amt(1, 50, 40), Amount{}))
		checkWindows(t, "alice after pool refusal", status(t, c, alice), window(alice, 0, t0, Amount{}, Amount{}))

		// The user refuses: the pool keeps nothing of the request.
		admitted := admit(t, c, []Budget{small, pool}, amt(1, 5, 0))
		_, d = reserve(t, c, []Budget{small, pool}, amt(1, 6, 0))
		checkExceeded(t, d.Exceeded, &Exceeded{Budget: small.Key, Window: hour, Resource: ResourceTokens, Limit: 10, Used: 5, ResetAt: WindowEnd(hour, t0)})
		checkWindows(t, "pool after user refusal", status(t, c, pool), window(pool, 0, t0, amt(1, 50, 40), amt(1, 5, 0)))

		// Admitted: both hold it, reported in request order.
		settle(t, c, admitted, amt(1, 5, 0))
		_, d = reserve(t, c, []Budget{small, pool}, amt(1, 3, 2))
		checkWindows(t, "admitted decision", d.Windows,
			window(small, 0, t0, amt(1, 5, 0), amt(1, 3, 2)), window(pool, 0, t0, amt(2, 55, 40), amt(1, 3, 2)))
	})

	t.Run("a budget named twice holds once", func(t *testing.T) {
		_, c := setup()
		b := UserBudget("team", "gina", "uid-gina", []Limit{{Window: hour, Tokens: ptr(100)}}, false)
		r, d := reserve(t, c, []Budget{b, b}, amt(1, 10, 0))
		checkWindows(t, "decision", d.Windows, window(b, 0, t0, Amount{}, amt(1, 10, 0)), window(b, 0, t0, Amount{}, amt(1, 10, 0)))
		settle(t, c, r, amt(1, 10, 0))
		checkWindows(t, "status", status(t, c, b), window(b, 0, t0, amt(1, 10, 0), Amount{}))
	})

	for _, tt := range []struct {
		name   string
		actual Amount
	}{
		{"settle lower than reserved", amt(1, 60, 20)},
		{"settle higher than reserved", amt(1, 150, 300)},
		{"settle of zero releases", Amount{}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, c := setup()
			pool := PoolBudget("team", "shared", "uid-shared", []Limit{{Window: day, Tokens: ptr(300)}}, false)
			est := amt(1, 100, 100)
			r := admit(t, c, []Budget{alice, pool}, est)
			settle(t, c, r, tt.actual)
			checkWindows(t, "user", status(t, c, alice), window(alice, 0, t0, tt.actual, Amount{}))
			checkWindows(t, "pool", status(t, c, pool), window(pool, 0, t0, tt.actual, Amount{}))
		})
	}

	t.Run("negative amounts count as zero", func(t *testing.T) {
		_, c := setup()
		r := admit(t, c, []Budget{alice}, amt(1, -100, 5))
		if r.Amount != (amt(1, 0, 5)) {
			t.Errorf("reserved %+v, want the estimate clamped at zero", r.Amount)
		}
		settle(t, c, r, amt(-1, 7, -3))
		checkWindows(t, "status", status(t, c, alice), window(alice, 0, t0, amt(0, 7, 0), Amount{}))
	})

	t.Run("settle of nil is an error", func(t *testing.T) {
		_, c := setup()
		if err := c.Settle(ctx, nil, Amount{}); err == nil {
			t.Error("Settle(nil) succeeded")
		}
	})

	t.Run("window roll-over resets", func(t *testing.T) {
		clock, c := setup()
		b := UserBudget("team", "hank", "uid-hank", []Limit{{Window: minute, Tokens: ptr(100)}, {Window: day, Tokens: ptr(10000)}}, false)
		charge(t, c, []Budget{b}, amt(1, 60, 40))
		if _, d := reserve(t, c, []Budget{b}, amt(1, 1, 0)); d.Allowed {
			t.Fatal("admitted over the minute's cap")
		}

		next := WindowEnd(minute, t0)
		clock.SetTime(next)
		checkWindows(t, "next minute", status(t, c, b),
			window(b, 0, next, Amount{}, Amount{}), window(b, 1, next, amt(1, 60, 40), Amount{}))
		charge(t, c, []Budget{b}, amt(1, 60, 40))
		checkWindows(t, "next minute used", status(t, c, b),
			window(b, 0, next, amt(1, 60, 40), Amount{}), window(b, 1, next, amt(2, 120, 80), Amount{}))

		nextDay := WindowEnd(day, t0)
		clock.SetTime(nextDay.Add(-time.Nanosecond))
		checkWindows(t, "last instant of the day", status(t, c, b)[1:], window(b, 1, t0, amt(2, 120, 80), Amount{}))
		clock.SetTime(nextDay)
		checkWindows(t, "next day", status(t, c, b), window(b, 0, nextDay, Amount{}, Amount{}), window(b, 1, nextDay, Amount{}, Amount{}))
	})

	t.Run("a request counts in the windows it was admitted in", func(t *testing.T) {
		clock, c := setup()
		b := UserBudget("team", "ivan", "uid-ivan", []Limit{{Window: minute, Tokens: ptr(1000)}, {Window: day, Tokens: ptr(10000)}}, false)
		old := admit(t, c, []Budget{b}, amt(1, 100, 0))
		clock.Step(time.Minute)
		now := clock.Now()
		current := admit(t, c, []Budget{b}, amt(1, 10, 0))

		// The old request is charged to the minute it was admitted in, which
		// has ended, and to the day, which has not: the new minute neither
		// held it nor counts it.
		settle(t, c, old, amt(1, 80, 0))
		checkWindows(t, "after settling the old reservation", status(t, c, b),
			window(b, 0, now, Amount{}, amt(1, 10, 0)), window(b, 1, now, amt(1, 80, 0), amt(1, 10, 0)))

		settle(t, c, current, amt(1, 10, 0))
		checkWindows(t, "after settling both", status(t, c, b),
			window(b, 0, now, amt(1, 10, 0), Amount{}), window(b, 1, now, amt(2, 90, 0), Amount{}))
	})

	t.Run("seed raises but never lowers", func(t *testing.T) {
		clock, c := setup()
		b := UserBudget("team", "judy", "uid-judy", []Limit{{Window: hour, Tokens: ptr(1000)}, {Window: day, Tokens: ptr(200)}}, false)
		seed := func(w llmv1alpha1.Window, start time.Time, used Amount) {
			t.Helper()
			if err := c.Seed(ctx, b, w, start, used, nil); err != nil {
				t.Fatalf("Seed: %v", err)
			}
		}
		dayStart := WindowStart(day, t0)
		pending := admit(t, c, []Budget{b}, amt(1, 1, 1))
		seed(day, dayStart, amt(5, 50, 60))
		checkWindows(t, "after first seed", status(t, c, b),
			window(b, 0, t0, Amount{}, amt(1, 1, 1)), window(b, 1, t0, amt(5, 50, 60), amt(1, 1, 1)))
		seed(day, dayStart, amt(3, 70, 10))
		want := window(b, 1, t0, amt(5, 70, 60), amt(1, 1, 1))
		checkWindows(t, "after second seed", status(t, c, b)[1:], want)

		// Ended and future windows are ignored.
		seed(day, dayStart.AddDate(0, 0, -1), amt(100, 1000, 1000))
		seed(day, dayStart.AddDate(0, 0, 1), amt(100, 1000, 1000))
		checkWindows(t, "after seeding other days", status(t, c, b)[1:], want)

		// Seeded usage counts against the limit: 132 held + 69 > 200.
		_, d := reserve(t, c, []Budget{b}, amt(1, 69, 0))
		checkExceeded(t, d.Exceeded, &Exceeded{Budget: b.Key, Window: day, Resource: ResourceTokens, Limit: 200, Used: 132, ResetAt: WindowEnd(day, t0)})

		settle(t, c, pending, Amount{})
		if err := c.Seed(ctx, b, "Year", dayStart, amt(1, 1, 1), nil); err == nil {
			t.Error("Seed of an unknown window succeeded")
		}

		// After the day ends, its seeded usage is gone.
		clock.SetTime(WindowEnd(day, t0))
		checkWindows(t, "next day", status(t, c, b)[1:], window(b, 1, clock.Now(), Amount{}, Amount{}))
	})

	t.Run("lifetime counts every charge of every budget", func(t *testing.T) {
		clock, c := setup()
		pool := PoolBudget("team", "shared", "uid-shared", []Limit{{Window: day, Tokens: ptr(100000)}}, false)
		free := UserBudget("team", "free", "uid-free", nil, false) // no limits: no windows, a lifetime all the same
		charge(t, c, []Budget{alice, pool}, amt(1, 10, 20))
		clock.Step(48 * time.Hour) // other windows: lifetime goes on
		charge(t, c, []Budget{alice, pool, alice}, amt(1, 1, 2))
		charge(t, c, []Budget{free}, amt(1, 5, 5))
		r := admit(t, c, []Budget{alice}, amt(1, 100, 100))
		settle(t, c, r, Amount{}) // released, never charged
		for _, tc := range []struct {
			b    Budget
			want Amount
		}{
			{alice, amt(2, 11, 22)},
			{pool, amt(2, 11, 22)},
			{free, amt(1, 5, 5)},
			{UserBudget("team", "nobody", "uid-nobody", nil, false), Amount{}},
		} {
			got, err := c.Lifetime(ctx, tc.b)
			if err != nil || got != tc.want {
				t.Errorf("Lifetime(%s) = %+v, %v; want %+v", tc.b.Key, got, err, tc.want)
			}
		}
		if err := c.SeedLifetime(ctx, alice, amt(1, 50, 3)); err != nil {
			t.Fatal(err)
		}
		if got, _ := c.Lifetime(ctx, alice); got != (amt(2, 50, 22)) {
			t.Errorf("Lifetime after seeding = %+v, want each field raised, never lowered", got)
		}
	})

	t.Run("settling again changes nothing", func(t *testing.T) {
		_, c := setup()
		r := admit(t, c, []Budget{alice}, amt(1, 100, 100))
		other := admit(t, c, []Budget{alice}, amt(1, 50, 50))
		settle(t, c, r, amt(1, 10, 20))
		settle(t, c, r, amt(1, 10, 20)) // a retry whose first try landed
		// The retry neither charges again nor releases the other hold.
		checkWindows(t, "status", status(t, c, alice), window(alice, 0, t0, amt(1, 10, 20), amt(1, 50, 50)))
		if got, _ := c.Lifetime(ctx, alice); got != (amt(1, 10, 20)) {
			t.Errorf("Lifetime = %+v, want one charge", got)
		}
		settle(t, c, other, Amount{})
		// A reservation admitted without the counter (a store that failed
		// open) charges the windows current when it was made.
		u := Unreserved(Request{Budgets: []Budget{alice}}, t0)
		if u.Amount != (Amount{}) || u.ID == r.ID || u.ID == other.ID {
			t.Errorf("Unreserved = %+v: want no hold and an id of its own", u)
		}
		settle(t, c, u, amt(1, 5, 5))
		settle(t, c, u, amt(1, 5, 5))
		checkWindows(t, "status after an unreserved charge", status(t, c, alice), window(alice, 0, t0, amt(2, 15, 25), Amount{}))
	})

	t.Run("status and remaining", func(t *testing.T) {
		_, c := setup()
		b := UserBudget("team", "kim", "uid-kim", []Limit{
			{Window: hour, Tokens: ptr(100), InputTokens: ptr(30), Requests: ptr(5)},
			{Window: day, OutputTokens: ptr(1000)},
		}, false)
		empty := status(t, c, b)
		checkWindows(t, "empty", empty, window(b, 0, t0, Amount{}, Amount{}), window(b, 1, t0, Amount{}, Amount{}))

		charge(t, c, []Budget{b}, amt(1, 10, 5))
		admit(t, c, []Budget{b}, amt(1, 10, 5))
		s := status(t, c, b)
		checkWindows(t, "status twice", status(t, c, b), s...)

		for i, want := range []struct{ tokens, requests *int64 }{
			{ptr(10), ptr(3)}, // min(100-30, 30-20)
			{ptr(990), nil},
		} {
			tokens, requests := s[i].Remaining()
			if !reflect.DeepEqual(tokens, want.tokens) || !reflect.DeepEqual(requests, want.requests) {
				t.Errorf("window %d Remaining() = %s, %s; want %s, %s", i, show(tokens), show(requests), show(want.tokens), show(want.requests))
			}
		}
	})

	t.Run("unknown window is an error", func(t *testing.T) {
		_, c := setup()
		b := UserBudget("team", "leo", "uid-leo", []Limit{{Window: "Year", Tokens: ptr(1)}}, false)
		if _, _, err := c.Reserve(ctx, Request{Budgets: []Budget{b}, Estimate: amt(1, 1, 1)}); err == nil {
			t.Error("Reserve succeeded")
		}
		if _, err := c.Status(ctx, b); err == nil {
			t.Error("Status succeeded")
		}
	})

	t.Run("a budget without limits admits and keeps nothing", func(t *testing.T) {
		_, c := setup()
		b := UserBudget("team", "max", "uid-max", nil, false)
		r, d := reserve(t, c, []Budget{b}, amt(1, 1, 1))
		if !d.Allowed || len(d.Windows) != 0 {
			t.Errorf("Decision = %+v", d)
		}
		settle(t, c, r, amt(1, 1, 1))
		if s := status(t, c, b); len(s) != 0 {
			t.Errorf("Status = %+v", s)
		}
	})

	t.Run("concurrency at the budget edge", func(t *testing.T) {
		clock, c := setup()
		const workers, perWorker, limit = 64, 100, 20000
		est := amt(1, 60, 40)
		b := UserBudget("team", "nina", "uid-nina", []Limit{{Window: hour, Tokens: ptr(limit)}}, false)
		var settled [3]atomic.Int64
		var admitted, refused atomic.Int64
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(w), 7))
				for range perWorker {
					r, d, err := c.Reserve(ctx, Request{Budgets: []Budget{b}, Estimate: est})
					if err != nil {
						t.Errorf("Reserve: %v", err)
						return
					}
					if !d.Allowed {
						refused.Add(1)
						continue
					}
					admitted.Add(1)
					// The decision is a consistent snapshot that includes
					// this reservation.
					if held := d.Windows[0].Used.Add(d.Windows[0].Reserved).Total(); held > limit {
						t.Errorf("admitted with %d tokens held, over the limit %d", held, limit)
					}
					actual := amt(1, rng.Int64N(est.InputTokens+1), rng.Int64N(est.OutputTokens+1))
					if err := c.Settle(ctx, r, actual); err != nil {
						t.Errorf("Settle: %v", err)
						return
					}
					settled[0].Add(actual.Requests)
					settled[1].Add(actual.InputTokens)
					settled[2].Add(actual.OutputTokens)
				}
			})
		}
		wg.Wait()

		s := status(t, c, b)
		want := amt(settled[0].Load(), settled[1].Load(), settled[2].Load())
		checkWindows(t, "after the run", s, window(b, 0, clock.Now(), want, Amount{}))
		if want.Requests != admitted.Load() {
			t.Errorf("%d requests settled, %d admitted", want.Requests, admitted.Load())
		}
		if got := s[0].Used.Total(); got > limit+est.Total() {
			t.Errorf("charged %d tokens, over the limit %d plus one reservation of %d", got, limit, est.Total())
		}
		if admitted.Load() == 0 || refused.Load() == 0 {
			t.Errorf("%d admitted, %d refused: the run never reached the edge", admitted.Load(), refused.Load())
		}
	})

	t.Run("soft limits", func(t *testing.T) { testSoftLimits(t, newCounter) })
}

func show(p *int64) string {
	if p == nil {
		return "nil"
	}
	return fmt.Sprint(*p)
}

// benchReserveSettle measures one admitted request: a user's budget and a
// Shared pool, each with a minute and a day window, as the proxy will use.
func benchReserveSettle(b *testing.B, c Counter) {
	ctx := context.Background()
	big := ptr(1 << 50)
	limits := []Limit{{Window: minute, Requests: big}, {Window: day, Tokens: big}}
	pool := PoolBudget("team", "shared", "uid-shared", limits, false)
	var users atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		name := fmt.Sprint("user", users.Add(1))
		user := UserBudget("team", name, "uid-"+name, limits, false)
		req := Request{Budgets: []Budget{user, pool}, Estimate: amt(1, 500, 500)}
		for pb.Next() {
			r, d, err := c.Reserve(ctx, req)
			if err != nil || !d.Allowed {
				b.Fatalf("Reserve: %v, %+v", err, d.Exceeded)
			}
			if err := c.Settle(ctx, r, amt(1, 500, 200)); err != nil {
				b.Fatalf("Settle: %v", err)
			}
		}
	})
}

// amt is an amount of requests, input and output tokens, nothing cached or
// priced.
func amt(requests, input, output int64) Amount {
	return Amount{Requests: requests, InputTokens: input, OutputTokens: output}
}
