package quota

import (
	"errors"
	"math"
	"math/bits"
	"strconv"
	"strings"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
)

// Money is exact integer arithmetic, end to end. A cost is an int64 count of
// pico-units (10^-12) of the quota's currency. A price is given per million
// tokens with at most 6 decimals, so it is an integer number of micro-units
// per million tokens, which is exactly pico-units per token: t tokens at a
// price P cost t·P pico-units, with no rounding anywhere. Sums saturate at
// [MaxCost] (about 9.22 million currency units) instead of wrapping; the API
// refuses a budget above [MaxBudgetUnits], so a saturated count is always
// past every budget.

// MaxCost is the largest cost a counter holds, in pico-units.
const MaxCost = math.MaxInt64

// MaxBudgetUnits is the largest cost budget (limits[].cost) the API accepts,
// in whole currency units: under MaxCost with room to spare.
const MaxBudgetUnits = 9_000_000

// picoPerMicro converts micro-units (a decimal with 6 decimals) to pico-units.
const picoPerMicro = 1_000_000

// Price is what one token of a model costs, in pico-units of the quota's
// currency (the same number as the price per million tokens in micro-units).
type Price struct {
	// Input is the price of an input token the server did not find in its
	// prefix cache; CachedInput of one it did; Output of a generated token.
	Input, CachedInput, Output int64
}

// IsZero reports whether the price makes every token free.
func (p Price) IsZero() bool { return p == Price{} }

// Cost is what a (settled) amount costs: its uncached input, cached input
// and output tokens, each at its price. No more tokens are cached than the
// input has: a server cannot have cached more of a prompt than the prompt.
func (p Price) Cost(a Amount) int64 {
	in := max(a.InputTokens, 0)
	cached := min(max(a.CachedInputTokens, 0), in)
	c := mulSat(in-cached, p.Input)
	c = addSat(c, mulSat(cached, p.CachedInput))
	return addSat(c, mulSat(max(a.OutputTokens, 0), p.Output))
}

// inputBound is the most an estimate's input can cost: a reservation does
// not know which input tokens the server will find cached, so each is priced
// at the higher of the two input prices.
func (p Price) inputBound(a Amount) int64 {
	return mulSat(max(a.InputTokens, 0), max(p.Input, p.CachedInput))
}

// Bound is the most an estimate can cost: its input at the higher input
// price, and every output token it may generate.
func (p Price) Bound(a Amount) int64 {
	return addSat(p.inputBound(a), mulSat(max(a.OutputTokens, 0), p.Output))
}

// mulSat multiplies non-negative numbers, saturating at MaxInt64.
func mulSat(a, b int64) int64 {
	if a <= 0 || b <= 0 {
		return 0
	}
	hi, lo := bits.Mul64(uint64(a), uint64(b))
	if hi != 0 || lo > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(lo)
}

// addSat adds non-negative numbers, saturating at MaxInt64.
func addSat(a, b int64) int64 {
	if s := a + b; s >= a {
		return s
	}
	return math.MaxInt64
}

// PercentOf is used·100/cap rounded down, without overflow for any
// non-negative used; a cap of zero or less is always past 100 %.
func PercentOf(used, capv int64) int64 {
	if capv <= 0 {
		return math.MaxInt64
	}
	hi, lo := bits.Mul64(uint64(max(used, 0)), 100)
	if hi >= uint64(capv) {
		return math.MaxInt64
	}
	q, _ := bits.Div64(hi, lo, uint64(capv))
	return int64(min(q, math.MaxInt64))
}

var errDecimal = errors.New("not a decimal number with at most 6 decimals")

