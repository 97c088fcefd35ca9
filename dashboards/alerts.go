package main

// ruleFile is a Prometheus rule file; its groups are a PrometheusRule's spec.
type ruleFile struct {
	Groups []ruleGroup `yaml:"groups"`
}

type ruleGroup struct {
	Name  string `yaml:"name"`
	Rules []rule `yaml:"rules"`
}

type rule struct {
	Alert       string            `yaml:"alert"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for,omitempty"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

// who names a budget in an annotation: a user's own, or a Shared quota's
// pool (user "").
const who = `{{ if $labels.user }}LLMUser {{ $labels.namespace }}/{{ $labels.user }}{{ else }}the Shared quota {{ $labels.namespace }}/{{ $labels.quota }}{{ end }}`

func alerts() ruleFile {
	threshold := func(pct, next string, from, to float64) rule {
		return rule{
			Alert:  "LLMBudgetThresholdReached",
			Expr:   aThreshold(from, to),
			For:    "1m",
			Labels: map[string]string{"severity": "info", "threshold": pct},
			Annotations: map[string]string{
				"summary": "An LLM budget is " + pct + "% spent.",
				"description": who + " has spent {{ $value | humanizePercentage }} of its {{ $labels.window }} {{ $labels.resource }} budget " +
					"(LLMQuota {{ $labels.quota }}), past the " + pct + "% threshold and below " + next + ".",
			},
		}
	}
	return ruleFile{Groups: []ruleGroup{{
		Name: "llm-user-operator",
		Rules: []rule{
			threshold("80", "95%", 0.8, 0.95),
			threshold("95", "exhaustion", 0.95, 1),
			{
				Alert: "LLMUserBudgetExhausted", Expr: aUserExhausted, For: "1m",
				Labels: map[string]string{"severity": "warning"},
				Annotations: map[string]string{
					"summary":     "An LLMUser has spent its budget: its requests are refused.",
					"description": who + " has no {{ $labels.resource }} left in its {{ $labels.window }} window (LLMQuota {{ $labels.quota }}); requests are refused with 429 until the window resets.",
				},
			},
			{
				Alert: "LLMSharedQuotaExhausted", Expr: aPoolExhausted, For: "1m",
				Labels: map[string]string{"severity": "warning"},
				Annotations: map[string]string{
					"summary":     "A Shared LLMQuota is spent: every user drawing from it is refused.",
					"description": who + " has no {{ $labels.resource }} left in its {{ $labels.window }} window; every LLMUser referencing it is refused with 429 until the window resets.",
				},
			},
			{
				Alert: "LLMProxyHighErrorRate", Expr: aErrorRate, For: "10m",
				Labels: map[string]string{"severity": "critical"},
				Annotations: map[string]string{
					"summary":     "The LLM proxy answers more than 5% of requests with a server error.",
					"description": "{{ $value | humanizePercentage }} of the requests to {{ $labels.job }} got a 5xx over the last 5 minutes. See the admin dashboard's upstream errors and the proxy's logs.",
				},
			},
			{
				Alert: "LLMUpstreamDown", Expr: aUpstreamDown, For: "5m",
				Labels: map[string]string{"severity": "critical"},
				Annotations: map[string]string{
					"summary":     "A vLLM upstream fails every request.",
					"description": "Every request for model {{ $labels.model }} through {{ $labels.job }} failed to reach vLLM (502/504) over the last 5 minutes, and none succeeded.",
				},
			},
			{
				Alert: "LLMCounterStoreUnavailable", Expr: aCounterDown, For: "1m",
				Labels: map[string]string{"severity": "critical"},
				Annotations: map[string]string{
					"summary":     "A proxy replica cannot reach Redis, its quota counter store.",
					"description": "{{ $labels.instance }} failed its last call to Redis: with failOpen false (the default) it refuses requests with 503 quota_unavailable; with failOpen true it admits them without enforcing quotas.",
				},
			},
			{
				Alert: "LLMUsageFlushFailing", Expr: aFlushFailing, For: "10m",
				Labels: map[string]string{"severity": "warning"},
				Annotations: map[string]string{
					"summary":     "A proxy replica fails to write usage to LLMUser/LLMQuota status.",
					"description": "{{ $labels.instance }} has failed status writes for 10 minutes. Usage is kept in memory and retried, but kubectl get llmusers is out of date and a restart would lose it.",
				},
			},
			{
				Alert: "LLMUsageFlushLagging", Expr: aFlushLagging, For: "10m",
				Labels: map[string]string{"severity": "warning"},
				Annotations: map[string]string{
					"summary":     "A proxy replica holds usage it has not written for 10 minutes.",
					"description": "{{ $labels.instance }} has {{ $value }} objects with unwritten usage and no successful status write in 10 minutes.",
				},
			},
		},
	}}}
}
