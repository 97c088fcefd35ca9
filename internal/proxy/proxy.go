// Package proxy is the OpenAI-compatible HTTP front of vLLM that gives every
// request a user, a quota and an account. Each API request goes through the
// named phases of one handler (serve.go):
//
//		authenticate -> enter -> read body -> parse -> authorize model -> admit -> forward (relay, settle)
//
//	  - authenticate: a bearer JWT issued by the operator, verified by a
//	    [TokenVerifier] and checked against the user's current state in the
//	    [Directory] (deleted, recreated, suspended, or a newer token generation
//	    all revoke it);
//	  - enter: the user's limit of requests in flight, before a body takes memory;
//	  - read body: bounded in size, in time and in the memory all bodies share;
//	  - parse: the few members the proxy needs, read exactly as vLLM reads them;
//	  - authorize model: the model must match the quota's allowlist and the
//	    user's narrowing (globs where '*' also matches '/');
//	  - admit: the request's output is bounded (max tokens × sequences, or a
//	    cap the proxy writes when the request has none), reserved in every
//	    budget with a [quota.Counter], or refused with 400/429 before any
//	    byte goes upstream (admit.go states the invariant);
//	  - forward: the body goes to the upstream serving the model, changed only
//	    where a cap or stream usage had to be set, without the user's token;
//	    streams are relayed event by event, flushed as they arrive, under a
//	    write deadline;
//	  - settle: the reservation is swapped for what the upstream reported
//	    (forcing stream usage, and hiding it again from clients that did not
//	    ask for it), and the charge goes to the [UsageSink] and the metrics.
//
// GET /v1/usage (selfusage.go) tells the caller their own usage, limits and
// what is left, from the same counters admission reads.
//
// The package knows nothing of Kubernetes: users come from a [Directory],
// which production backs with informer caches and tests with a map.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"

	"github.com/llm-user-operator/llm-user-operator/internal/metrics"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
	"github.com/llm-user-operator/llm-user-operator/internal/token"
)

// TokenVerifier verifies a raw bearer token; *token.Verifier implements it.
// Errors should be *token.Error so the proxy can say why a token failed.
type TokenVerifier interface {
	Verify(raw string) (*token.Claims, error)
}

// Directory answers who a token's subject is, from the operator's objects
// (an informer cache in production, a map in tests). It is called on every
// request and must be fast and safe for concurrent use.
type Directory interface {
	// User returns the user by namespace/name, or ok=false if unknown.
	User(namespace, name string) (User, bool)
	// Ready reports whether the caches have synced (for /readyz).
	Ready() bool
}

// User is everything the proxy needs to know about an LLMUser and its quota.
type User struct {
	Namespace, Name, UID string
	// TokenGeneration revokes tokens issued with a lower generation.
	TokenGeneration int64
	// AllowRefresh is the user's spec.token.allowRefresh: whether the
	// operator's POST /auth/refresh exchanges their token (GET /v1/usage
	// tells them).
	AllowRefresh bool
	Suspended    bool
	// QuotaFound is false when the referenced quota does not exist; every
	// request is then refused with 403.
	QuotaFound bool
	QuotaName  string
	QuotaUID   string
	// Models is the quota's allowlist of globs (empty allows every model).
	Models []string
	// UserModels narrows Models for this user (empty narrows nothing).
	UserModels []string
	// MaxTokensPerRequest caps the output tokens of one request, all its
	// sequences together (nil: no cap).
	MaxTokensPerRequest *int64
	// MaxConcurrentRequests caps the user's requests in flight (nil: no cap).
	MaxConcurrentRequests *int64
	// DryRun is the quota's enforcement DryRun: nothing is refused or
	// shortened, what would have been is counted and reported.
	DryRun bool
	// Budgets are the user's own budget and/or the Shared pool, ready for
	// [quota.Counter.Reserve]. None means unlimited.
	Budgets []quota.Budget
	// Pricing is the quota's prices (nil: every model is free).
	Pricing *quota.Pricing
	// Priority is the quota's spec.priority, written into every request that
	// takes one (nil: none is sent). Whatever it is, the client's own
	// priority is dropped.
	Priority *int32
	// CacheSalt is written into every request as vLLM's cache_salt, which
	// keeps the prefix cache apart per user (or per quota): see [CacheSalt].
	// Empty sends none; whatever it is, the client's own is dropped.
	CacheSalt string
	// FairnessID is the X-Gateway-Inference-Fairness-Id the proxy sends
	// upstream, for the fair queuing of a Gateway API Inference Extension
	// (llm-d) scheduler: see [FairnessID]. A client's own is dropped.
	FairnessID []string
	// FairShareWeight is the quota's spec.fairShareWeight: its flow's share
	// of a busy upstream in the fair queue (0 counts as 1).
	FairShareWeight int32
}

