package quota

import "testing"

func TestGlobMatch(t *testing.T) {
	for _, tc := range []struct {
		pattern, name string
		want          bool
	}{
		{"*", "meta-llama/Llama-3.1-8B", true},
		{"meta-llama/*", "meta-llama/Llama-3.1-8B", true},
		{"meta-llama/*", "meta-llama", false},
		{"*/Llama-3*", "meta-llama/Llama-3.1-8B", true},
		{"*-8B", "meta-llama/Llama-3.1-8B", true},
		{"*-8B", "meta-llama/Llama-3.1-70B", false},
		{"Llama-3.?-8B", "Llama-3.1-8B", true},
		{"Llama-3.?-8B", "Llama-3.10-8B", false},
		{"a*b*c", "aXXbYYc", true},
		{"a*b*c", "aXXbYY", false},
		{"", "", true},
		{"", "x", false},
		{"**", "", true},
		{"?", "é", true},
		{"exact", "exact", true},
		{"exact", "exactly", false},
	} {
		if got := GlobMatch(tc.pattern, tc.name); got != tc.want {
			t.Errorf("GlobMatch(%q, %q) = %v, want %v", tc.pattern, tc.name, got, tc.want)
		}
	}
}
