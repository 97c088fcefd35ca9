package quota

import (
	"math/rand/v2"
	"testing"
	"time"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
)

func utc(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return t.UTC()
}

// at parses an RFC 3339 time keeping its offset, to feed non-UTC input.
func at(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return t
}

func TestWindowStartEnd(t *testing.T) {
	ny := time.FixedZone("EST", -5*3600)
	tests := []struct {
		name       string
		window     llmv1alpha1.Window
		in         time.Time
		start, end string
	}{
		// Minute
		{"minute mid", llmv1alpha1.WindowMinute, utc("2027-03-10T12:30:15.5Z"), "2027-03-10T12:30:00Z", "2027-03-10T12:31:00Z"},
		{"minute exact start", llmv1alpha1.WindowMinute, utc("2027-03-10T12:30:00Z"), "2027-03-10T12:30:00Z", "2027-03-10T12:31:00Z"},
		{"minute last nanosecond", llmv1alpha1.WindowMinute, utc("2027-03-10T12:30:59.999999999Z"), "2027-03-10T12:30:00Z", "2027-03-10T12:31:00Z"},
		{"minute into leap day", llmv1alpha1.WindowMinute, utc("2028-02-28T23:59:30Z"), "2028-02-28T23:59:00Z", "2028-02-29T00:00:00Z"},
		{"minute year end", llmv1alpha1.WindowMinute, utc("2026-12-31T23:59:59Z"), "2026-12-31T23:59:00Z", "2027-01-01T00:00:00Z"},
		{"minute half-hour offset", llmv1alpha1.WindowMinute, at("2027-01-01T05:29:30+05:30"), "2026-12-31T23:59:00Z", "2027-01-01T00:00:00Z"},

		// Hour
		{"hour mid", llmv1alpha1.WindowHour, utc("2027-03-10T12:30:15Z"), "2027-03-10T12:00:00Z", "2027-03-10T13:00:00Z"},
		{"hour exact start", llmv1alpha1.WindowHour, utc("2027-03-10T13:00:00Z"), "2027-03-10T13:00:00Z", "2027-03-10T14:00:00Z"},
		{"hour last nanosecond", llmv1alpha1.WindowHour, utc("2027-03-10T12:59:59.999999999Z"), "2027-03-10T12:00:00Z", "2027-03-10T13:00:00Z"},
		{"hour year end", llmv1alpha1.WindowHour, utc("2026-12-31T23:30:00Z"), "2026-12-31T23:00:00Z", "2027-01-01T00:00:00Z"},
		{"hour leap day end", llmv1alpha1.WindowHour, utc("2028-02-29T23:00:01Z"), "2028-02-29T23:00:00Z", "2028-03-01T00:00:00Z"},
		// Truncating in +05:30 would give 23:30 UTC.
		{"hour half-hour offset", llmv1alpha1.WindowHour, at("2027-01-01T05:15:00+05:30"), "2026-12-31T23:00:00Z", "2027-01-01T00:00:00Z"},

		// Day
		{"day mid", llmv1alpha1.WindowDay, utc("2027-03-10T12:30:15Z"), "2027-03-10T00:00:00Z", "2027-03-11T00:00:00Z"},
		{"day exact start", llmv1alpha1.WindowDay, utc("2027-03-11T00:00:00Z"), "2027-03-11T00:00:00Z", "2027-03-12T00:00:00Z"},
		{"day last nanosecond", llmv1alpha1.WindowDay, utc("2027-03-10T23:59:59.999999999Z"), "2027-03-10T00:00:00Z", "2027-03-11T00:00:00Z"},
		{"day before leap day", llmv1alpha1.WindowDay, utc("2028-02-28T10:00:00Z"), "2028-02-28T00:00:00Z", "2028-02-29T00:00:00Z"},
		{"day leap day", llmv1alpha1.WindowDay, utc("2028-02-29T10:00:00Z"), "2028-02-29T00:00:00Z", "2028-03-01T00:00:00Z"},
		{"day Feb 28 of common year", llmv1alpha1.WindowDay, utc("2027-02-28T10:00:00Z"), "2027-02-28T00:00:00Z", "2027-03-01T00:00:00Z"},
		{"day year end", llmv1alpha1.WindowDay, utc("2026-12-31T23:59:59Z"), "2026-12-31T00:00:00Z", "2027-01-01T00:00:00Z"},
		// Local date is 1 March, UTC date is the leap day.
		{"day east of UTC", llmv1alpha1.WindowDay, at("2028-03-01T01:00:00+02:00"), "2028-02-29T00:00:00Z", "2028-03-01T00:00:00Z"},
		// Local date is 31 December, UTC date is 1 January.
		{"day west of UTC", llmv1alpha1.WindowDay, time.Date(2026, 12, 31, 20, 0, 0, 0, ny), "2027-01-01T00:00:00Z", "2027-01-02T00:00:00Z"},

		// Week: Monday 00:00 UTC.
		{"week Monday start", llmv1alpha1.WindowWeek, utc("2026-11-30T00:00:00Z"), "2026-11-30T00:00:00Z", "2026-12-07T00:00:00Z"},
		{"week Sunday last nanosecond", llmv1alpha1.WindowWeek, utc("2026-12-06T23:59:59.999999999Z"), "2026-11-30T00:00:00Z", "2026-12-07T00:00:00Z"},
		{"week mid", llmv1alpha1.WindowWeek, utc("2026-12-02T08:00:00Z"), "2026-11-30T00:00:00Z", "2026-12-07T00:00:00Z"},
		{"week across month end", llmv1alpha1.WindowWeek, utc("2026-12-01T08:00:00Z"), "2026-11-30T00:00:00Z", "2026-12-07T00:00:00Z"},
		{"week across year end", llmv1alpha1.WindowWeek, utc("2027-01-01T12:00:00Z"), "2026-12-28T00:00:00Z", "2027-01-04T00:00:00Z"},
		{"week Sunday before Monday New Year", llmv1alpha1.WindowWeek, utc("2027-01-03T23:00:00Z"), "2026-12-28T00:00:00Z", "2027-01-04T00:00:00Z"},
		{"week starting Saturday New Year", llmv1alpha1.WindowWeek, utc("2028-01-01T00:00:00Z"), "2027-12-27T00:00:00Z", "2028-01-03T00:00:00Z"},
		{"week holding leap day", llmv1alpha1.WindowWeek, utc("2028-02-29T12:00:00Z"), "2028-02-28T00:00:00Z", "2028-03-06T00:00:00Z"},
		{"week Sunday before leap week", llmv1alpha1.WindowWeek, utc("2028-02-27T12:00:00Z"), "2028-02-21T00:00:00Z", "2028-02-28T00:00:00Z"},
		// Sunday 20:00 in New York is Monday 01:00 UTC: a new week.
		{"week west of UTC", llmv1alpha1.WindowWeek, time.Date(2026, 12, 6, 20, 0, 0, 0, ny), "2026-12-07T00:00:00Z", "2026-12-14T00:00:00Z"},
		// Monday 01:00 at +02:00 is still Sunday in UTC.
		{"week east of UTC", llmv1alpha1.WindowWeek, at("2026-12-07T01:00:00+02:00"), "2026-11-30T00:00:00Z", "2026-12-07T00:00:00Z"},

		// Month
		{"month mid", llmv1alpha1.WindowMonth, utc("2027-03-10T12:30:15Z"), "2027-03-01T00:00:00Z", "2027-04-01T00:00:00Z"},
		{"month exact start", llmv1alpha1.WindowMonth, utc("2027-04-01T00:00:00Z"), "2027-04-01T00:00:00Z", "2027-05-01T00:00:00Z"},
		{"month 31st", llmv1alpha1.WindowMonth, utc("2027-01-31T23:59:59.999999999Z"), "2027-01-01T00:00:00Z", "2027-02-01T00:00:00Z"},
		{"month leap February", llmv1alpha1.WindowMonth, utc("2028-02-29T23:59:59Z"), "2028-02-01T00:00:00Z", "2028-03-01T00:00:00Z"},
		{"month common February", llmv1alpha1.WindowMonth, utc("2027-02-15T00:00:00Z"), "2027-02-01T00:00:00Z", "2027-03-01T00:00:00Z"},
		{"month 30-day", llmv1alpha1.WindowMonth, utc("2027-04-30T12:00:00Z"), "2027-04-01T00:00:00Z", "2027-05-01T00:00:00Z"},
		{"month December", llmv1alpha1.WindowMonth, utc("2026-12-31T23:59:59Z"), "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"},
		// 1 March local, still February in UTC.
		{"month east of UTC", llmv1alpha1.WindowMonth, at("2027-03-01T00:30:00+01:00"), "2027-02-01T00:00:00Z", "2027-03-01T00:00:00Z"},
		// 31 December local, already January in UTC.
		{"month west of UTC", llmv1alpha1.WindowMonth, time.Date(2026, 12, 31, 22, 0, 0, 0, ny), "2027-01-01T00:00:00Z", "2027-02-01T00:00:00Z"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start, end := WindowStart(tt.window, tt.in), WindowEnd(tt.window, tt.in)
			if !start.Equal(utc(tt.start)) {
				t.Errorf("WindowStart(%s, %s) = %s, want %s", tt.window, tt.in, start, tt.start)
			}
			if !end.Equal(utc(tt.end)) {
				t.Errorf("WindowEnd(%s, %s) = %s, want %s", tt.window, tt.in, end, tt.end)
			}
			if start.Location() != time.UTC || end.Location() != time.UTC {
				t.Errorf("locations %v, %v, want UTC", start.Location(), end.Location())
			}
		})
	}
}

