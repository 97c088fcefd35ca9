package main

import (
	"fmt"
	"strings"
)

// Every PromQL expression of the dashboards and alerts is built here, from
// the metric names below: when a metric changes (issue 10 cuts per-user
// series, issue 11 adds cost), this file is the one to edit, and
// test/monitoring evaluates every panel and alert against a real Prometheus
// scraping a real proxy.

// The proxy's metrics (internal/metrics, internal/usage, internal/proxyserver).
const (
	mTokens          = "llm_proxy_tokens_total"
	mRequests        = "llm_proxy_requests_total"  // per user and model
	mResponses       = "llm_proxy_responses_total" // per namespace, model and status code
	mRejections      = "llm_proxy_rejections_total"
	mRemainingTokens = "llm_proxy_budget_remaining_tokens"
	mLimitTokens     = "llm_proxy_budget_limit_tokens"
	mRemainingReqs   = "llm_proxy_budget_remaining_requests"
	mLimitReqs       = "llm_proxy_budget_limit_requests"
	mDuration        = "gen_ai_client_operation_duration_seconds"
	mTTFT            = "gen_ai_server_time_to_first_token_seconds"
	mStatusWrites    = "llm_proxy_status_writes_total"
	mPending         = "llm_proxy_status_pending_objects"
	mCounterUp       = "llm_proxy_counter_available"
	mCounterErrors   = "llm_proxy_counter_errors_total"
	mCost            = "llm_user_cost_total" // per user, model and currency, for priced quotas
	mQueueWait       = "llm_proxy_queue_wait_seconds"
	mQueued          = "llm_proxy_queued_requests"
	mQueueRefusals   = "llm_proxy_queue_refusals_total"
	// Per quota: tokens admitted past a soft limit.
	mOverflowTokens = "llm_proxy_overflow_tokens_total"
)

// budgetKey identifies a budget window; every proxy replica exports the same
// budget gauges, so they are folded with min/max by these labels.
const budgetKey = "namespace, quota, user, window"

// Label selectors of the dashboards' variables.
const (
	selAdmin = `namespace=~"$namespace"`
	selUser  = `namespace="$namespace", user="$user"`
)

// Upstream failures: no connection (502), no answer in time (504), or a
// response cut mid-way (502).
const upstreamCodes = `code=~"502|504"`

func sel(metric string, matchers ...string) string {
	var m []string
	for _, s := range matchers {
		if s != "" {
			m = append(m, s)
		}
	}
	if len(m) == 0 {
		return metric
	}
	return metric + "{" + strings.Join(m, ", ") + "}"
}

func rate(metric string, matchers ...string) string {
	return "rate(" + sel(metric, matchers...) + "[$__rate_interval])"
}

// inRange is what a counter grew by over the dashboard's time range, exactly:
// its value now minus its value at the range's start, or minus nothing for a
// series born inside the range (a counter series starts at zero when the
// proxy first counts for a user). increase() would extrapolate instead, and
// miss what a series counted before its first scrape.
func inRange(metric string, matchers ...string) string {
	s := sel(metric, matchers...)
	return fmt.Sprintf("(%s - (%s offset $__range or %s * 0))", s, s, s)
}

// remaining is the remaining budget of each window, one series per budget
// whatever the number of proxy replicas.
func remaining(metric string, matchers ...string) string {
	return fmt.Sprintf("min by (%s) (%s)", budgetKey, sel(metric, matchers...))
}

// usedRatio is the share of each window's budget spent (0..1), for the
// alerts: 1 - remaining / limit.
func usedRatio(remainingMetric, limitMetric, matchers string) string {
	return fmt.Sprintf("(1 - %s / max by (%s) (%s))", remaining(remainingMetric, matchers), budgetKey, sel(limitMetric, matchers))
}

// eitherResource applies cond (a comparison such as ">= 0.8") to the token
// and the request budgets, labelling each result with its resource.
func eitherResource(cond func(remaining, limit string) string) string {
	return fmt.Sprintf(`label_replace(%s, "resource", "tokens", "", "") or label_replace(%s, "resource", "requests", "", "")`,
		cond(mRemainingTokens, mLimitTokens), cond(mRemainingReqs, mLimitReqs))
}

func quantile(q float64, metric, by string) string {
	return fmt.Sprintf("histogram_quantile(%g, sum by (le, %s) (rate(%s_bucket[$__rate_interval])))", q, by, metric)
}

// untilReset is the seconds left in the current window of each window the
// user's budgets have: the windows are calendar windows in UTC (weeks start on
// Monday; 1970-01-01 was a Thursday, three days after one).
func untilReset(matchers string) string {
	windows := strings.Join([]string{
		`label_replace(vector(60 - time() % 60), "window", "Minute", "", "")`,
		`label_replace(vector(3600 - time() % 3600), "window", "Hour", "", "")`,
		`label_replace(vector(86400 - time() % 86400), "window", "Day", "", "")`,
		`label_replace(vector(604800 - (time() + 259200) % 604800), "window", "Week", "", "")`,
		`label_replace((days_in_month() - day_of_month()) * 86400 + 86400 - time() % 86400, "window", "Month", "", "")`,
	}, " or ")
	return fmt.Sprintf("(%s) and on (window) group by (window) (%s or %s)", windows, sel(mLimitTokens, matchers), sel(mLimitReqs, matchers))
}

