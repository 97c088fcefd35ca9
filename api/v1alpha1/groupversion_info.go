// Package v1alpha1 contains the llm.userops.dev/v1alpha1 API: LLMQuota, a named
// usage policy, and LLMUser, one identity allowed to call the models behind the proxy.
//
// +kubebuilder:object:generate=true
// +groupName=llm.userops.dev
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is the group and version used to register these objects.
	GroupVersion = schema.GroupVersion{Group: "llm.userops.dev", Version: "v1alpha1"}

	// SchemeBuilder adds the types of this group-version to a scheme. The
	// package depends on apimachinery only, so it is cheap to import.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

	// AddToScheme adds the types in this group-version to the given scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion, &LLMUser{}, &LLMUserList{}, &LLMQuota{}, &LLMQuotaList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
