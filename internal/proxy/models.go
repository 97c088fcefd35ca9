package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
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

// RefreshModels lists every upstream's models once and publishes the union;
// it reports whether every upstream has been listed at least once.
// An upstream that fails keeps its last listing (a request routed to it
// then gets 502, which says more than model_not_found would).
func (p *Proxy) RefreshModels(ctx context.Context) (allListed bool) {
	p.refreshMu.Lock()
	defer p.refreshMu.Unlock()
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
		u, ok := p.authenticate(w, r)
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
