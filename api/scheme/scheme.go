// Package scheme builds the [runtime.Scheme] every binary of the project
// uses: the built-in Kubernetes types and llm.userops.dev/v1alpha1. It sits
// beside the API types, so a binary that needs only the types (the proxy)
// links neither the controllers nor the operator's manager.
package scheme

import (
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
)

// New returns a scheme with the built-in and llm.userops.dev types.
func New() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(llmv1alpha1.AddToScheme(s))
	return s
}
