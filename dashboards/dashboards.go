package main

import (
	"github.com/grafana/grafana-foundation-sdk/go/bargauge"
	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/stat"
	"github.com/grafana/grafana-foundation-sdk/go/table"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
)

// datasource is the dashboards' Prometheus, chosen with the datasource
// variable so the sidecar-loaded dashboards work with any datasource name.
var datasource = dashboard.DataSourceRef{Type: cog.ToPtr("prometheus"), Uid: cog.ToPtr("${datasource}")}

// series is a range query drawn over time.
func series(expr, legend string) *prometheus.DataqueryBuilder {
	return prometheus.NewDataqueryBuilder().Expr(expr).LegendFormat(legend).Range()
}

// instant is a query evaluated once, at the end of the time range.
func instant(expr, legend string) *prometheus.DataqueryBuilder {
	return prometheus.NewDataqueryBuilder().Expr(expr).LegendFormat(legend).Instant()
}

func graph(title, desc, unit string, w, h uint32, targets ...*prometheus.DataqueryBuilder) *timeseries.PanelBuilder {
	p := timeseries.NewPanelBuilder().Title(title).Description(desc).Unit(unit).Datasource(datasource).
		Span(w).Height(h).Min(0).FillOpacity(10).
		Legend(common.NewVizLegendOptionsBuilder().ShowLegend(true).DisplayMode(common.LegendDisplayModeTable).
			Placement(common.LegendPlacementBottom).Calcs([]string{"lastNotNull", "max"}))
	for i, t := range targets {
		p.WithTarget(t.RefId(refID(i)))
	}
	return p
}

func bars(title, desc, unit string, w, h uint32, targets ...*prometheus.DataqueryBuilder) *bargauge.PanelBuilder {
	p := bargauge.NewPanelBuilder().Title(title).Description(desc).Unit(unit).Datasource(datasource).
		Span(w).Height(h).Min(0).Orientation(common.VizOrientationHorizontal).
		DisplayMode(common.BarGaugeDisplayModeBasic).
		ReduceOptions(common.NewReduceDataOptionsBuilder().Calcs([]string{"lastNotNull"}).Values(false))
	for i, t := range targets {
		p.WithTarget(t.RefId(refID(i)))
	}
	return p
}

func single(title, desc, unit string, w, h uint32, targets ...*prometheus.DataqueryBuilder) *stat.PanelBuilder {
	p := stat.NewPanelBuilder().Title(title).Description(desc).Unit(unit).Datasource(datasource).
		Span(w).Height(h).
		ReduceOptions(common.NewReduceDataOptionsBuilder().Calcs([]string{"lastNotNull"}).Values(false))
	for i, t := range targets {
		p.WithTarget(t.RefId(refID(i)))
	}
	return p
}

