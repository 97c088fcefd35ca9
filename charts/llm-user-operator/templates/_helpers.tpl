{{/* Names every object after the release, so two releases never collide. */}}
{{- define "llmuo.name" -}}{{ .Release.Name }}{{- end -}}

{{/* The one image carrying /manager and /proxy; the tag defaults to appVersion. */}}
{{- define "llmuo.image" -}}{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}{{- end -}}

{{- define "llmuo.operatorService" -}}{{ include "llmuo.name" . }}-operator{{- end -}}

{{- define "llmuo.issuer" -}}
{{- .Values.operator.issuer | default (printf "https://%s.%s.svc" (include "llmuo.operatorService" .) .Release.Namespace) -}}
{{- end -}}

{{- define "llmuo.redisService" -}}{{ include "llmuo.name" . }}-redis{{- end -}}

{{- define "llmuo.labels" -}}
app.kubernetes.io/name: llm-user-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "llmuo.selector" -}}
app.kubernetes.io/name: llm-user-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
The proxy section of the operator's configuration: the values as given, with
the counter store pointed at the chart's Redis when redis.enabled.
*/}}
{{- define "llmuo.proxyConfig" -}}
{{- $p := deepCopy .Values.proxy -}}
{{- $mode := $p.counter.redis.mode | default "standalone" -}}
{{- if .Values.redis.enabled -}}
{{- if ne $mode "standalone" -}}
{{- fail (printf "redis.enabled runs one standalone Redis, but proxy.counter.redis.mode is %s: unset one of them" $mode) -}}
{{- end -}}
{{- $_ := set $p.counter "store" "redis" -}}
{{- if not $p.counter.redis.address -}}
{{- $_ := set $p.counter.redis "address" (printf "%s.%s.svc:6379" (include "llmuo.redisService" .) .Release.Namespace) -}}
{{- end -}}
{{- end -}}
{{- if and (gt (int $p.replicas) 1) (ne $p.counter.store "redis") -}}
{{- fail "proxy.replicas > 1 needs a shared counter store: set redis.enabled=true, or proxy.counter.store=redis with proxy.counter.redis.address" -}}
{{- end -}}
{{- if and (eq $p.counter.store "redis") (eq $mode "standalone") (not $p.counter.redis.address) -}}
{{- fail "proxy.counter.store=redis needs proxy.counter.redis.address (or redis.enabled=true to run one)" -}}
{{- end -}}
{{- if and (eq $p.counter.store "redis") (ne $mode "standalone") (not $p.counter.redis.addresses) -}}
{{- fail (printf "proxy.counter.redis.mode=%s needs proxy.counter.redis.addresses, a list of host:port" $mode) -}}
{{- end -}}
{{- if eq $mode "standalone" -}}
{{- $_ := unset $p.counter.redis "addresses" -}}
{{- $_ := unset $p.counter.redis "masterName" -}}
{{- end -}}
{{- toYaml $p -}}
{{- end -}}

{{/*
llmuo.rules renders the rules of a generated role file in files/rbac, so that
the chart grants exactly what config/rbac holds (make manifests copies them).
Call with (list $ "file.yaml" "Kind"): the rules of the documents of that kind.
*/}}
{{- define "llmuo.rules" -}}
{{- $root := index . 0 -}}
{{- $rules := list -}}
{{- range $doc := regexSplit "(?m)^---\\s*$" ($root.Files.Get (printf "files/rbac/%s" (index . 1))) -1 -}}
{{- $o := fromYaml $doc -}}
{{- if eq (index $o "kind" | default "") (index $ 2) -}}
{{- $rules = concat $rules $o.rules -}}
{{- end -}}
{{- end -}}
{{- toYaml $rules -}}
{{- end -}}
