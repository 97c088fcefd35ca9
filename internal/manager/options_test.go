package manager

import (
	"flag"
	"strings"
	"testing"
	"time"
)

// TestFlags: the command line sets every option (those of the configuration
// file through its override flags), unset flags keep the defaults, and what
// depends on the namespace is derived from it.
func TestFlags(t *testing.T) {
	t.Setenv("POD_NAMESPACE", "ops")
	t.Setenv("OPERATOR_IMAGE", "example.com/llm-user-operator:v1")
	o := NewOptions()
	fs := flag.NewFlagSet("manager", flag.ContinueOnError)
	o.BindFlags(fs)
	if err := fs.Parse([]string{"--leader-elect", "--key-rotation-period=48h", "--audience=aud", "--max-concurrent-reconciles=3", "--kube-api-qps=50.5", "--kube-api-burst=70", "--proxy-upstreams=http://vllm:8000"}); err != nil {
		t.Fatal(err)
	}
	if err := o.loadConfig(); err != nil {
		t.Fatal(err)
	}
	o.complete()
	if !o.LeaderElection || o.KeyRotationPeriod != 48*time.Hour || o.Audience != "aud" || o.Namespace != "ops" ||
		o.RefreshAddr != ":8082" || o.SigningKeysSecret != "llm-user-operator-signing-keys" ||
		o.MaxConcurrentReconciles != 3 || o.KubeAPIQPS != 50.5 || o.KubeAPIBurst != 70 {
		t.Errorf("options %+v", o)
	}
	if o.Issuer != "https://llm-user-operator.ops.svc" || o.ProxyBaseURL != "http://llm-user-proxy.ops.svc:8000/v1" {
		t.Errorf("derived issuer %q, base URL %q", o.Issuer, o.ProxyBaseURL)
	}
	if err := o.Validate(); err != nil {
		t.Errorf("defaults do not validate: %v", err)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		set  func(*Options)
		want string
	}{
		{"namespace", func(o *Options) { o.Namespace = "Ops_1" },
			`--namespace "Ops_1" is not a namespace name: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`},
		{"secret name", func(o *Options) { o.SigningKeysSecret = "Keys" },
			`--signing-keys-secret "Keys" is not an object name: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')`},
		{"rotation", func(o *Options) { o.KeyRotationPeriod = time.Minute },
			"--key-rotation-period 1m0s is too short: a key must outlive the token renewals it serves; use 1h or more, such as 720h"},
		{"audience", func(o *Options) { o.Audience = "" },
			"--audience is empty: set the audience the proxy checks, such as llm-user-proxy"},
		{"issuer", func(o *Options) { o.Issuer = "operator" },
			`--issuer "operator" is not an absolute URL, such as https://llm-user-operator.ops.svc`},
		{"reconciles", func(o *Options) { o.MaxConcurrentReconciles = -1 },
			"--max-concurrent-reconciles -1: set 1 or more"},
		{"qps", func(o *Options) { o.KubeAPIQPS = -1 },
			"--kube-api-qps -1 and --kube-api-burst 1000 must both be positive, such as 500 and 1000"},
		{"base URL", func(o *Options) { o.ProxyBaseURL = "proxy:8000/v1" },
			`--proxy-base-url "proxy:8000/v1" is not an http(s) URL, such as http://llm-user-proxy.ops.svc:8000/v1`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := NewOptions()
			o.Namespace = "ops"
			o.complete()
			tc.set(&o)
			err := o.Validate()
			if err == nil || err.Error() != tc.want {
				t.Errorf("got  %v\nwant %s", err, tc.want)
			}
		})
	}
	o := NewOptions()
	o.complete()
	o.Audience, o.KeyRotationPeriod = "", time.Second
	if err := o.Validate(); err == nil || len(strings.Split(err.Error(), "\n")) != 2 {
		t.Errorf("every problem is reported at once: %v", err)
	}
}
