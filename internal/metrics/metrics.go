// Package metrics owns the proxy's Prometheus metric definitions, in one place.
//
// Names follow the OpenTelemetry GenAI semantic conventions where one exists
// (gen_ai.client.token.usage, gen_ai.client.operation.duration,
// gen_ai.server.time_to_first_token, exported the way the OpenTelemetry
// Prometheus exporter spells them), plus llm_proxy_* counters per user.
//
// Cardinality is bounded by construction:
//   - gen_ai_request_model and model only ever carry a model some upstream
//     serves (the proxy records "" for requests naming an unknown model);
//   - namespace and user come from authenticated LLMUser objects, never from
//     unauthenticated input; with [Options.UserLabel] false the user label is
//     always "" so series grow with namespaces, not users;
//   - code is an HTTP status code and reason, type and window are fixed sets.
//
// A user who made requests has three series by default, per model:
// llm_proxy_requests_total and llm_proxy_tokens_total's input and output;
// a user of a priced quota has a fourth, llm_user_cost_total, in the
// quota's currency.
// Forwarded requests are counted by what their charge was worked out from
// (llm_proxy_charges_total{basis}: four series in all). The fair queues
// add llm_proxy_queue_wait_seconds{tier}, llm_proxy_queued_requests and
// llm_proxy_queue_refusals_total{tier,reason}: series per priority tier in
// use, none per user; overflow (requests admitted past a soft limit) is
// counted per quota (llm_proxy_overflow_requests_total and
// llm_proxy_overflow_tokens_total{type}), not per user.
// Status codes are counted per namespace and model (llm_proxy_responses_total),
// a refused user adds a llm_proxy_rejections_total series per reason, and a
// user's budget gauges are exported once a window passes its first alert
// threshold ([BudgetsAlerting], the default of [Options.UserBudgets]).
//
// Per-user series of a deleted user are dropped with [Metrics.ForgetUser];
// budget gauges also vanish when their window ends.
package metrics

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Options configures [New].
type Options struct {
	// UserLabel fills the user label of the per-user counters. When false the
	// label is kept (so dashboards need not change) but always "", bounding
	// the number of series by namespaces × models × codes.
	UserLabel bool
	// UserBudgets chooses which users' budget windows have gauges (default
	// BudgetsAlerting); Shared pools always have theirs.
	UserBudgets BudgetMode
	// Now is the clock that ends budget windows (default time.Now).
	Now func() time.Time
	// DirectUsers leaves the per-user counters (llm_proxy_requests_total,
	// llm_proxy_tokens_total, llm_user_cost_total) out of the registry:
	// [Metrics.Handler] writes them straight into each scrape, which at tens
	// of thousands of users costs a tenth of the registry's way.
	DirectUsers bool
}

// Metrics are the proxy's metrics. A nil *Metrics records nothing, so callers
// need no checks.
type Metrics struct {
	userLabel bool
	// direct: the per-user counters are not in the registry; Handler
	// writes them.
	direct bool

	tokenUsage *prometheus.HistogramVec
	duration   *prometheus.HistogramVec
	ttft       *prometheus.HistogramVec
	users      *userCounters
	responses  *prometheus.CounterVec
	rejections *prometheus.CounterVec
	unsettled  prometheus.Gauge
	budgets    *budgetBoard
	charges    *prometheus.CounterVec
	// chargeBases are charges' series, made once: a map read on the hot path.
	chargeBases map[string]prometheus.Counter
	// The fair queue's: waits and dispatches by tier, and requests waiting.
	queueWait  *prometheus.HistogramVec
	queued     prometheus.Gauge
	queueRefus *prometheus.CounterVec
	// overflowReqs and overflowTokens count overflow per quota: per-user
	// series would add a fourth and fifth per user.
	overflowReqs, overflowTokens *prometheus.CounterVec
}

// TierOverflow is the tier label of overflow in the fair queue's metrics:
// requests admitted past a soft limit, served after every priority.
const TierOverflow = "overflow"

