//go:build tools

// Package tools keeps the Prometheus Operator's API types in this module's
// go.mod, so that controller-gen can generate their CRDs from them.
package tools

import _ "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