// refID names a panel's i-th query A, B, ... as Grafana would.
func refID(i int) string { return "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[i : i+1] }

func datasourceVariable() *dashboard.DatasourceVariableBuilder {
	return dashboard.NewDatasourceVariableBuilder("datasource").Label("Data source").Type("prometheus")
}

func labelVariable(name, label, query string, all bool) *dashboard.QueryVariableBuilder {
	v := dashboard.NewQueryVariableBuilder(name).Label(label).
		Query(dashboard.StringOrMap{String: cog.ToPtr(query)}).
		Datasource(datasource).Refresh(dashboard.VariableRefreshOnTimeRangeChanged).
		Sort(dashboard.VariableSortAlphabeticalAsc)
	if all {
		v.IncludeAll(true).Multi(true).AllValue(".*")
	}
	return v
}

// dashboardBuilder builds the v1 dashboard model: the JSON that Grafana's
// sidecar provisions from ConfigMaps. The SDK marks it deprecated in favour
// of the v2 schema, which only Grafana 12's new dashboard API loads.
type dashboardBuilder = dashboard.DashboardBuilder //nolint:staticcheck // see above

func base(uid, title, desc string) *dashboardBuilder {
	b := dashboard.NewDashboardBuilder(title) //nolint:staticcheck // see dashboardBuilder
	return b.Uid(uid).Description(desc).
		Tags([]string{"llm-user-operator", "llm"}).Editable().
		Refresh("1m").Time("now-24h", "now").Timezone("utc").
		Tooltip(dashboard.DashboardCursorSyncCrosshair).
		WithVariable(datasourceVariable())
}

// admin is the cluster admin's view: who uses what, what is left, what is
// refused, how fast and how healthy the proxies are.
func admin() *dashboardBuilder {
	return base("llm-user-operator-admin", "LLM users — admin",
		"Usage, budgets, refusals and proxy health across every LLMUser and LLMQuota.").
		WithVariable(labelVariable("namespace", "Namespace", `label_values(`+mRequests+`, namespace)`, true)).
		WithRow(dashboard.NewRowBuilder("Usage")).
		WithPanel(bars("Tokens per user", "Tokens charged to each user (input + output) over the selected time range.", "short", 12, 9,
			instant(qTokensPerUser, "{{namespace}}/{{user}}"))).
		WithPanel(table.NewPanelBuilder().Title("Top users").
			Description("The ten users who spent the most tokens over the selected time range.").
			Datasource(datasource).Span(12).Height(9).Unit("short").
			WithTarget(instant(qTopUsers, "").Format(prometheus.PromQueryFormatTable).RefId(refID(0)))).
		WithPanel(graph("Token rate per user", "Tokens per second charged to each user.", "short", 12, 8,
			series(qTokenRatePerUser, "{{namespace}}/{{user}}"))).
		WithPanel(graph("Token rate per model", "Tokens per second by model and type (input or output).", "short", 12, 8,
			series(qTokenRatePerModel, "{{model}} {{type}}"))).
		WithPanel(bars("Cost per user", "What each user of a priced LLMQuota (spec.pricing) spent over the selected time range, in the quota's currency; status.usage[].cost has the exact figures per window.", "short", 24, 9,
			instant(qCostPerUser, "{{namespace}}/{{user}} {{currency}}"))).
		WithRow(dashboard.NewRowBuilder("Budgets")).
		WithPanel(bars("Remaining tokens per user", "Tokens left in each window of each user's own budget (PerUser quotas), for the windows past their first alert threshold (the proxy's --metrics-user-budgets=alerting).", "short", 8, 9,
			instant(qRemainingUserTokens, "{{namespace}}/{{user}} {{window}}"))).
		WithPanel(bars("Remaining requests per user", "Requests left in each window of each user's own budget (PerUser quotas), for the windows past their first alert threshold.", "short", 8, 9,
			instant(qRemainingUserReqs, "{{namespace}}/{{user}} {{window}}"))).
		WithPanel(bars("Remaining budget per Shared quota", "Tokens and requests left in each window of each Shared quota's pool.", "short", 8, 9,
			instant(qRemainingPoolTokens, "{{namespace}}/{{quota}} {{window}} tokens"),
			instant(qRemainingPoolReqs, "{{namespace}}/{{quota}} {{window}} requests"))).
		WithRow(dashboard.NewRowBuilder("Traffic")).
		WithPanel(graph("Rejections by reason", "Requests refused per second, by reason (dry_run_* reasons were admitted).", "reqps", 12, 8,
			series(qRejectionsByReason, "{{reason}}"))).
		WithPanel(graph("Request rate by model", "Requests per second by model and HTTP status code.", "reqps", 12, 8,
			series(qRequestRateByModel, "{{model}} {{code}}"))).
		WithPanel(graph("Request latency by model", "Median and 95th percentile of the time from a request's arrival to its last byte.", "s", 8, 8,
			series(qLatencyP50, "p50 {{gen_ai_request_model}}"), series(qLatencyP95, "p95 {{gen_ai_request_model}}"))).
		WithPanel(graph("Time to first token by model", "Median and 95th percentile of the time to the first streamed token.", "s", 8, 8,
			series(qTTFTP50, "p50 {{gen_ai_request_model}}"), series(qTTFTP95, "p95 {{gen_ai_request_model}}"))).
		WithPanel(graph("Upstream errors", "Requests per second that vLLM did not answer: 502 no connection or a broken response, 504 no answer in time.", "reqps", 8, 8,
			series(qUpstreamErrors, "{{model}} {{code}}"))).
		WithRow(dashboard.NewRowBuilder("Fair share")).
		WithPanel(graph("Who has the GPU", "Each user's share of the output tokens generated (the work that holds a model server's slots). With proxy.fairQueue, backlogged users of equal weight converge to equal shares.", "percentunit", 12, 8,
			series(qOutputShare, "{{namespace}}/{{user}}"))).
		WithPanel(graph("Dispatches by tier", "Requests sent upstream per second through the fair queues, by tier (the quota's spec.priority).", "reqps", 12, 8,
			series(qDispatchByTier, "tier {{tier}}"))).
		WithPanel(graph("Queue wait by tier", "95th percentile of the time a request waited in its upstream's fair queue, by tier.", "s", 8, 8,
			series(qQueueWaitP95, "p95 tier {{tier}}"))).
		WithPanel(graph("Requests waiting", "Requests waiting in each replica's fair queues for a slot at their upstream.", "short", 8, 8,
			series(qQueued, "{{instance}}"))).
		WithPanel(graph("Queue refusals", "Requests per second the fair queue gave up on: timeout, full, or left (the client left while waiting).", "reqps", 8, 8,
			series(qQueueRefusals, "tier {{tier}} {{reason}}"))).
		WithPanel(graph("Overflow by quota", "Tokens served past a soft limit (limits[].overage: Demote) over the selected time range, by quota: served after every request within quota, counted apart in status.usage[].overflow.", "short", 24, 8,
			series(qOverflowTokens, "{{namespace}}/{{quota}}"))).
		WithRow(dashboard.NewRowBuilder("Proxy health")).
		WithPanel(graph("Usage flush: status writes", "Usage write-backs to LLMUser/LLMQuota status per second, by kind and result; error means usage is waiting.", "ops", 6, 8,
			series(qStatusWrites, "{{kind}} {{result}}"))).
		WithPanel(graph("Usage flush lag", "Objects per replica whose usage is counted but not yet written to status.", "short", 6, 8,
			series(qPending, "{{instance}}"))).
		WithPanel(graph("Redis available", "1 while a replica's last call to its counter store (Redis) succeeded.", "short", 6, 8,
			series(qCounterAvailable, "{{instance}}")).Max(1)).
		WithPanel(graph("Redis errors", "Failed counter store calls per second, by operation and what the proxy did (refused or admitted).", "ops", 6, 8,
			series(qCounterErrors, "{{operation}} {{action}}")))
}

// myUsage is one user's view of their own budget.
func myUsage() *dashboardBuilder {
	return base("llm-user-operator-my-usage", "LLM users — my usage",
		"One LLMUser's tokens, remaining budget and window resets. Pick the namespace and the user.").
		WithVariable(labelVariable("namespace", "Namespace", `label_values(`+mRequests+`, namespace)`, false)).
		WithVariable(labelVariable("user", "User", `label_values(`+mRequests+`{namespace="$namespace"}, user)`, false)).
		WithPanel(single("Tokens used", "Tokens charged (input + output) over the selected time range.", "short", 6, 6,
			instant(qMyTokens, "tokens"))).
		WithPanel(single("Remaining tokens", "Tokens left in each window of the user's budget.", "short", 6, 6,
			instant(qMyRemainingTokens, "{{window}}"))).
		WithPanel(single("Remaining requests", "Requests left in each window of the user's budget.", "short", 6, 6,
			instant(qMyRemainingReqs, "{{window}}"))).
		WithPanel(single("Window resets in", "Time until each window of the budget starts again from zero (calendar windows, UTC).", "s", 6, 6,
			instant(qMyUntilReset, "{{window}}"))).
		WithPanel(bars("Budget used", "Share of each window's token budget spent.", "percent", 12, 8,
			instant(qMyUsedPercent, "{{window}}")).Max(100)).
		WithPanel(bars("Tokens per model", "Tokens charged per model over the selected time range.", "short", 12, 8,
			instant(qMyTokensPerModel, "{{model}}"))).
		WithPanel(bars("Cost per model", "What the user's requests cost per model over the selected time range, in the quota's currency (empty when the quota has no spec.pricing).", "short", 24, 8,
			instant(qMyCostPerModel, "{{model}} {{currency}}"))).
		WithPanel(graph("Token rate per model", "Tokens per second by model and type.", "short", 8, 8,
			series(qMyTokenRate, "{{model}} {{type}}"))).
		WithPanel(graph("Requests per model", "Requests per second by model.", "reqps", 8, 8,
			series(qMyRequestRate, "{{model}}"))).
		WithPanel(graph("Rejections by reason", "Requests refused per second, by reason.", "reqps", 8, 8,
			series(qMyRejections, "{{reason}}")))
}