// ParseMicros reads a non-negative decimal with at most 6 decimals (a price
// or a budget of the API, as its CEL rules admit them) as micro-units.
func ParseMicros(s string) (int64, error) {
	whole, frac, dot := strings.Cut(s, ".")
	if whole == "" || len(frac) > 6 || (dot && frac == "") {
		return 0, errDecimal
	}
	for _, part := range []string{whole, frac} {
		for i := 0; i < len(part); i++ {
			if part[i] < '0' || part[i] > '9' {
				return 0, errDecimal
			}
		}
	}
	w, err := strconv.ParseInt(whole, 10, 64)
	if err != nil || w > (math.MaxInt64-picoPerMicro)/picoPerMicro {
		return 0, errDecimal
	}
	f := int64(0)
	if frac != "" {
		f, _ = strconv.ParseInt(frac+strings.Repeat("0", 6-len(frac)), 10, 64)
	}
	return w*picoPerMicro + f, nil
}

// ParseCost reads a cost as status writes it ([FormatCost]): a non-negative
// decimal with at most 12 decimals, in pico-units.
func ParseCost(s string) (int64, error) {
	whole, frac, dot := strings.Cut(s, ".")
	if whole == "" || len(frac) > 12 || (dot && frac == "") || strings.ContainsAny(whole+frac, "+-") {
		return 0, errors.New("not a cost: a decimal number with at most 12 decimals")
	}
	v, err := strconv.ParseInt(whole+frac+strings.Repeat("0", 12-len(frac)), 10, 64)
	if err != nil {
		return 0, errors.New("not a cost: a decimal number under 9223372.036854775807")
	}
	return v, nil
}

// FormatCost writes pico-units as a decimal in currency units, exactly, with
// no trailing zeros: "0", "12.5", "0.00000015".
func FormatCost(pico int64) string {
	if pico < 0 {
		return "-" + FormatCost(-max(pico, -math.MaxInt64))
	}
	s := strconv.FormatInt(pico, 10)
	if len(s) <= 12 {
		s = strings.Repeat("0", 13-len(s)) + s
	}
	whole, frac := s[:len(s)-12], strings.TrimRight(s[len(s)-12:], "0")
	if frac == "" {
		return whole
	}
	return whole + "." + frac
}

// Pricing is an LLMQuota's prices: the first entry whose pattern matches a
// model prices it; a model no entry matches is free.
type Pricing struct {
	Currency string
	Models   []ModelPrice
}

// ModelPrice is the price of the models matching a glob pattern.
type ModelPrice struct {
	Pattern string
	Price   Price
}

// Price returns the price of model: the first entry whose pattern matches
// it ([GlobMatch]), or the zero (free) price when none does or p is nil.
func (p *Pricing) Price(model string) Price {
	if p == nil {
		return Price{}
	}
	for _, m := range p.Models {
		if GlobMatch(m.Pattern, model) {
			return m.Price
		}
	}
	return Price{}
}

// PricingFromSpec converts an LLMQuota's spec.pricing (nil: none). The API
// server admits only prices that parse (CEL); an entry that does not is
// dropped, so the models it names fall to a later entry.
func PricingFromSpec(in *llmv1alpha1.Pricing) *Pricing {
	if in == nil {
		return nil
	}
	out := &Pricing{Currency: in.Currency, Models: make([]ModelPrice, 0, len(in.Models))}
	for _, m := range in.Models {
		input, err1 := ParseMicros(string(m.Input))
		output, err2 := ParseMicros(string(m.Output))
		cached, err3 := input, error(nil)
		if m.CachedInput != nil {
			cached, err3 = ParseMicros(string(*m.CachedInput))
		}
		if err := errors.Join(err1, err2, err3); err != nil {
			continue
		}
		out.Models = append(out.Models, ModelPrice{Pattern: m.Model, Price: Price{Input: input, CachedInput: cached, Output: output}})
	}
	return out
}

// costCap converts a limit's cost budget (currency units, at most 6
// decimals) to pico-units. A budget that does not parse (the API server's
// CEL rules admit none) admits nothing priced: the quota fails closed.
func costCap(s *llmv1alpha1.Decimal) *int64 {
	if s == nil {
		return nil
	}
	v, err := ParseMicros(string(*s))
	if err != nil {
		v = 0
	}
	v = mulSat(v, picoPerMicro)
	return &v
}
