package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/llm-user-operator/llm-user-operator/internal/openaiapi"
)

// upstream is one vLLM server.
type upstream struct {
	raw          string
	scheme, host string
	basePath     string
	// models is the last successful listing; guarded by Proxy.refreshMu.
	models []modelInfo
	listed bool
}

// modelInfo is one entry of an upstream's GET /v1/models.
type modelInfo struct {
	ID      string `json:"id"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
	// MaxModelLen is the context length vLLM reports; 0 when the upstream
	// does not say.
	MaxModelLen int64 `json:"max_model_len"`
}

// modelEntry is a model and the upstreams serving it.
type modelEntry struct {
	modelInfo
	upstreams []*upstream
	next      atomic.Uint32
}

// pick spreads requests for the model over its upstreams round-robin.
func (m *modelEntry) pick() *upstream {
	if len(m.upstreams) == 1 {
		return m.upstreams[0]
	}
	return m.upstreams[int(m.next.Add(1)-1)%len(m.upstreams)]
}

// modelTable is an immutable snapshot of what the upstreams serve.
type modelTable struct {
	byID map[string]*modelEntry
	list []*modelEntry // sorted by ID
}

func parseUpstream(raw string) (*upstream, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("proxy: upstream %q is not an http(s) base URL", raw)
	}
	return &upstream{raw: raw, scheme: u.Scheme, host: u.Host, basePath: strings.TrimSuffix(u.Path, "/")}, nil
}

// reloadUpstreams reads the upstreams file again, keeping the upstreams
// (and their listings) it still names. An unreadable file, or a bad line,
// keeps the previous list: a ConfigMap being rewritten must not empty it.
// refreshMu is held.
func (p *Proxy) reloadUpstreams() {
	if p.upstreamsFile == "" {
		return
	}
	data, err := os.ReadFile(p.upstreamsFile)
	if err != nil {
		p.log.Error(err, "Reading the upstreams file failed; keeping the previous upstreams", "file", p.upstreamsFile)
		return
	}
	next := slices.Clone(p.upstreams[:p.static])
	for _, raw := range ParseUpstreams(string(data)) {
		if slices.ContainsFunc(next, func(u *upstream) bool { return u.raw == raw }) {
			continue
		}
		i := slices.IndexFunc(p.upstreams[p.static:], func(u *upstream) bool { return u.raw == raw })
		if i >= 0 {
			next = append(next, p.upstreams[p.static+i])
			continue
		}
		u, err := parseUpstream(raw)
		if err != nil {
			p.log.Error(err, "Ignoring the upstreams file; keeping the previous upstreams", "file", p.upstreamsFile)
			return
		}
		next = append(next, u)
	}
	p.upstreams = next
}

// ParseUpstreams splits a list of upstream URLs given one per line or
// comma-separated, dropping blanks and comments (# to the end of a line).
func ParseUpstreams(s string) []string {
	var out []string
	for line := range strings.SplitSeq(s, "\n") {
		line, _, _ = strings.Cut(line, "#")
		for u := range strings.SplitSeq(line, ",") {
			if u = strings.TrimSpace(u); u != "" {
				out = append(out, u)
			}
		}
	}
	return out
}

// RefreshModels lists every upstream's models once and publishes the union;
// it reports whether every upstream has been listed at least once.
// An upstream that fails keeps its last listing (a request routed to it
// then gets 502, which says more than model_not_found would).
func (p *Proxy) RefreshModels(ctx context.Context) (allListed bool) {
	p.refreshMu.Lock()
	defer p.refreshMu.Unlock()
	p.reloadUpstreams()
	anyListed := false
	allListed = true
	for _, u := range p.upstreams {
		models, err := p.listModels(ctx, u)
		if err != nil {
			p.log.Error(err, "Listing upstream models failed; keeping the last listing", "upstream", u.raw)
		} else {
			u.models, u.listed = models, true
		}
		anyListed = anyListed || u.listed
		allListed = allListed && u.listed
	}
	if !anyListed {
		return false
	}
	t := &modelTable{byID: map[string]*modelEntry{}}
	for _, u := range p.upstreams {
		for _, m := range u.models {
			e := t.byID[m.ID]
			if e == nil {
				e = &modelEntry{modelInfo: m}
				t.byID[m.ID] = e
				t.list = append(t.list, e)
			} else if e.MaxModelLen != m.MaxModelLen {
				// Several upstreams serve the model and a request may go to
				// any: the smallest context bounds it, and one that is
				// unknown leaves it unknown.
				e.MaxModelLen = min(e.MaxModelLen, m.MaxModelLen)
				if m.MaxModelLen <= 0 {
					e.MaxModelLen = 0
				}
			}
			e.upstreams = append(e.upstreams, u)
		}
	}
	slices.SortFunc(t.list, func(a, b *modelEntry) int { return strings.Compare(a.ID, b.ID) })
	p.models.Store(t)
	return allListed
}

func (p *Proxy) listModels(ctx context.Context, u *upstream) ([]modelInfo, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.scheme+"://"+u.host+u.basePath+"/v1/models", nil)
	if err != nil {
		return nil, err
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /v1/models: %s", resp.Status)
	}
	var list struct {
		Data []modelInfo `json:"data"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&list); err != nil {
		return nil, fmt.Errorf("GET /v1/models: %w", err)
	}
	out := list.Data[:0]
	for _, m := range list.Data {
		if m.ID != "" {
			if m.OwnedBy == "" {
				m.OwnedBy = "vllm"
			}
			out = append(out, m)
		}
	}
	return out, nil
}

// serveModels answers GET /v1/models (id == "") and GET /v1/models/{id}
// from the discovered models, showing a user only the models they may use.
func (p *Proxy) serveModels(w http.ResponseWriter, r *http.Request, id string) {
	var user *User
	if !p.disableAuth {
		u, _, ok := p.authenticate(w, r)
		if !ok {
			return
		}
		user = &u
	}
	t := p.models.Load()
	if t == nil {
		openaiapi.WriteError(w, http.StatusServiceUnavailable, openaiapi.TypeServer, openaiapi.CodeUpstreamUnavailable, "", "No upstream has listed its models yet; retry shortly.")
		return
	}
	visible := func(e *modelEntry) bool { return user == nil || modelAllowed(user, e.ID) }
	b := make([]byte, 0, 256)
	if id != "" {
		e := t.byID[id]
		if e == nil || !visible(e) {
			openaiapi.WriteError(w, http.StatusNotFound, openaiapi.TypeInvalidRequest, openaiapi.CodeModelNotFound, "model",
				"The model '"+id+"' does not exist or you do not have access to it.")
			return
		}
		b = appendModel(b, e)
	} else {
		b = append(b, `{"object":"list","data":[`...)
		n := 0
		for _, e := range t.list {
			if !visible(e) {
				continue
			}
			if n > 0 {
				b = append(b, ',')
			}
			b = appendModel(b, e)
			n++
		}
		b = append(b, "]}"...)
	}
	w.Header()["Content-Type"] = []string{"application/json"}
	w.Header()["Content-Length"] = []string{strconv.Itoa(len(b))}
	_, _ = w.Write(b)
}

func appendModel(b []byte, e *modelEntry) []byte {
	b = append(b, `{"id":`...)
	b = openaiapi.AppendJSONString(b, e.ID)
	b = append(b, `,"object":"model","created":`...)
	b = strconv.AppendInt(b, e.Created, 10)
	b = append(b, `,"owned_by":`...)
	b = openaiapi.AppendJSONString(b, e.OwnedBy)
	return append(b, '}')
}
