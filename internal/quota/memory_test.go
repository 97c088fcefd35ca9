package quota

import (
	"testing"
	"time"
)

func TestMemory(t *testing.T) {
	testCounter(t, func(now func() time.Time) Counter { return NewMemory(now) })
}

func TestMemoryForget(t *testing.T) {
	m := NewMemory(newFakeClock(t0).Now)
	b := UserBudget("team", "alice", "uid-alice", []Limit{{Window: day, Tokens: ptr(100)}}, false)
	other := UserBudget("team", "bob", "uid-bob", b.Limits, false)
	charge(t, m, []Budget{b}, amt(1, 10, 10))
	charge(t, m, []Budget{other}, amt(1, 10, 10))

	m.Forget(b.Key)
	checkWindows(t, "forgotten", status(t, m, b), window(b, 0, t0, Amount{}, Amount{}))
	checkWindows(t, "kept", status(t, m, other), window(other, 0, t0, amt(1, 10, 10), Amount{}))
}

// TestMemorySweep checks that memory is bounded by the budgets in use: once
// every window of a budget has ended, its counters go.
func TestMemorySweep(t *testing.T) {
	clock := newFakeClock(t0)
	m := NewMemory(clock.Now)
	short := UserBudget("team", "alice", "uid-alice", []Limit{{Window: minute, Tokens: ptr(100)}}, false)
	long := UserBudget("team", "bob", "uid-bob", []Limit{{Window: minute, Tokens: ptr(100)}, {Window: day, Tokens: ptr(100)}}, false)
	charge(t, m, []Budget{short, long}, amt(1, 1, 1))

	counters := func() (n int) {
		m.mu.Lock()
		defer m.mu.Unlock()
		for _, ws := range m.budgets {
			n += len(ws)
		}
		return n
	}
	if n := counters(); n != 3 {
		t.Fatalf("%d counters, want 3", n)
	}

	clock.Step(2 * time.Minute)
	admit(t, m, nil, Amount{}) // any Reserve may sweep
	if n := counters(); n != 1 {
		t.Errorf("%d counters after the minute ended, want only bob's day", n)
	}
	checkWindows(t, "bob", status(t, m, long)[1:], window(long, 1, t0, amt(1, 1, 1), Amount{}))

	clock.SetTime(WindowEnd(day, t0))
	admit(t, m, nil, Amount{})
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.budgets) != 0 {
		t.Errorf("%d budgets kept after every window ended", len(m.budgets))
	}
}

func BenchmarkMemoryReserveSettle(b *testing.B) {
	benchReserveSettle(b, NewMemory(time.Now))
}