// Overflow counts one charged overflow request of quota.
func (m *Metrics) Overflow(namespace, quota string, input, output int64) {
	if m == nil {
		return
	}
	m.overflowReqs.WithLabelValues(namespace, quota).Inc()
	if input > 0 {
		m.overflowTokens.WithLabelValues(namespace, quota, "input").Add(float64(input))
	}
	if output > 0 {
		m.overflowTokens.WithLabelValues(namespace, quota, "output").Add(float64(output))
	}
}

// Values of llm_proxy_charges_total's basis: what a charge was worked out
// from (the proxy's settle rule, README "Accounting model").
const (
	BasisUsage       = "usage"
	BasisContinuous  = "continuous"
	BasisDelivered   = "delivered"
	BasisReservation = "reservation"
)

// Label values of gen_ai_token_type and of llm_proxy_tokens_total's type.
const (
	TokenTypeInput  = "input"
	TokenTypeOutput = "output"
)

// Values of gen_ai_operation_name.
const (
	OperationChat           = "chat"
	OperationTextCompletion = "text_completion"
	OperationEmbeddings     = "embeddings"
)

// Bucket boundaries advised by the OpenTelemetry GenAI semantic conventions.
var (
	tokenBuckets    = []float64{1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864}
	durationBuckets = []float64{0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92}
	ttftBuckets     = []float64{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0}
)

// New creates the metrics and registers them with reg (which may be nil to
// register nothing, for tests). It panics if a metric is already registered,
// like [prometheus.MustRegister].
func New(reg prometheus.Registerer, opts Options) *Metrics {
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	mode := opts.UserBudgets
	if mode == "" {
		mode = BudgetsAlerting
	}
	if !opts.UserLabel {
		mode = BudgetsNone // a user's gauges would collide with its pool's
	}
	m := &Metrics{
		userLabel: opts.UserLabel,
		direct:    opts.DirectUsers,
		budgets:   newBudgetBoard(mode, now),
		tokenUsage: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "gen_ai_client_token_usage",
			Help:    "Tokens used per request, by token type (input or output), as reported by the upstream.",
			Buckets: tokenBuckets,
		}, []string{"gen_ai_token_type", "gen_ai_request_model", "gen_ai_operation_name"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "gen_ai_client_operation_duration_seconds",
			Help:    "Time from the request reaching the proxy to the last byte of the response.",
			Buckets: durationBuckets,
		}, []string{"gen_ai_request_model", "gen_ai_operation_name", "error_type"}),
		ttft: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "gen_ai_server_time_to_first_token_seconds",
			Help:    "Time from the request reaching the proxy to the first generated chunk of a streamed response.",
			Buckets: ttftBuckets,
		}, []string{"gen_ai_request_model", "gen_ai_operation_name"}),
		users: newUserCounters(),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llm_proxy_responses_total",
			Help: "Requests answered by the proxy, by namespace, model (\"\" when unknown) and HTTP status code.",
		}, []string{"namespace", "model", "code"}),
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llm_proxy_rejections_total",
			Help: "Requests refused (or, for dry_run_* reasons, that would have been refused) by policy.",
		}, []string{"namespace", "user", "reason"}),
		unsettled: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "llm_proxy_unsettled_requests",
			Help: "Finished requests whose usage the quota counter store has not taken yet (it was unreachable); they are settled again every second.",
		}),
	}
	m.charges = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "llm_proxy_charges_total",
		Help: "Forwarded requests charged, by what the charge was worked out from: usage (the upstream's report for the whole request), continuous (continuous usage summed over every sequence), delivered (the output events the client got), reservation (nothing told what was used: the request's admitted bound).",
	}, []string{"basis"})
	m.chargeBases = map[string]prometheus.Counter{}
	for _, b := range []string{BasisUsage, BasisContinuous, BasisDelivered, BasisReservation} {
		m.chargeBases[b] = m.charges.WithLabelValues(b)
	}
	m.queueWait = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "llm_proxy_queue_wait_seconds",
		Help:    "Time a request waited in the fair queue of its upstream before it was dispatched (0 when it did not wait), by tier (the quota's spec.priority); the count is the dispatches.",
		Buckets: queueBuckets,
	}, []string{"tier"})
	m.queued = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "llm_proxy_queued_requests",
		Help: "Requests waiting in the fair queues for a slot at their upstream.",
	})
	m.queueRefus = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "llm_proxy_queue_refusals_total",
		Help: "Requests refused by the fair queue: timeout (waited queueTimeout), full (the queue or the flow's share of it), left (the client left while waiting).",
	}, []string{"tier", "reason"})
	m.overflowReqs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "llm_proxy_overflow_requests_total",
		Help: "Requests admitted past a soft limit (limits[].overage: Demote) and charged, by namespace and quota: overflow, also counted in llm_user_tokens_total. Each user's own overflow is in status.usage[].overflow and GET /v1/usage.",
	}, []string{"namespace", "quota"})
	m.overflowTokens = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "llm_proxy_overflow_tokens_total",
		Help: "Tokens charged to overflow requests (admitted past a soft limit), by namespace, quota and type (input or output).",
	}, []string{"namespace", "quota", "type"})
	if reg != nil {
		reg.MustRegister(m.tokenUsage, m.duration, m.ttft, m.responses, m.rejections, m.unsettled, m.budgets, m.charges,
			m.queueWait, m.queued, m.queueRefus, m.overflowReqs, m.overflowTokens)
		if !m.direct {
			reg.MustRegister(m.users)
		}
	}
	return m
}