// Admin dashboard queries.
var (
	qTokensPerUser       = fmt.Sprintf("sum by (namespace, user) %s", inRange(mTokens, selAdmin))
	qTokenRatePerUser    = fmt.Sprintf("sum by (namespace, user) (%s)", rate(mTokens, selAdmin))
	qTokenRatePerModel   = fmt.Sprintf("sum by (model, type) (%s)", rate(mTokens, selAdmin))
	qTopUsers            = fmt.Sprintf("topk(10, sum by (namespace, user) %s)", inRange(mTokens, selAdmin))
	qCostPerUser         = fmt.Sprintf("sum by (namespace, user, currency) %s", inRange(mCost, selAdmin))
	qRemainingUserTokens = remaining(mRemainingTokens, selAdmin, `user!=""`)
	qRemainingUserReqs   = remaining(mRemainingReqs, selAdmin, `user!=""`)
	qRemainingPoolTokens = remaining(mRemainingTokens, selAdmin, `user=""`)
	qRemainingPoolReqs   = remaining(mRemainingReqs, selAdmin, `user=""`)
	qRejectionsByReason  = fmt.Sprintf("sum by (reason) (%s)", rate(mRejections, selAdmin))
	qRequestRateByModel  = fmt.Sprintf("sum by (model, code) (%s)", rate(mResponses, selAdmin))
	qLatencyP50          = quantile(0.5, mDuration, "gen_ai_request_model")
	qLatencyP95          = quantile(0.95, mDuration, "gen_ai_request_model")
	qTTFTP50             = quantile(0.5, mTTFT, "gen_ai_request_model")
	qTTFTP95             = quantile(0.95, mTTFT, "gen_ai_request_model")
	qUpstreamErrors      = fmt.Sprintf("sum by (model, code) (%s)", rate(mResponses, upstreamCodes))
	qStatusWrites        = fmt.Sprintf("sum by (kind, result) (%s)", rate(mStatusWrites))
	qPending             = fmt.Sprintf("sum by (instance) (%s)", mPending)
	qCounterAvailable    = fmt.Sprintf("min by (instance) (%s)", mCounterUp)
	qCounterErrors       = fmt.Sprintf("sum by (operation, action) (%s)", rate(mCounterErrors))
	// Who has the GPU: each user's share of the output tokens generated,
	// the work that holds a model server's slots.
	qOutputShare = fmt.Sprintf("sum by (namespace, user) (%s) / scalar(sum(%s))",
		rate(mTokens, selAdmin, `type="output"`), rate(mTokens, `type="output"`))
	qQueueWaitP95   = quantile(0.95, mQueueWait, "tier")
	qQueued         = fmt.Sprintf("sum by (instance) (%s)", mQueued)
	qQueueRefusals  = fmt.Sprintf("sum by (tier, reason) (%s)", rate(mQueueRefusals))
	qDispatchByTier = fmt.Sprintf("sum by (tier) (%s)", rate(mQueueWait+"_count"))
	qOverflowTokens = fmt.Sprintf("sum by (namespace, quota) %s", inRange(mOverflowTokens, selAdmin))
)

// My usage dashboard queries.
var (
	qMyTokens          = fmt.Sprintf("sum %s", inRange(mTokens, selUser))
	qMyTokensPerModel  = fmt.Sprintf("sum by (model) %s", inRange(mTokens, selUser))
	qMyCostPerModel    = fmt.Sprintf("sum by (model, currency) %s", inRange(mCost, selUser))
	qMyRemainingTokens = fmt.Sprintf("min by (window) (%s)", sel(mRemainingTokens, selUser))
	qMyRemainingReqs   = fmt.Sprintf("min by (window) (%s)", sel(mRemainingReqs, selUser))
	qMyUsedPercent     = fmt.Sprintf("100 * (1 - min by (window) (%s) / max by (window) (%s))", sel(mRemainingTokens, selUser), sel(mLimitTokens, selUser))
	qMyUntilReset      = untilReset(selUser)
	qMyTokenRate       = fmt.Sprintf("sum by (model, type) (%s)", rate(mTokens, selUser))
	qMyRequestRate     = fmt.Sprintf("sum by (model) (%s)", rate(mRequests, selUser))
	qMyRejections      = fmt.Sprintf("sum by (reason) (%s)", rate(mRejections, selUser))
)

// Alert expressions.
var (
	aThreshold = func(from, to float64) string {
		return eitherResource(func(rem, lim string) string {
			return fmt.Sprintf("%s >= %g < %g", usedRatio(rem, lim, ""), from, to)
		})
	}
	aUserExhausted = eitherResource(func(rem, _ string) string {
		return remaining(rem, `user!=""`) + " <= 0"
	})
	aPoolExhausted = eitherResource(func(rem, _ string) string {
		return remaining(rem, `user=""`) + " <= 0"
	})
	aErrorRate = fmt.Sprintf(`sum by (job) (rate(%s[5m])) / sum by (job) (rate(%s[5m])) > 0.05`,
		sel(mResponses, `code=~"5.."`), mResponses)
	aUpstreamDown = fmt.Sprintf(`sum by (job, model) (rate(%s[5m])) > 0 unless on (job, model) sum by (job, model) (rate(%s[5m])) > 0`,
		sel(mResponses, upstreamCodes), sel(mResponses, `code=~"2.."`))
	aCounterDown  = fmt.Sprintf("max by (job, instance) (%s) == 0", mCounterUp)
	aFlushFailing = fmt.Sprintf(`sum by (job, instance) (rate(%s[5m])) > 0`, sel(mStatusWrites, `result="error"`))
	aFlushLagging = fmt.Sprintf(`max by (job, instance) (%s) > 0 unless on (job, instance) sum by (job, instance) (increase(%s[10m])) > 0`, mPending, sel(mStatusWrites, `result="success"`))
)
