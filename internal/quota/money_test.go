package quota

import (
	"math"
	"math/rand/v2"
	"testing"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
)

func TestParseMicros(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true},
		{"12", 12_000_000, true},
		{"0.15", 150_000, true},
		{"2.5", 2_500_000, true},
		{"0.000001", 1, true},
		{"9999999.999999", 9_999_999_999_999, true},
		{"9000000", 9_000_000_000_000, true},
		{"0.0000001", 0, false}, // 7 decimals
		{"1.", 0, false},
		{".5", 0, false},
		{"-1", 0, false},
		{"+1", 0, false},
		{"1e3", 0, false},
		{"1,5", 0, false},
		{"", 0, false},
		{"9223372036854775807", 0, false},
	} {
		got, err := ParseMicros(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseMicros(%q) = %d, %v; want %d, ok %t", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestFormatAndParseCost(t *testing.T) {
	for _, tc := range []struct {
		pico int64
		want string
	}{
		{0, "0"},
		{1, "0.000000000001"},
		{150_000, "0.00000015"},
		{1_000_000_000_000, "1"},
		{12_500_000_000_000, "12.5"},
		{123_456_789_012_345, "123.456789012345"},
		{math.MaxInt64, "9223372.036854775807"},
	} {
		if got := FormatCost(tc.pico); got != tc.want {
			t.Errorf("FormatCost(%d) = %q, want %q", tc.pico, got, tc.want)
		}
		if back, err := ParseCost(tc.want); err != nil || back != tc.pico {
			t.Errorf("ParseCost(%q) = %d, %v; want %d", tc.want, back, err, tc.pico)
		}
	}
	for _, bad := range []string{"", "-1", "1.", "0.0000000000001", "9223372.036854775808", "1e3", "abc"} {
		if v, err := ParseCost(bad); err == nil {
			t.Errorf("ParseCost(%q) = %d, want an error", bad, v)
		}
	}
}

// TestPriceCost: price × tokens, each token kind at its own price. Prices
// are per million tokens in the API; the figures below are the picounits a
// token costs, which is the same number as micro-units per million.
func TestPriceCost(t *testing.T) {
	// $0.15 per million input tokens, $0.075 cached, $0.60 output.
	mini := Price{Input: 150_000, CachedInput: 75_000, Output: 600_000}
	for _, tc := range []struct {
		name  string
		price Price
		a     Amount
		cost  int64 // pico-units
		bound int64
	}{
		{"nothing", mini, Amount{}, 0, 0},
		{"a million input tokens", mini, Amount{InputTokens: 1_000_000}, 150_000_000_000, 150_000_000_000},
		{"a million output tokens", mini, Amount{OutputTokens: 1_000_000}, 600_000_000_000, 600_000_000_000},
		{"one of each", mini, Amount{InputTokens: 1, OutputTokens: 1}, 750_000, 750_000},
		{"cached at its own price", mini, Amount{InputTokens: 1000, CachedInputTokens: 400, OutputTokens: 10},
			600*150_000 + 400*75_000 + 10*600_000, 1000*150_000 + 10*600_000},
		{"no more cached than input", mini, Amount{InputTokens: 10, CachedInputTokens: 50}, 10 * 75_000, 10 * 150_000},
		{"a cached price above the input price bounds the input", Price{Input: 1, CachedInput: 3, Output: 0},
			Amount{InputTokens: 10, CachedInputTokens: 5}, 5*1 + 5*3, 10 * 3},
		{"negative counts cost nothing", mini, Amount{InputTokens: -5, OutputTokens: -5}, 0, 0},
		{"free", Price{}, Amount{InputTokens: 1 << 40, OutputTokens: 1 << 40}, 0, 0},
		{"saturates", Price{Input: 9_999_999_999_999, Output: 9_999_999_999_999}, Amount{InputTokens: 1 << 40, OutputTokens: 1 << 40},
			math.MaxInt64, math.MaxInt64},
	} {
		if got := tc.price.Cost(tc.a); got != tc.cost {
			t.Errorf("%s: Cost = %d, want %d", tc.name, got, tc.cost)
		}
		if got := tc.price.Bound(tc.a); got != tc.bound {
			t.Errorf("%s: Bound = %d, want %d", tc.name, got, tc.bound)
		}
	}
}

// TestCostHasNoDrift: for every price of the table, a million requests of
// random sizes cost, summed one by one, exactly what their summed tokens
// cost at once.
//
// By money.go's design no request's cost can be rounded: a price per million
// tokens has at most 6 decimals, so it is a whole number of pico-units per
// token, and a cost is a product of integers. The property holds by
// construction; it is asserted all the same, so that a change of unit (a
// price with a 7th decimal, a cost kept in micro-units, a float anywhere)
// that would make per-request rounding possible fails here.
func TestCostHasNoDrift(t *testing.T) {
	prices := []Price{
		{Input: 1, CachedInput: 1, Output: 1},                          // 0.000001 per million
		{Input: 150_000, CachedInput: 75_000, Output: 600_000},         // 0.15 / 0.075 / 0.60
		{Input: 2_500_000, CachedInput: 1_250_000, Output: 10_000_000}, // 2.50 / 1.25 / 10
		{Input: 30_000_000, CachedInput: 30_000_000, Output: 60_000_000},
		{Input: 333_333, CachedInput: 3, Output: 777_777}, // prices a float cannot hold exactly
		{Input: 15_000_000, CachedInput: 1_500_000, Output: 75_000_000},
	}
	const requests = 1_000_000
	for _, p := range prices {
		rng := rand.New(rand.NewPCG(uint64(p.Input), uint64(p.Output)))
		var tokens Amount
		var perRequest int64
		for range requests {
			in := rng.Int64N(200)
			a := Amount{Requests: 1, InputTokens: in, CachedInputTokens: rng.Int64N(in + 1), OutputTokens: rng.Int64N(100)}
			perRequest += p.Cost(a)
			tokens = tokens.Add(a)
		}
		if got := p.Cost(tokens); got != perRequest {
			t.Errorf("price %+v: the sum of %d requests' costs is %d, the cost of their summed tokens %d", p, requests, perRequest, got)
		}
		// And the exact figure, from the token counts alone.
		want := (tokens.InputTokens-tokens.CachedInputTokens)*p.Input + tokens.CachedInputTokens*p.CachedInput + tokens.OutputTokens*p.Output
		if perRequest != want {
			t.Errorf("price %+v: %d, want %d", p, perRequest, want)
		}
	}
}

func TestPricingFromSpec(t *testing.T) {
	if PricingFromSpec(nil) != nil {
		t.Error("no spec.pricing gave a pricing")
	}
	d := func(s string) *llmv1alpha1.Decimal { v := llmv1alpha1.Decimal(s); return &v }
	got := PricingFromSpec(&llmv1alpha1.Pricing{Currency: "EUR", Models: []llmv1alpha1.ModelPrice{
		{Model: "big/*", Input: "3", CachedInput: d("0.3"), Output: "15"},
		{Model: "bad", Input: "x", Output: "1"},
		{Model: "*", Input: "0.1", Output: "0.2"},
	}})
	want := []ModelPrice{
		{Pattern: "big/*", Price: Price{Input: 3_000_000, CachedInput: 300_000, Output: 15_000_000}},
		{Pattern: "*", Price: Price{Input: 100_000, CachedInput: 100_000, Output: 200_000}},
	}
	if got.Currency != "EUR" || len(got.Models) != len(want) {
		t.Fatalf("PricingFromSpec = %+v, want %+v", got, want)
	}
	for i := range want {
		if got.Models[i] != want[i] {
			t.Errorf("entry %d = %+v, want %+v", i, got.Models[i], want[i])
		}
	}
	limits := LimitsFromSpec([]llmv1alpha1.QuotaLimit{{Window: llmv1alpha1.WindowDay, Cost: d("25.5")}, {Window: llmv1alpha1.WindowHour, Cost: d("nope")}})
	if c := limits[0].Cost; c == nil || *c != 25_500_000_000_000 {
		t.Errorf("a budget of 25.5 is %v pico-units, want 25500000000000", show(c))
	}
	if c := limits[1].Cost; c == nil || *c != 0 {
		t.Errorf("a budget that does not parse is %v, want 0 (admit nothing priced)", show(c))
	}
}

func TestPercentOf(t *testing.T) {
	for _, tc := range []struct{ used, capv, want int64 }{
		{0, 100, 0}, {80, 100, 80}, {79, 100, 79}, {1, 3, 33},
		{math.MaxInt64 / 2, math.MaxInt64, 49}, {math.MaxInt64, math.MaxInt64, 100},
		{math.MaxInt64, 1, math.MaxInt64},
		{5, 0, math.MaxInt64}, // a zero cap is always past 100 %
	} {
		if got := PercentOf(tc.used, tc.capv); got != tc.want {
			t.Errorf("PercentOf(%d, %d) = %d, want %d", tc.used, tc.capv, got, tc.want)
		}
	}
}

func TestPricingPrice(t *testing.T) {
	p := &Pricing{Currency: "USD", Models: []ModelPrice{
		{Pattern: "meta-llama/*-70B*", Price: Price{Input: 900_000, CachedInput: 450_000, Output: 900_000}},
		{Pattern: "meta-llama/*", Price: Price{Input: 200_000, CachedInput: 200_000, Output: 400_000}},
	}}
	for _, tc := range []struct {
		model string
		want  Price
	}{
		{"meta-llama/Llama-3.1-70B-Instruct", Price{Input: 900_000, CachedInput: 450_000, Output: 900_000}},
		{"meta-llama/Llama-3.1-8B-Instruct", Price{Input: 200_000, CachedInput: 200_000, Output: 400_000}},
		{"mistralai/Mistral-7B", Price{}},
	} {
		if got := p.Price(tc.model); got != tc.want {
			t.Errorf("Price(%q) = %+v, want %+v (the first matching entry)", tc.model, got, tc.want)
		}
	}
	var none *Pricing
	if got := none.Price("meta-llama/Llama-3.1-8B-Instruct"); !got.IsZero() {
		t.Errorf("no pricing priced a model at %+v", got)
	}
}