// queueBuckets run from a millisecond to two minutes.
var queueBuckets = []float64{0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}

// ObserveDispatch records a request dispatched to its upstream after
// waiting waited in tier's queue.
func (m *Metrics) ObserveDispatch(tier string, waited time.Duration) {
	if m == nil {
		return
	}
	m.queueWait.WithLabelValues(tier).Observe(waited.Seconds())
}

// Queued adds delta to the requests waiting in the fair queues.
func (m *Metrics) Queued(delta int) {
	if m == nil {
		return
	}
	m.queued.Add(float64(delta))
}

// QueueRefused counts a request the fair queue gave up on: reason timeout,
// full or left.
func (m *Metrics) QueueRefused(tier, reason string) {
	if m == nil {
		return
	}
	m.queueRefus.WithLabelValues(tier, reason).Inc()
}

// CountCharge counts one forwarded request charged on basis (one of the
// Basis* values).
func (m *Metrics) CountCharge(basis string) {
	if m == nil {
		return
	}
	if c, ok := m.chargeBases[basis]; ok {
		c.Inc()
	}
}

// SetUnsettled reports how many finished requests wait to be settled.
func (m *Metrics) SetUnsettled(n int) {
	if m == nil {
		return
	}
	m.unsettled.Set(float64(n))
}

// Request is one finished request, as recorded by [Metrics.ObserveRequest].
type Request struct {
	Namespace, User string
	// Model is a model an upstream serves, or "" when the request named none
	// or an unknown one.
	Model string
	// Operation is one of the Operation* constants, or "" for requests that
	// are not generation (tokenize) or were refused before routing.
	Operation string
	Code      int
	// InputTokens and OutputTokens are what was charged.
	InputTokens, OutputTokens int64
	// Currency is the user's quota's currency, "" when it has no pricing;
	// Cost is what the request cost in it, in pico-units (10^-12).
	Currency string
	Cost     int64
	// Duration is the whole request; zero skips the duration histogram.
	Duration time.Duration
	// TTFT is the time to the first streamed chunk; zero when not streamed.
	TTFT time.Duration
	// ErrorType is "" on success, else a short low-cardinality class such as
	// the status code or "client_closed".
	ErrorType string
}