// concurrencyKey names the user's in-flight counter.
func (u *User) concurrencyKey() string { return quota.UserKey(u.Namespace, u.Name, u.UID) }

// pool reports whether the user draws on a Shared quota's pool.
func (u *User) pool() bool {
	for _, b := range u.Budgets {
		if b.Kind == quota.BudgetPool {
			return true
		}
	}
	return false
}

// UsageSink receives every non-zero charge after a request settles; batched
// write-back to status lives behind it. Charge must not block.
type UsageSink interface{ Charge(c quota.Charge) }

// DryRunNotifier hears of what a DryRun quota would have refused or
// shortened, for Events; reason is a metrics rejection reason. Notify must
// not block.
type DryRunNotifier interface {
	Notify(u *User, reason, message string)
}

// Timeouts bound the proxy's waits on upstreams. Zero fields take defaults.
type Timeouts struct {
	// Dial bounds connecting to an upstream (default 5s). Exceeding it is a 502.
	Dial time.Duration
	// ResponseHeader bounds the wait for response headers (default 10m). A
	// non-streaming completion sends its headers only when generation is
	// done, so this must exceed the longest generation allowed: 8k tokens at
	// 15 tokens/s is about 9 minutes. Exceeding it is a 504.
	ResponseHeader time.Duration
	// StreamIdle is the longest gap allowed between two reads of a streamed
	// response body (default 2m); past it the stream is cut.
	StreamIdle time.Duration
	// BodyRead bounds reading a request body (default 60s): a client that
	// trickles its body gets 408 and its connection closed.
	BodyRead time.Duration
	// Write is the longest a client may take to accept one write (default
	// 60s): a client that stops reading is cut off, its request charged
	// what it consumed. Negative disables it.
	Write time.Duration
}

// Options configures [New].
type Options struct {
	// Verifier checks bearer tokens. Required unless DisableAuth.
	Verifier TokenVerifier
	// Directory resolves users. Required unless DisableAuth.
	Directory Directory
	// Counter keeps the budgets. Required unless DisableQuota or DisableAuth.
	Counter quota.Counter
	// Sink receives charges; nil drops them.
	Sink UsageSink
	// Upstreams are the base URLs of the vLLM servers, e.g.
	// "http://vllm-llama:8000". Their models are discovered from
	// GET <base>/v1/models.
	Upstreams []string
	// UpstreamsFile names a file with more base URLs, one per line, read
	// again at every model refresh. At least one upstream is required,
	// from either.
	UpstreamsFile string
	// ModelRefreshInterval is how often upstream models are re-listed
	// (default 30s).
	ModelRefreshInterval time.Duration
	// MaxRequestBody bounds request bodies (default 10 MiB); larger ones
	// get 413.
	MaxRequestBody int64
	// MaxBodyMemory bounds the memory all request bodies in flight hold
	// together (default 256 MiB); a body that would go past it gets 503.
	MaxBodyMemory int64
	// MaxBodyMemoryPerUser bounds what one user's bodies hold (default an
	// eighth of MaxBodyMemory, at least one body of MaxRequestBody).
	MaxBodyMemoryPerUser int64
	// DefaultMaxTokens is the cap per sequence the proxy writes into a
	// request that sets none, when the model's context length is unknown
	// (its upstream does not report max_model_len) and the quota has no
	// maxTokensPerRequest (default 4096).
	DefaultMaxTokens int64
	// MediaItemTokens bounds the input tokens of one image, audio or video
	// part of a prompt, for admission (the charge is what vLLM reports).
	// vLLM states no bound of its own (it depends on the model's
	// processor), so the default, 0, is the model's context length, which
	// no prompt can exceed.
	MediaItemTokens int64
	// InferenceObjectivePrefix, when set, names the request's tier for a
	// Gateway API Inference Extension scheduler behind the proxy: the
	// X-Gateway-Inference-Objective header is the prefix and the tier (the
	// quota's spec.priority, 0 without one, or "overflow" past a soft
	// limit). A client's own copy is never forwarded.
	InferenceObjectivePrefix string
	// KVTransferUpstreams are the upstreams (as in Upstreams) that receive
	// the kv_transfer_params clients send; every other upstream gets none.
	KVTransferUpstreams []string
	// DisableContinuousUsage stops asking vLLM for usage on every streamed
	// chunk; a stream cut short is then charged by the chunks it had.
	DisableContinuousUsage bool
	// FairQueue gates each upstream and orders the requests waiting for it
	// (see fairq.go). The zero value gates nothing.
	FairQueue FairQueue
	// DryRun, when set, hears of DryRun quotas' would-be refusals.
	DryRun   DryRunNotifier
	Timeouts Timeouts
	// Transport overrides the shared upstream transport (tests).
	Transport http.RoundTripper
	// Now is the clock (default time.Now).
	Now     func() time.Time
	Metrics *metrics.Metrics
	Logger  logr.Logger
	// DisableAuth forwards every request without identity, model checks or
	// quota: one arm of the overhead benchmark, never for production.
	DisableAuth bool
	// DisableQuota authenticates and authorizes but neither caps, reserves
	// nor settles; usage is still read, charged to the Sink and counted.
	DisableQuota bool
}