// TestWindowInvariants checks, for random instants over several years, that
// each window contains its instant and that windows tile time without gaps.
func TestWindowInvariants(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	from, to := utc("2026-01-01T00:00:00Z").Unix(), utc("2030-12-31T00:00:00Z").Unix()
	zones := []*time.Location{time.UTC, time.FixedZone("plus0530", 5*3600+1800), time.FixedZone("minus11", -11*3600)}
	for range 2000 {
		in := time.Unix(from+rng.Int64N(to-from), rng.Int64N(1e9)).In(zones[rng.IntN(len(zones))])
		for _, w := range llmv1alpha1.Windows {
			start, end := WindowStart(w, in), WindowEnd(w, in)
			if in.Before(start) || !in.Before(end) {
				t.Fatalf("%s window [%s, %s) does not contain %s", w, start, end, in)
			}
			if got := WindowStart(w, start); !got.Equal(start) {
				t.Fatalf("%s: WindowStart of start %s = %s", w, start, got)
			}
			if got := WindowStart(w, end); !got.Equal(end) {
				t.Fatalf("%s: next window after %s starts at %s, want its end %s", w, in, got, end)
			}
			if got := WindowEnd(w, end.Add(-time.Nanosecond)); !got.Equal(end) {
				t.Fatalf("%s: WindowEnd of the last instant before %s = %s", w, end, got)
			}
		}
		if wd := WindowStart(llmv1alpha1.WindowWeek, in).Weekday(); wd != time.Monday {
			t.Fatalf("week of %s starts on %s", in, wd)
		}
	}
}

func TestValidWindow(t *testing.T) {
	for _, w := range llmv1alpha1.Windows {
		if !ValidWindow(w) {
			t.Errorf("ValidWindow(%q) = false", w)
		}
	}
	for _, w := range []llmv1alpha1.Window{"", "minute", "Year"} {
		if ValidWindow(w) {
			t.Errorf("ValidWindow(%q) = true", w)
		}
	}
}

func TestWindowStartUnknownPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("WindowStart of an unknown window did not panic")
		}
	}()
	WindowStart("Year", time.Now())
}