// ObserveRequest records a finished request.
func (m *Metrics) ObserveRequest(r Request) {
	if m == nil {
		return
	}
	user := m.user(r.User)
	c := m.users.get(userKey{model: r.Model, namespace: r.Namespace, user: user})
	c.requests.Add(1)
	if r.Currency != "" && r.Model != "" {
		m.users.addCost(costKey{currency: r.Currency, model: r.Model, namespace: r.Namespace, user: user}, r.Cost)
	}
	m.responses.WithLabelValues(r.Namespace, r.Model, codeString(r.Code)).Inc()
	if r.Model == "" || r.Operation == "" {
		return
	}
	if r.InputTokens > 0 || r.OutputTokens > 0 {
		m.tokenUsage.WithLabelValues(TokenTypeInput, r.Model, r.Operation).Observe(float64(r.InputTokens))
		c.tokens.Store(true)
		c.input.Add(uint64(max(r.InputTokens, 0)))
		if r.Operation != OperationEmbeddings {
			m.tokenUsage.WithLabelValues(TokenTypeOutput, r.Model, r.Operation).Observe(float64(r.OutputTokens))
			c.generates.Store(true)
			c.output.Add(uint64(max(r.OutputTokens, 0)))
		}
	}
	if r.Duration > 0 {
		m.duration.WithLabelValues(r.Model, r.Operation, r.ErrorType).Observe(r.Duration.Seconds())
	}
	if r.TTFT > 0 {
		m.ttft.WithLabelValues(r.Model, r.Operation).Observe(r.TTFT.Seconds())
	}
}

// Reasons of llm_proxy_rejections_total. Dry-run budgets record
// "dry_run_" + the reason instead, and admit the request.
const (
	ReasonUnauthenticated   = "unauthenticated"
	ReasonRevoked           = "revoked"
	ReasonQuotaMissing      = "quota_missing"
	ReasonModelNotAllowed   = "model_not_allowed"
	ReasonMaxTokens         = "max_tokens"
	ReasonRateLimit         = "rate_limit"
	ReasonInsufficientQuota = "insufficient_quota"
	ReasonConcurrency       = "concurrency_limit"
	// ReasonQueue: the fair queue of the model's upstream timed out or was
	// full.
	ReasonQueue = "queue"
	// ReasonUnmeterable: a request asked for generation the proxy cannot
	// meter (a background response, a server-side tool).
	ReasonUnmeterable = "unmeterable"
	// ReasonShortened is not a refusal: a request without its own cap was
	// admitted with a cap lowered to what its budget had left.
	ReasonShortened = "shortened"
	DryRunPrefix    = "dry_run_"
)

// Reject counts a refusal (namespace and user are "" when the caller could
// not be identified).
func (m *Metrics) Reject(namespace, user, reason string) {
	if m == nil {
		return
	}
	m.rejections.WithLabelValues(namespace, m.user(user), reason).Inc()
}

// ForgetUser deletes every per-user series of namespace/user, so that a
// deleted LLMUser's series disappear instead of lingering until restart. With
// UserLabel off there are no per-user series and this does nothing.
func (m *Metrics) ForgetUser(namespace, user string) {
	if m == nil || !m.userLabel {
		return
	}
	l := prometheus.Labels{"namespace": namespace, "user": user}
	m.users.forget(namespace, user)
	m.rejections.DeletePartialMatch(l)
	m.budgets.forget(namespace, user)
}

func (m *Metrics) user(u string) string {
	if m.userLabel {
		return u
	}
	return ""
}

// codes holds the decimal strings of every HTTP status so labelling a
// request does not allocate.
var codes = func() (c [600]string) {
	for i := range c {
		c[i] = strconv.Itoa(i)
	}
	return c
}()

func codeString(code int) string {
	if code >= 0 && code < len(codes) {
		return codes[code]
	}
	return strconv.Itoa(code)
}
