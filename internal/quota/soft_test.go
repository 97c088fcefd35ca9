package quota

import (
	"testing"
	"time"
)

// testSoftLimits is the part of the [Counter] contract about soft limits
// (overage: Demote): they refuse nothing, tell overflow, never shorten a
// request, and their hard ceiling refuses as any limit does.
func testSoftLimits(t *testing.T, newCounter func(now func() time.Time) Counter) {
	setup := func() Counter { return newCounter(newFakeClock(t0).Now) }
	dayEnd := utc("2027-03-11T00:00:00Z")

	t.Run("past the soft limit, admitted as overflow up to the ceiling", func(t *testing.T) {
		c := setup()
		b := UserBudget("team", "owl", "uid-owl", []Limit{{Window: day, Tokens: ptr(100), Soft: true, Ceiling: &Limit{Tokens: ptr(150)}}}, false)
		over := OverflowBudget(b)

		charge(t, c, []Budget{b}, amt(1, 30, 30))
		// Exactly at the soft limit is still within it.
		r, d := reserve(t, c, []Budget{b}, amt(1, 20, 20))
		if !d.Allowed || d.Overflow || d.Overage != nil || r.Overflow != nil {
			t.Fatalf("at the soft limit: Decision %+v, reservation overflow %v; want in quota", d, r.Overflow)
		}
		settle(t, c, r, amt(1, 20, 20))

		r, d = reserve(t, c, []Budget{b}, amt(1, 10, 10))
		if !d.Allowed || !d.Overflow || d.Exceeded != nil {
			t.Fatalf("past the soft limit: Decision %+v, want allowed overflow with nothing exceeded", d)
		}
		checkExceeded(t, d.Overage, &Exceeded{Budget: b.Key, Window: day, Resource: ResourceTokens, Limit: 100, Used: 100, ResetAt: dayEnd})
		if d.Granted != amt(1, 10, 10) {
			t.Errorf("Granted = %+v, want the whole estimate", d.Granted)
		}
		// One window per limit: the ceiling is not a window of its own.
		checkWindows(t, "overflow decision", d.Windows, window(b, 0, t0, amt(2, 50, 50), amt(1, 10, 10)))
		settle(t, c, r, amt(1, 10, 5))

		checkWindows(t, "budget", status(t, c, b), window(b, 0, t0, amt(3, 60, 55), Amount{}))
		checkWindows(t, "overflow", status(t, c, over), window(over, 0, t0, amt(1, 10, 5), Amount{}))

		// 115 held: 40 more would pass the ceiling of 150.
		_, d = reserve(t, c, []Budget{b}, amt(1, 20, 20))
		if d.Allowed || d.Overflow {
			t.Fatalf("past the ceiling: Decision %+v, want refused", d)
		}
		checkExceeded(t, d.Exceeded, &Exceeded{Budget: b.Key, Window: day, Resource: ResourceTokens, Limit: 150, Used: 115, ResetAt: dayEnd})
		checkWindows(t, "refused decision", d.Windows, window(b, 0, t0, amt(3, 60, 55), Amount{}))

		// Up to the ceiling exactly is admitted, as overflow.
		r, d = reserve(t, c, []Budget{b}, amt(1, 15, 20))
		if !d.Allowed || !d.Overflow {
			t.Fatalf("at the ceiling: Decision %+v, want allowed overflow", d)
		}
		// A request that ends with nothing charged leaves no overflow.
		settle(t, c, r, Amount{})
		checkWindows(t, "overflow after a release", status(t, c, over), window(over, 0, t0, amt(1, 10, 5), Amount{}))
	})

	t.Run("a soft limit without a ceiling refuses nothing", func(t *testing.T) {
		c := setup()
		b := UserBudget("team", "lark", "uid-lark", []Limit{{Window: day, Requests: ptr(1), Soft: true}}, false)
		for i := range 3 {
			r, d := reserve(t, c, []Budget{b}, amt(1, 5, 5))
			if !d.Allowed || d.Overflow != (i > 0) {
				t.Fatalf("request %d: Decision %+v, want allowed, overflow %v", i, d, i > 0)
			}
			settle(t, c, r, amt(1, 4, 3))
		}
		checkWindows(t, "budget", status(t, c, b), window(b, 0, t0, amt(3, 12, 9), Amount{}))
		over := OverflowBudget(b)
		checkWindows(t, "overflow", status(t, c, over), window(over, 0, t0, amt(2, 8, 6), Amount{}))
	})

	t.Run("a soft limit never shortens; its ceiling does", func(t *testing.T) {
		c := setup()
		b := UserBudget("team", "wren", "uid-wren", []Limit{{Window: day, Tokens: ptr(100), Soft: true, Ceiling: &Limit{Tokens: ptr(120)}}}, false)
		charge(t, c, []Budget{b}, amt(1, 40, 50))
		_, d, err := c.Reserve(t.Context(), Request{Budgets: []Budget{b}, Estimate: amt(1, 10, 50), OutputStep: 1})
		if err != nil {
			t.Fatal(err)
		}
		// 90 held: the ceiling leaves 120-90-10 = 20 output tokens.
		if !d.Allowed || !d.Overflow || d.Granted != amt(1, 10, 20) {
			t.Fatalf("Decision %+v, want 20 output tokens granted, as overflow", d)
		}
	})

	t.Run("a grant a hard limit shortened to fit the soft one is not overflow", func(t *testing.T) {
		c := setup()
		b := UserBudget("team", "tern", "uid-tern", []Limit{
			{Window: hour, Tokens: ptr(100)},
			{Window: day, Tokens: ptr(200), Soft: true},
		}, false)
		_, d, err := c.Reserve(t.Context(), Request{Budgets: []Budget{b}, Estimate: amt(1, 10, 250), OutputStep: 1})
		if err != nil {
			t.Fatal(err)
		}
		if !d.Allowed || d.Overflow || d.Granted != amt(1, 10, 90) {
			t.Fatalf("Decision %+v, want 90 output tokens granted within quota", d)
		}
	})

	t.Run("dry-run: soft limits demote nothing, ceilings are reported", func(t *testing.T) {
		c := setup()
		b := UserBudget("team", "kite", "uid-kite", []Limit{{Window: day, Tokens: ptr(10), Soft: true, Ceiling: &Limit{Tokens: ptr(20)}}}, true)
		charge(t, c, []Budget{b}, amt(1, 10, 10))
		r, d := reserve(t, c, []Budget{b}, amt(1, 5, 5))
		if !d.Allowed || d.Overflow || r.Overflow != nil {
			t.Fatalf("Decision %+v, want allowed, not overflow", d)
		}
		checkExceeded(t, d.Exceeded, &Exceeded{Budget: b.Key, Window: day, Resource: ResourceTokens, Limit: 20, Used: 20, ResetAt: dayEnd, DryRun: true})
		settle(t, c, r, amt(1, 5, 5))
		over := OverflowBudget(b)
		checkWindows(t, "overflow", status(t, c, over), window(over, 0, t0, Amount{}, Amount{}))
	})

	t.Run("a Shared pool's overflow is counted for the pool and the user", func(t *testing.T) {
		c := setup()
		pool := PoolBudget("team", "night", "uid-night", []Limit{{Window: day, Requests: ptr(1), Soft: true}}, false)
		user := UserBudget("team", "finch", "uid-finch", []Limit{{Window: day, Soft: true}}, false)
		bs := []Budget{user, pool}
		charge(t, c, bs, amt(1, 7, 7))
		r, d := reserve(t, c, bs, amt(1, 3, 3))
		if !d.Overflow {
			t.Fatalf("Decision %+v, want overflow", d)
		}
		checkExceeded(t, d.Overage, &Exceeded{Budget: pool.Key, Window: day, Resource: ResourceRequests, Limit: 1, Used: 1, ResetAt: dayEnd})
		settle(t, c, r, amt(1, 3, 2))
		for _, b := range bs {
			over := OverflowBudget(b)
			checkWindows(t, b.Key+" overflow", status(t, c, over), window(over, 0, t0, amt(1, 3, 2), Amount{}))
			checkWindows(t, b.Key, status(t, c, b), window(b, 0, t0, amt(2, 10, 9), Amount{}))
		}
	})
}
