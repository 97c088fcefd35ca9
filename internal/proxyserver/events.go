package proxyserver

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/events"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/proxy"
)

// dryRunEvents records an Event on an LLMUser when its DryRun quota would
// have refused or shortened one of its requests: once per user and reason
// per noticeEvery, so that a busy user does not flood the API server (the
// metric llm_proxy_rejections_total{reason="dry_run_..."} counts them all).
type dryRunEvents struct {
	broadcaster events.EventBroadcaster
	recorder    events.EventRecorder

	mu   sync.Mutex
	last map[noticeKey]time.Time
}

type noticeKey struct {
	uid    string
	reason string
}

const noticeEvery = time.Hour

func newDryRunEvents(cfg *rest.Config, scheme *runtime.Scheme) (*dryRunEvents, error) {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("events client: %w", err)
	}
	b := events.NewBroadcaster(&events.EventSinkImpl{Interface: cs.EventsV1()})
	return &dryRunEvents{broadcaster: b, recorder: b.NewRecorder(scheme, "llm-user-proxy"), last: map[noticeKey]time.Time{}}, nil
}

// run sends Events until ctx is done.
func (e *dryRunEvents) run(ctx context.Context) {
	e.broadcaster.StartRecordingToSink(ctx.Done())
	<-ctx.Done()
	e.broadcaster.Shutdown()
}

// Notify implements [proxy.DryRunNotifier].
func (e *dryRunEvents) Notify(u *proxy.User, reason, message string) {
	k := noticeKey{u.UID, reason}
	now := time.Now()
	e.mu.Lock()
	if t, ok := e.last[k]; ok && now.Sub(t) < noticeEvery {
		e.mu.Unlock()
		return
	}
	if len(e.last) > 100_000 {
		clear(e.last) // bounded: at worst some notices repeat sooner
	}
	e.last[k] = now
	e.mu.Unlock()
	obj := &llmv1alpha1.LLMUser{ObjectMeta: metav1.ObjectMeta{Namespace: u.Namespace, Name: u.Name, UID: types.UID(u.UID)}}
	e.recorder.Eventf(obj, nil, corev1.EventTypeWarning, "DryRun"+reasonTitle(reason), "Admit",
		"LLMQuota %s is DryRun, so the request went ahead: %s", u.QuotaName, message)
}

// reasonTitle spells a rejection reason as an Event reason: insufficient_quota
// becomes InsufficientQuota.
func reasonTitle(r string) string {
	out := make([]byte, 0, len(r))
	up := true
	for i := 0; i < len(r); i++ {
		c := r[i]
		switch {
		case c == '_':
			up = true
		case up && c >= 'a' && c <= 'z':
			out = append(out, c-'a'+'A')
			up = false
		default:
			out = append(out, c)
			up = false
		}
	}
	return string(out)
}