// Proxy is the request path. Create it with [New].
type Proxy struct {
	verifier  TokenVerifier
	dir       Directory
	counter   quota.Counter
	sink      UsageSink
	metrics   *metrics.Metrics
	log       logr.Logger
	now       func() time.Time
	transport http.RoundTripper
	client    *http.Client // model discovery

	// upstreams are the static ones and then those of upstreamsFile;
	// guarded by refreshMu.
	upstreams       []*upstream
	static          int
	upstreamsFile   string
	refreshInterval time.Duration
	maxBody         int64
	bodyMem         bodyMemory
	defaultMax      int64
	mediaItem       int64
	kvAllowed       map[string]bool
	streamIdle      time.Duration
	bodyTimeout     time.Duration
	writeTimeout    time.Duration
	disableAuth     bool
	disableQuota    bool

	disableContinuousUsage bool
	dryRunNotifier         DryRunNotifier

	ids   requestIDs
	gates gates
	fair  *fairQueues
	// objectivePrefix names the tiers' InferenceObjectives ("": none sent).
	objectivePrefix string
	unsettled       unsettled

	// stop is canceled by CutRequests: the context of the upstream
	// requests that outlive their client.
	stop      context.Context
	stopNow   context.CancelFunc
	models    atomic.Pointer[modelTable]
	refreshMu sync.Mutex
	handler   http.Handler
}

// New validates opts and builds a proxy. Call [Proxy.Start] to discover
// models; until the first discovery answers, requests get 503.
func New(opts Options) (*Proxy, error) {
	if len(opts.Upstreams) == 0 && opts.UpstreamsFile == "" {
		return nil, errors.New("proxy: no upstreams")
	}
	if !opts.DisableAuth {
		if opts.Verifier == nil || opts.Directory == nil {
			return nil, errors.New("proxy: Verifier and Directory are required unless DisableAuth")
		}
		if opts.Counter == nil && !opts.DisableQuota {
			return nil, errors.New("proxy: Counter is required unless DisableQuota")
		}
	}
	p := &Proxy{
		verifier:        opts.Verifier,
		dir:             opts.Directory,
		counter:         opts.Counter,
		sink:            opts.Sink,
		metrics:         opts.Metrics,
		log:             opts.Logger,
		now:             opts.Now,
		transport:       opts.Transport,
		refreshInterval: opts.ModelRefreshInterval,
		maxBody:         opts.MaxRequestBody,
		bodyMem:         bodyMemory{all: memBudget{limit: opts.MaxBodyMemory}, perUser: opts.MaxBodyMemoryPerUser},
		defaultMax:      opts.DefaultMaxTokens,
		mediaItem:       opts.MediaItemTokens,
		streamIdle:      opts.Timeouts.StreamIdle,
		bodyTimeout:     opts.Timeouts.BodyRead,
		writeTimeout:    opts.Timeouts.Write,
		disableAuth:     opts.DisableAuth,
		disableQuota:    opts.DisableQuota || opts.DisableAuth,

		disableContinuousUsage: opts.DisableContinuousUsage,
		dryRunNotifier:         opts.DryRun,
		ids:                    newRequestIDs(),
	}
	if p.now == nil {
		p.now = time.Now
	}
	if p.refreshInterval <= 0 {
		p.refreshInterval = 30 * time.Second
	}
	if p.maxBody <= 0 {
		p.maxBody = 10 << 20
	}
	if p.bodyMem.all.limit <= 0 {
		p.bodyMem.all.limit = 256 << 20
	}
	if p.bodyMem.perUser <= 0 {
		p.bodyMem.perUser = max(p.bodyMem.all.limit/8, MinBodyMemory(p.maxBody))
	}
	for _, l := range []int64{p.bodyMem.all.limit, p.bodyMem.perUser} {
		if l < MinBodyMemory(p.maxBody) {
			return nil, fmt.Errorf("proxy: MaxBodyMemory (%d) and MaxBodyMemoryPerUser (%d) must be at least %d: a body of MaxRequestBody (%d) and its edited copy",
				p.bodyMem.all.limit, p.bodyMem.perUser, MinBodyMemory(p.maxBody), p.maxBody)
		}
	}
	if p.defaultMax <= 0 {
		p.defaultMax = 4096
	}
	if p.bodyTimeout == 0 {
		p.bodyTimeout = time.Minute
	}
	if p.writeTimeout == 0 {
		p.writeTimeout = time.Minute
	}
	if p.streamIdle <= 0 {
		p.streamIdle = 2 * time.Minute
	}
	if p.transport == nil {
		p.transport = NewTransport(opts.Timeouts)
	}
	p.client = &http.Client{Transport: p.transport, Timeout: 10 * time.Second}
	for _, raw := range opts.Upstreams {
		u, err := parseUpstream(raw)
		if err != nil {
			return nil, err
		}
		p.upstreams = append(p.upstreams, u)
	}
	p.static, p.upstreamsFile = len(p.upstreams), opts.UpstreamsFile
	p.objectivePrefix = opts.InferenceObjectivePrefix
	for _, raw := range opts.KVTransferUpstreams {
		if p.kvAllowed == nil {
			p.kvAllowed = map[string]bool{}
		}
		p.kvAllowed[raw] = true
	}
	if fq := opts.FairQueue; fq.MaxInFlight > 0 || len(fq.PerUpstream) > 0 {
		if fq.MaxInFlight < 0 || fq.QueueTimeout < 0 || fq.MaxQueued < 0 || fq.MaxQueuedPerFlow < 0 {
			return nil, errors.New("proxy: FairQueue's limits must not be negative")
		}
		p.fair = &fairQueues{cfg: fq, metrics: p.metrics}
	}
	p.stop, p.stopNow = context.WithCancel(context.Background())
	p.handler = p.routes()
	return p, nil
}

