// Package v1alpha1 contains the llm.userops.dev/v1alpha1 API: LLMQuota, a named
// usage policy, and LLMUser, one identity allowed to call the models behind the proxy.
//
// +kubebuilder:object:generate=true
// +groupName=llm.userops.dev
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the group and version used to register these objects.
	GroupVersion = schema.GroupVersion{Group: "llm.userops.dev", Version: "v1alpha1"}

	// SchemeBuilder adds the types of this group-version to a scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds the types in this group-version to the given scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
