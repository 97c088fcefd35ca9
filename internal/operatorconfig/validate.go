package operatorconfig

import (
	"fmt"
	"maps"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// objectivePrefix is what may start an InferenceObjective's name that a
// tier ("0", "-5", "overflow") ends.
var objectivePrefix = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]*[-a-z0-9])?$`)

// Validate checks a defaulted configuration and returns every problem at
// once, each naming its field and what to set, or nil.
func (c *OperatorConfig) Validate() error {
	var errs field.ErrorList
	if c.APIVersion != APIVersion {
		errs = append(errs, field.NotSupported(field.NewPath("apiVersion"), c.APIVersion, []string{APIVersion}))
	}
	if c.Kind != Kind {
		errs = append(errs, field.NotSupported(field.NewPath("kind"), c.Kind, []string{Kind}))
	}
	if c.Audience == "" {
		errs = append(errs, field.Required(field.NewPath("audience"), "the aud claim the proxy checks, e.g. llm-user-proxy"))
	}
	if c.KeyRotationPeriod.Duration <= 0 {
		errs = append(errs, field.Invalid(field.NewPath("keyRotationPeriod"), c.KeyRotationPeriod.Duration.String(), "must be positive, e.g. 720h"))
	}
	for _, msg := range validation.IsDNS1035Label(c.OperatorService) {
		errs = append(errs, field.Invalid(field.NewPath("operatorService"), c.OperatorService, "must be a Service name: "+msg))
	}
	errs = append(errs, c.Proxy.validate(field.NewPath("proxy"))...)
	if len(errs) == 0 {
		return nil
	}
	return errs.ToAggregate()
}

func (p *Proxy) validate(path *field.Path) field.ErrorList {
	var errs field.ErrorList
	add := func(e *field.Error) { errs = append(errs, e) }
	for _, msg := range validation.IsDNS1035Label(p.Name) {
		add(field.Invalid(path.Child("name"), p.Name, "must be a Service name: "+msg))
	}
	// The metrics Service is <name>-metrics.
	if len(p.Name) > validation.DNS1035LabelMaxLength-len("-metrics") {
		add(field.TooLong(path.Child("name"), p.Name, validation.DNS1035LabelMaxLength-len("-metrics")))
	}
	if !*p.Enabled {
		return errs
	}
	if p.Image == "" {
		add(field.Required(path.Child("image"), "set proxy.image, or "+EnvOperatorImage+" to the operator's image (the chart does), which ships /proxy"))
	}
	switch p.ImagePullPolicy {
	case corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
	default:
		add(field.NotSupported(path.Child("imagePullPolicy"), p.ImagePullPolicy, []corev1.PullPolicy{corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever}))
	}
	if *p.Replicas < 1 {
		add(field.Invalid(path.Child("replicas"), *p.Replicas, "must be at least 1; set proxy.enabled: false to run no proxy"))
	}
	if len(p.Upstreams) == 0 {
		add(field.Required(path.Child("upstreams"), "list the base URLs of your vLLM servers, e.g. [http://vllm.vllm.svc:8000]"))
	}
	for i, u := range p.Upstreams {
		if msg := httpURL(u); msg != "" {
			add(field.Invalid(path.Child("upstreams").Index(i), u, msg+", e.g. http://vllm.vllm.svc:8000"))
		}
	}
	for i, u := range p.KVTransferUpstreams {
		if !slices.Contains(p.Upstreams, u) {
			add(field.Invalid(path.Child("kvTransferUpstreams").Index(i), u, "must be one of proxy.upstreams, as written there"))
		}
	}
	if o := p.InferenceObjectivePrefix; o != "" {
		// The longest tier appended is "-1000", "overflow" or "1000".
		if msgs := validation.IsDNS1123Subdomain(o + "overflow"); len(msgs) > 0 || !objectivePrefix.MatchString(o) {
			add(field.Invalid(path.Child("inferenceObjectivePrefix"), o,
				"must start an InferenceObjective's name: lower-case letters, digits, '-' and '.', starting with a letter or digit, e.g. llm-tier-"))
		}
	}
	if msg := httpURL(p.BaseURL); msg != "" {
		add(field.Invalid(path.Child("baseURL"), p.BaseURL, msg+", e.g. https://llm.example.com/v1"))
	}
	if msg := httpURL(p.RefreshURL); msg != "" {
		add(field.Invalid(path.Child("refreshURL"), p.RefreshURL, msg))
	}
	for _, port := range []struct {
		name string
		v    int32
	}{{"port", p.Port}, {"metricsPort", p.MetricsPort}} {
		for _, msg := range validation.IsValidPortNum(int(port.v)) {
			add(field.Invalid(path.Child(port.name), port.v, msg))
		}
	}
	if p.Port == p.MetricsPort {
		add(field.Duplicate(path.Child("metricsPort"), p.MetricsPort))
	}
	positive := func(p *field.Path, d metav1.Duration) {
		if d.Duration <= 0 {
			add(field.Invalid(p, d.Duration.String(), "must be a positive duration, e.g. 30s"))
		}
	}
	positive(path.Child("flushInterval"), p.FlushInterval)
	positive(path.Child("shutdownGrace"), p.ShutdownGrace)
	if p.StatusWriteRate < 1 {
		add(field.Invalid(path.Child("statusWriteRate"), p.StatusWriteRate, "must be at least 1 write per second"))
	}

	if ub := p.Metrics.UserBudgets; ub != "alerting" && ub != "all" && ub != "none" {
		add(field.NotSupported(path.Child("metrics", "userBudgets"), ub, []string{"alerting", "all", "none"}))
	}

	counter := path.Child("counter")
	switch p.Counter.Store {
	case CounterMemory:
	case CounterRedis:
		errs = append(errs, validateRedis(counter.Child("redis"), &p.Counter.Redis)...)
	default:
		add(field.NotSupported(counter.Child("store"), p.Counter.Store, []CounterStore{CounterMemory, CounterRedis}))
	}
	positive(counter.Child("redis", "lease"), p.Counter.Redis.Lease)

	limits := path.Child("limits")
	for _, l := range []struct {
		name string
		v    int64
	}{{"maxRequestBody", p.Limits.MaxRequestBody}, {"maxBodyMemory", p.Limits.MaxBodyMemory}, {"defaultMaxTokens", p.Limits.DefaultMaxTokens}} {
		if l.v < 1 {
			add(field.Invalid(limits.Child(l.name), l.v, "must be at least 1"))
		}
	}
	if p.Limits.MediaItemTokens < 0 {
		add(field.Invalid(limits.Child("mediaItemTokens"), p.Limits.MediaItemTokens, "must not be negative; 0 reserves the model's context length"))
	}
	if p.Limits.MaxBodyMemory < p.Limits.MaxRequestBody {
		add(field.Invalid(limits.Child("maxBodyMemory"), p.Limits.MaxBodyMemory,
			fmt.Sprintf("must be at least limits.maxRequestBody (%d): one request could never be read", p.Limits.MaxRequestBody)))
	}
	fq := path.Child("fairQueue")
	if p.FairQueue.MaxInFlight < 0 {
		add(field.Invalid(fq.Child("maxInFlight"), p.FairQueue.MaxInFlight, "must not be negative; 0 sends every request at once (no queue)"))
	}
	for _, u := range slices.Sorted(maps.Keys(p.FairQueue.PerUpstream)) {
		if n := p.FairQueue.PerUpstream[u]; n < 0 {
			add(field.Invalid(fq.Child("perUpstream").Key(u), n, "must not be negative; 0 sends every request at once (no queue)"))
		}
		if !slices.Contains(p.Upstreams, u) {
			add(field.Invalid(fq.Child("perUpstream").Key(u), u, "is not one of upstreams: name an upstream by its URL exactly as upstreams lists it"))
		}
	}
	if r := p.FairQueue.ReservedSlots; r < 0 {
		add(field.Invalid(fq.Child("reservedSlots"), r, "must not be negative; 0 reserves no slot"))
	} else if r > 0 {
		limits := map[string]int32{"maxInFlight": p.FairQueue.MaxInFlight}
		for u, n := range p.FairQueue.PerUpstream {
			limits["perUpstream["+u+"]"] = n
		}
		for _, name := range slices.Sorted(maps.Keys(limits)) {
			if n := limits[name]; n > 0 && r >= n {
				add(field.Invalid(fq.Child("reservedSlots"), r, fmt.Sprintf("must be below %s (%d): a user with requests running must be able to hold a slot", name, n)))
			}
		}
	}
	positive(fq.Child("queueTimeout"), p.FairQueue.QueueTimeout)
	if p.FairQueue.MaxQueued < 1 {
		add(field.Invalid(fq.Child("maxQueued"), p.FairQueue.MaxQueued, "must be at least 1"))
	}
	if p.FairQueue.MaxQueuedPerUser < 1 || p.FairQueue.MaxQueuedPerUser > p.FairQueue.MaxQueued {
		add(field.Invalid(fq.Child("maxQueuedPerUser"), p.FairQueue.MaxQueuedPerUser, fmt.Sprintf("must be between 1 and maxQueued (%d)", p.FairQueue.MaxQueued)))
	}
	timeouts := path.Child("timeouts")
	positive(timeouts.Child("bodyRead"), p.Timeouts.BodyRead)
	positive(timeouts.Child("idle"), p.Timeouts.Idle)
	positive(timeouts.Child("write"), p.Timeouts.Write)
	positive(timeouts.Child("upstreamHeader"), p.Timeouts.UpstreamHeader)
	positive(timeouts.Child("streamIdle"), p.Timeouts.StreamIdle)

	for name, req := range p.Resources.Requests {
		if lim, ok := p.Resources.Limits[name]; ok && req.Cmp(lim) > 0 {
			add(field.Invalid(path.Child("resources", "requests").Key(string(name)), req.String(),
				"must not exceed resources.limits."+string(name)+" ("+lim.String()+")"))
		}
	}
	np := path.Child("networkPolicy")
	for name, sel := range map[string]*metav1.LabelSelector{
		"clientNamespaceSelector":     p.NetworkPolicy.ClientNamespaceSelector,
		"prometheusNamespaceSelector": p.NetworkPolicy.PrometheusNamespaceSelector,
		"prometheusPodSelector":       p.NetworkPolicy.PrometheusPodSelector,
	} {
		if _, err := metav1.LabelSelectorAsSelector(sel); err != nil {
			add(field.Invalid(np.Child(name), sel, err.Error()))
		}
	}
	return errs
}

// httpURL says what is wrong with u as an absolute http(s) URL, or "".
func httpURL(u string) string {
	if strings.ContainsAny(u, " \t\r\n,") {
		return "must be one URL, without spaces or commas"
	}
	parsed, err := url.Parse(u)
	if err != nil {
		return "must be a URL: " + err.Error()
	}
	if (parsed.Scheme != "http" && parsed.Scheme != "https") || parsed.Host == "" {
		return "must be an absolute http:// or https:// URL"
	}
	return ""
}

// validateRedis checks that r says where Redis is, in the way its mode
// needs: one address standalone, a list of addresses (and a master name
// for Sentinel) otherwise.
func validateRedis(path *field.Path, r *Redis) field.ErrorList {
	var errs field.ErrorList
	hostPort := func(p *field.Path, a string) {
		if _, _, err := net.SplitHostPort(a); err != nil {
			errs = append(errs, field.Invalid(p, a, "must be host:port, e.g. redis.llm-user-operator-system.svc:6379"))
		}
	}
	switch r.Mode {
	case RedisStandalone:
		if r.Address == "" {
			errs = append(errs, field.Required(path.Child("address"), "counter.store redis needs the Redis address, host:port"))
		} else {
			hostPort(path.Child("address"), r.Address)
		}
		if len(r.Addresses) > 0 {
			errs = append(errs, field.Forbidden(path.Child("addresses"), "mode standalone reads address; addresses are for mode sentinel or cluster"))
		}
	case RedisSentinel, RedisCluster:
		if r.Address != "" {
			errs = append(errs, field.Forbidden(path.Child("address"), fmt.Sprintf("mode %s reads addresses, a list of host:port", r.Mode)))
		}
		if len(r.Addresses) == 0 {
			what := "some of the cluster's nodes"
			if r.Mode == RedisSentinel {
				what = "the Sentinels"
			}
			errs = append(errs, field.Required(path.Child("addresses"), fmt.Sprintf("mode %s needs the host:port of %s", r.Mode, what)))
		}
		for i, a := range r.Addresses {
			hostPort(path.Child("addresses").Index(i), a)
		}
	default:
		errs = append(errs, field.NotSupported(path.Child("mode"), r.Mode, []RedisMode{RedisStandalone, RedisSentinel, RedisCluster}))
	}
	if r.Mode == RedisSentinel && r.MasterName == "" {
		errs = append(errs, field.Required(path.Child("masterName"), "mode sentinel needs the name of the master the Sentinels watch"))
	}
	if r.Mode != RedisSentinel && r.MasterName != "" {
		errs = append(errs, field.Forbidden(path.Child("masterName"), "masterName is for mode sentinel"))
	}
	secretKey := func(name string, s *corev1.SecretKeySelector, what string) {
		if s == nil {
			return
		}
		if s.Name == "" {
			errs = append(errs, field.Required(path.Child(name, "name"), "the Secret holding "+what))
		}
		if s.Key == "" {
			errs = append(errs, field.Required(path.Child(name, "key"), "the Secret's key holding "+what))
		}
	}
	secretKey("passwordSecret", r.PasswordSecret, "the Redis password")
	secretKey("sentinelPasswordSecret", r.SentinelPasswordSecret, "the Sentinels' password")
	secretKey("caSecret", r.CASecret, "the CA bundle (PEM) Redis's certificate is verified against")
	if r.SentinelPasswordSecret != nil && r.Mode != RedisSentinel {
		errs = append(errs, field.Forbidden(path.Child("sentinelPasswordSecret"), "sentinelPasswordSecret is for mode sentinel"))
	}
	if !r.TLS && r.CASecret != nil {
		errs = append(errs, field.Forbidden(path.Child("caSecret"), "caSecret verifies Redis over TLS: set tls: true"))
	}
	if !r.TLS && r.ClientCertSecret != "" {
		errs = append(errs, field.Forbidden(path.Child("clientCertSecret"), "clientCertSecret is presented over TLS: set tls: true"))
	}
	return errs
}