// CutRequests ends the upstream requests that outlive their client (a
// non-streamed answer whose client left is read to its usage): a server
// shutting down calls it once its grace is over, and each is then charged
// by the settle rule.
func (p *Proxy) CutRequests() { p.stopNow() }

// detached is a request's context without the request's cancellation: its
// values stay, and it ends when the proxy cuts its requests instead of when
// the client leaves.
type detached struct {
	context.Context // the request's, for values
	stop            context.Context
}

func (d detached) Deadline() (time.Time, bool) { return d.stop.Deadline() }
func (d detached) Done() <-chan struct{}       { return d.stop.Done() }
func (d detached) Err() error                  { return d.stop.Err() }

// NewTransport is the shared upstream transport, tuned for a few upstreams
// taking many concurrent long requests: plenty of idle keep-alive
// connections per host, HTTP/1.1 (what vLLM serves), no transparent gzip (it
// would hide usage from the proxy and cost CPU for nothing on a LAN), and an
// idle timeout under uvicorn's 5s keep-alive so a connection the upstream is
// closing is not reused.
func NewTransport(t Timeouts) *http.Transport {
	dial := t.Dial
	if dial <= 0 {
		dial = 5 * time.Second
	}
	header := t.ResponseHeader
	if header <= 0 {
		header = 10 * time.Minute
	}
	return &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: dial, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     false,
		MaxIdleConns:          0,
		MaxIdleConnsPerHost:   1024,
		IdleConnTimeout:       4 * time.Second,
		TLSHandshakeTimeout:   dial,
		ResponseHeaderTimeout: header,
		ExpectContinueTimeout: 0,
		DisableCompression:    true,
		WriteBufferSize:       32 << 10,
		ReadBufferSize:        32 << 10,
	}
}

// Handler serves the OpenAI-compatible API.
func (p *Proxy) Handler() http.Handler { return p.handler }

// Ready reports whether the Directory has synced and at least one upstream
// has listed its models: until then the proxy can route nothing.
func (p *Proxy) Ready() bool {
	if !p.disableAuth && !p.dir.Ready() {
		return false
	}
	return p.models.Load() != nil
}

// Start discovers the upstreams' models now and every ModelRefreshInterval
// until ctx is done. It blocks, like a controller-runtime Runnable.
func (p *Proxy) Start(ctx context.Context) error {
	if p.fair != nil && p.fair.cfg.Shared != nil {
		go p.fair.syncShared(ctx)
	}
	for {
		wait := p.refreshInterval
		if !p.RefreshModels(ctx) {
			// An upstream never listed yet (still starting, as vLLM does for
			// minutes while it loads weights): ask again soon, not in 30s.
			wait = min(wait, time.Second)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// NeedLeaderElection is false: every proxy replica serves traffic.
func (p *Proxy) NeedLeaderElection() bool { return false }
