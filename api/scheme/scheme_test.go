package scheme_test

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestProxyLinksNoOperator keeps the proxy binary free of the operator's
// code: it gets its scheme here, not from the manager.
func TestProxyLinksNoOperator(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	cmd := exec.Command("go", "list", "-deps", "./cmd/proxy")
	cmd.Dir = filepath.Join(filepath.Dir(file), "..", "..")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		for _, banned := range []string{"controller", "manager", "refresh"} {
			if pkg == "github.com/llm-user-operator/llm-user-operator/internal/"+banned {
				t.Errorf("cmd/proxy links %s", pkg)
			}
		}
	}
}
