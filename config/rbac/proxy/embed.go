// Package proxyrbac embeds the proxy's RBAC rules that controller-gen
// generates into role.yaml from the markers in internal/proxyserver, so that
// the operator grants the proxy exactly what its code declares it needs:
// the rules cannot drift from the code, nor from the manifests.
package proxyrbac

import _ "embed" // the generated rules

// RoleYAML is role.yaml as `make manifests` wrote it.
//
//go:embed role.yaml
var RoleYAML []byte
