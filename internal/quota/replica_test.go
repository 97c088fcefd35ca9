package quota

import (
	"context"
	"reflect"
	"testing"
)

// TestMemoryMerge: what status records beyond what the counter has seen
// there (another replica's usage) is added once; what it wrote itself, or
// saw before, is not added again.
func TestMemoryMerge(t *testing.T) {
	ctx := context.Background()
	m := NewMemory(newFakeClock(t0).Now)
	b := UserBudget("team", "alice", "uid-alice", []Limit{{Window: day, Tokens: ptr(1000)}}, false)
	start := WindowStart(day, t0)
	rec := func(used Amount, models ...ModelAmount) Recorded {
		lt := used.Add(amt(5, 500, 500))
		return Recorded{Windows: []RecordedWindow{{Window: day, Start: start, Used: used, Models: models}}, Lifetime: &lt}
	}

	// Started from status (the new pod of a rolling update), then served
	// one request of its own.
	if err := m.Seed(ctx, b, day, start, amt(2, 60, 40), []ModelAmount{{"llama", amt(2, 60, 40)}}); err != nil {
		t.Fatal(err)
	}
	if err := m.SeedLifetime(ctx, b, amt(7, 560, 540)); err != nil {
		t.Fatal(err)
	}
	charge(t, m, []Budget{b}, amt(1, 10, 10))

	// The old pod wrote 1 request, 5 in and 7 out beyond the seed.
	m.Merge(b.Key, rec(amt(3, 65, 47), ModelAmount{"llama", amt(3, 65, 47)}))
	checkWindows(t, "after the other replica's write", status(t, m, b), window(b, 0, t0, amt(4, 75, 57), Amount{}))
	if lt, _ := m.Lifetime(ctx, b); lt != amt(9, 575, 557) {
		t.Errorf("lifetime %+v, want %+v", lt, amt(9, 575, 557))
	}
	// Seen already: nothing more.
	m.Merge(b.Key, rec(amt(3, 65, 47), ModelAmount{"llama", amt(3, 65, 47)}))
	// An older read (a stale cache): nothing.
	m.Merge(b.Key, rec(amt(2, 60, 40)))
	checkWindows(t, "merged twice", status(t, m, b), window(b, 0, t0, amt(4, 75, 57), Amount{}))

	// It writes its totals; reading them back adds nothing.
	// (Its own request named no model: it counts as other.)
	ours := []ModelAmount{{"llama", amt(3, 65, 47)}, {OtherModels, amt(1, 10, 10)}}
	m.Wrote(b.Key, rec(amt(4, 75, 57), ours...))
	m.Merge(b.Key, rec(amt(4, 75, 57), ours...))
	checkWindows(t, "its own write read back", status(t, m, b), window(b, 0, t0, amt(4, 75, 57), Amount{}))
	if lt, _ := m.Lifetime(ctx, b); lt != amt(9, 575, 557) {
		t.Errorf("lifetime after its own write %+v, want %+v", lt, amt(9, 575, 557))
	}

	// The other replica merges that, serves one more llama request and a
	// qwen one, and writes: only those two are added, each to its model.
	m.Merge(b.Key, rec(amt(6, 100, 60), ModelAmount{"llama", amt(4, 70, 48)}, ModelAmount{"qwen", amt(1, 20, 2)}, ModelAmount{OtherModels, amt(1, 10, 10)}))
	ws := status(t, m, b)
	checkWindows(t, "second write of the other replica", ws, window(b, 0, t0, amt(6, 100, 60), Amount{}))
	want := []ModelAmount{{"llama", amt(4, 70, 48)}, {"qwen", amt(1, 20, 2)}, {OtherModels, amt(1, 10, 10)}}
	if !reflect.DeepEqual(ws[0].Models, want) {
		t.Errorf("models %+v, want %+v", ws[0].Models, want)
	}

	// A window other than the current one is not this counter's.
	yesterday := Recorded{Windows: []RecordedWindow{{Window: day, Start: start.AddDate(0, 0, -1), Used: amt(50, 5000, 5000)}}}
	m.Merge(b.Key, yesterday)
	checkWindows(t, "yesterday's entry", status(t, m, b), window(b, 0, t0, amt(6, 100, 60), Amount{}))
}

// TestMemoryMergeFirstSight: a budget this counter never seeded nor wrote
// (a user created after it started) takes all that status records.
func TestMemoryMergeFirstSight(t *testing.T) {
	m := NewMemory(newFakeClock(t0).Now)
	b := UserBudget("team", "bob", "uid-bob", []Limit{{Window: day, Tokens: ptr(1000)}}, false)
	lt := amt(2, 30, 20)
	m.Merge(b.Key, Recorded{Windows: []RecordedWindow{{Window: day, Start: WindowStart(day, t0), Used: amt(2, 30, 20)}}, Lifetime: &lt})
	checkWindows(t, "first sight", status(t, m, b), window(b, 0, t0, amt(2, 30, 20), Amount{}))
	if got, _ := m.Lifetime(context.Background(), b); got != amt(2, 30, 20) {
		t.Errorf("lifetime %+v, want %+v", got, amt(2, 30, 20))
	}
}
