package quota

import (
	"time"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
)

// Replica is a [Counter] whose counts are this replica's own: the in-process
// counter. Two of them side by side, the old and the new pod of a rolling
// update, each count only the requests they served, and status is where
// they meet. Status is written as absolute totals, the larger kept, so
// without more each replica would write its own share and the smaller one
// would be lost.
//
// The usage write-back therefore shows a Replica what status holds before
// every write ([Replica.Merge]) and what it wrote ([Replica.Wrote]). What
// status shows beyond the most this counter has seen there (seeded from,
// merged or written) was charged by another replica, and is added to this
// one's counts; the total it writes next is then both replicas' usage.
// Status is the meeting point of a grow-only counter: its values never
// fall within a window, and every write is made against the resourceVersion
// it was computed from, so a write that raced another's is computed again
// from what won.
type Replica interface {
	// Merge adds to budget's counts what rec shows beyond the most this
	// counter has seen of it, per field and per model, and remembers rec as
	// seen. Windows other than the current ones are ignored.
	Merge(budget string, rec Recorded)
	// Wrote remembers rec, what this counter's own totals were written as,
	// as seen: it adds nothing.
	Wrote(budget string, rec Recorded)
}

// Recorded is what one object's status records of a budget.
type Recorded struct {
	Windows []RecordedWindow
	// Lifetime is nil when status records none.
	Lifetime *Amount
}

// RecordedWindow is one status.usage entry.
type RecordedWindow struct {
	Window llmv1alpha1.Window
	Start  time.Time
	Used   Amount
	Models []ModelAmount
}

var _ Replica = (*Memory)(nil)

// Merge implements [Replica].
func (m *Memory) Merge(budget string, rec Recorded) { m.see(budget, rec, true) }

// Wrote implements [Replica].
func (m *Memory) Wrote(budget string, rec Recorded) { m.see(budget, rec, false) }

func (m *Memory) see(budget string, rec Recorded, add bool) {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, w := range rec.Windows {
		s, ok, err := seedSlot(budget, w.Window, w.Start, now)
		if err != nil || !ok {
			continue
		}
		c := m.counter(s)
		used := nonNegative(w.Used)
		if add {
			c.used = c.used.Add(beyond(used, c.seen))
		}
		c.seen = raise(c.seen, used)
		for _, md := range w.Models {
			md.Amount = nonNegative(md.Amount)
			var prev Amount
			switch i := indexModel(c.seenModels, md.Model); {
			case i >= 0:
				prev = c.seenModels[i].Amount
				c.seenModels[i].Amount = raise(prev, md.Amount)
			case md.Model == OtherModels || len(c.seenModels)-count(c.seenModels, OtherModels) < MaxModels:
				c.seenModels = append(c.seenModels, md)
			default:
				// No room to remember it: its share is not split out here
				// (the window's total above still counts it).
				continue
			}
			if d := beyond(md.Amount, prev); add && !d.IsZero() {
				c.models = chargeModel(c.models, md.Model, d)
			}
		}
	}
	if rec.Lifetime != nil {
		lt := nonNegative(*rec.Lifetime)
		if add {
			m.lifetime[budget] = m.lifetime[budget].Add(beyond(lt, m.lifetimeSeen[budget]))
		}
		m.lifetimeSeen[budget] = raise(m.lifetimeSeen[budget], lt)
	}
}

// beyond is what a holds above b, per field, never below zero.
func beyond(a, b Amount) Amount {
	return Amount{max(0, a.Requests-b.Requests), max(0, a.InputTokens-b.InputTokens), max(0, a.OutputTokens-b.OutputTokens),
		max(0, a.CachedInputTokens-b.CachedInputTokens), max(0, a.Cost-b.Cost)}
}

func indexModel(ms []ModelAmount, model string) int {
	for i := range ms {
		if ms[i].Model == model {
			return i
		}
	}
	return -1
}
