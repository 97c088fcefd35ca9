// Package proxy is the OpenAI-compatible HTTP front of vLLM that gives every
// request a user, a quota and an account. Each API request goes through one
// handler chain:
//
//		authenticate -> authorize model -> admit quota -> forward -> account
//
//	  - authenticate: a bearer JWT issued by the operator, verified by a
//	    [TokenVerifier] and checked against the user's current state in the
//	    [Directory] (deleted, recreated, suspended, or a newer token generation
//	    all revoke it);
//	  - authorize model: the model must match the quota's allowlist and the
//	    user's narrowing (globs where '*' also matches '/');
//	  - admit: the body is read (bounded), the output cap enforced (a request
//	    above the cap is refused, never silently clamped; a request without one
//	    gets the cap injected), and an estimate reserved in every budget with a
//	    [quota.Counter], or refused with 429 before any byte goes upstream;
//	  - forward: the body goes to the upstream serving the model, unchanged
//	    unless a field had to be injected, without the user's token;
//	    streams are relayed event by event, flushed as they arrive;
//	  - account: the reservation is settled to the usage the upstream reported
//	    (forcing stream_options.include_usage on streams, and hiding the extra
//	    usage chunk from clients that did not ask for it), the charge goes to
//	    the [UsageSink] and the metrics.
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
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"

	"github.com/llm-user-operator/llm-user-operator/internal/metrics"
	"github.com/llm-user-operator/llm-user-operator/internal/openaiapi"
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
	Suspended       bool
	// QuotaFound is false when the referenced quota does not exist; every
	// request is then refused with 403.
	QuotaFound bool
	QuotaName  string
	// Models is the quota's allowlist of globs (empty allows every model).
	Models []string
	// UserModels narrows Models for this user (empty narrows nothing).
	UserModels []string
	// MaxTokensPerRequest caps the output tokens of one request (nil: no cap).
	MaxTokensPerRequest *int64
	// Budgets are the user's own budget and/or the Shared pool, ready for
	// [quota.Counter.Reserve]. None means unlimited.
	Budgets []quota.Budget
}

// UsageSink receives every non-zero charge after a request settles; batched
// write-back to status lives behind it. Charge must not block.
type UsageSink interface{ Charge(c Charge) }

// Charge is what one request cost one user.
type Charge struct {
	Namespace, User, Quota string
	// Shared is true when the charge also went to the quota's shared pool.
	Shared bool
	Model  string
	Amount quota.Amount
	At     time.Time
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
	// GET <base>/v1/models. At least one is required.
	Upstreams []string
	// ModelRefreshInterval is how often upstream models are re-listed
	// (default 30s).
	ModelRefreshInterval time.Duration
	// MaxRequestBody bounds request bodies (default 10 MiB); larger ones
	// get 413.
	MaxRequestBody int64
	// DefaultMaxTokens is the output estimate reserved for a request that
	// sets no output cap when the user has no per-request cap either
	// (default 256). The reservation is settled to the real usage anyway.
	DefaultMaxTokens int64
	Timeouts         Timeouts
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

	upstreams       []*upstream
	refreshInterval time.Duration
	maxBody         int64
	defaultMax      int64
	streamIdle      time.Duration
	disableAuth     bool
	disableQuota    bool

	models    atomic.Pointer[modelTable]
	refreshMu sync.Mutex
	handler   http.Handler
}

// New validates opts and builds a proxy. Call [Proxy.Start] to discover
// models; until the first discovery answers, requests get 503.
func New(opts Options) (*Proxy, error) {
	if len(opts.Upstreams) == 0 {
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
		defaultMax:      opts.DefaultMaxTokens,
		streamIdle:      opts.Timeouts.StreamIdle,
		disableAuth:     opts.DisableAuth,
		disableQuota:    opts.DisableQuota || opts.DisableAuth,
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
	if p.defaultMax <= 0 {
		p.defaultMax = 256
	}
	if p.streamIdle <= 0 {
		p.streamIdle = 2 * time.Minute
	}
	if p.transport == nil {
		p.transport = NewTransport(opts.Timeouts)
	}
	p.client = &http.Client{Transport: p.transport, Timeout: 10 * time.Second}
	for _, raw := range opts.Upstreams {
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("proxy: upstream %q is not an http(s) base URL", raw)
		}
		p.upstreams = append(p.upstreams, &upstream{raw: raw, scheme: u.Scheme, host: u.Host, basePath: strings.TrimSuffix(u.Path, "/")})
	}
	p.handler = http.HandlerFunc(p.serveHTTP)
	return p, nil
}

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

func (p *Proxy) serveHTTP(w http.ResponseWriter, r *http.Request) {
	var ep *endpoint
	switch r.URL.Path {
	case "/v1/chat/completions":
		ep = epChat
	case "/v1/completions":
		ep = epCompletions
	case "/v1/embeddings":
		ep = epEmbeddings
	case "/v1/responses":
		ep = epResponses
	case "/tokenize":
		ep = epTokenize
	case "/detokenize":
		ep = epDetokenize
	case "/v1/models":
		if !methodIs(w, r, http.MethodGet) {
			return
		}
		p.serveModels(w, r, "")
		return
	default:
		if id, ok := strings.CutPrefix(r.URL.Path, "/v1/models/"); ok && id != "" {
			if !methodIs(w, r, http.MethodGet) {
				return
			}
			p.serveModels(w, r, id)
			return
		}
		openaiapi.WriteError(w, http.StatusNotFound, openaiapi.TypeInvalidRequest, openaiapi.CodeNotFound, "",
			"Unknown path "+r.URL.Path+". This proxy serves /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses, /v1/models, /tokenize and /detokenize.")
		return
	}
	if !methodIs(w, r, http.MethodPost) {
		return
	}
	p.serveAPI(w, r, ep)
}

func methodIs(w http.ResponseWriter, r *http.Request, m string) bool {
	if r.Method == m {
		return true
	}
	w.Header()["Allow"] = []string{m}
	openaiapi.WriteError(w, http.StatusMethodNotAllowed, openaiapi.TypeInvalidRequest, openaiapi.CodeMethodNotAllowed, "",
		r.Method+" is not allowed on "+r.URL.Path+"; use "+m+".")
	return false
}
