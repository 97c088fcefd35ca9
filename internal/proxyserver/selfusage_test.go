package proxyserver

import (
	"net"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/openapi"
)

// TestDirectoryViewsForUsage: a user's view carries what GET /v1/usage
// reports beside the counters: whether refresh is allowed (the API's
// default is true) and the quota's currency.
func TestDirectoryViewsForUsage(t *testing.T) {
	d := NewDirectory(nil)
	d.setQuota(&llmv1alpha1.LLMQuota{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "q", UID: "uid-q"}, Spec: llmv1alpha1.LLMQuotaSpec{
		Pricing: &llmv1alpha1.Pricing{Currency: "EUR", Models: []llmv1alpha1.ModelPrice{{Model: "*", Input: "1", Output: "2"}}},
	}})
	for _, tc := range []struct {
		name  string
		allow *bool
		want  bool
	}{{"default", nil, true}, {"allowed", ptr.To(true), true}, {"refused", ptr.To(false), false}} {
		d.setUser(&llmv1alpha1.LLMUser{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: tc.name, UID: "uid"},
			Spec: llmv1alpha1.LLMUserSpec{QuotaRef: llmv1alpha1.QuotaReference{Name: "q"}, Token: llmv1alpha1.TokenSpec{AllowRefresh: tc.allow}}})
		u, _ := d.User("ns", tc.name)
		if u.AllowRefresh != tc.want {
			t.Errorf("%s: AllowRefresh %v, want %v", tc.name, u.AllowRefresh, tc.want)
		}
		if u.Pricing == nil || u.Pricing.Currency != "EUR" {
			t.Errorf("%s: pricing %+v, want the quota's EUR", tc.name, u.Pricing)
		}
	}
}

// TestRefreshForwardFailure: when the operator cannot be reached, the
// proxy's forwarded /auth/refresh answers the documented 502 in OpenAI's
// shape.
func TestRefreshForwardFailure(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close() // nothing listens there any more
	h, err := refreshHandler("http://"+addr+"/auth/refresh", logr.Discard())
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, "/auth/refresh", nil)
	req.Header.Set("Authorization", "Bearer x")
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusBadGateway {
		t.Fatalf("status %d, want 502: %s", rec.Code, rec.Body)
	}
	doc, err := openapi.Load()
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(http.MethodPost, "/auth/refresh", openapi.Response{Status: rec.Code, Header: rec.Header(), Body: rec.Body.Bytes()}); err != nil {
		t.Error(err)
	}
}
