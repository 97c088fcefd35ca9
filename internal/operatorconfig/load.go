package operatorconfig

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// Parse decodes a configuration file. Unknown fields are errors, so a
// misspelt key is reported rather than silently ignored.
func Parse(data []byte) (*OperatorConfig, error) {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, err
	}
	c := &OperatorConfig{}
	// sigs.k8s.io/json names the full path of an unknown field (proxy.replica),
	// where encoding/json names only its last element.
	strict, err := sigsjson.UnmarshalStrict(js, c, sigsjson.DisallowUnknownFields)
	if err != nil {
		return nil, err
	}
	if len(strict) > 0 {
		return nil, errors.Join(strict...)
	}
	return c, nil
}

// Read decodes the file at path.
func Read(path string) (*OperatorConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Flags are --config and the flags that override the file, for local runs.
// Only flags given on the command line override it.
type Flags struct {
	fs                                         *flag.FlagSet
	path                                       string
	issuer, audience, baseURL, upstreams, name string
	keyRotation                                time.Duration
}

// BindFlags registers --config and its overrides on fs.
func BindFlags(fs *flag.FlagSet) *Flags {
	f := &Flags{fs: fs}
	fs.StringVar(&f.path, "config", "", "The operator's configuration file (kind OperatorConfig; the chart mounts it at "+DefaultPath+"). The flags below override it.")
	fs.StringVar(&f.issuer, "issuer", "", "iss claim of issued tokens (issuer).")
	fs.StringVar(&f.audience, "audience", "", "aud claim of issued tokens; the proxy checks it (audience).")
	fs.DurationVar(&f.keyRotation, "key-rotation-period", 0, "How often a new signing key is created (keyRotationPeriod).")
	fs.StringVar(&f.baseURL, "proxy-base-url", "", "OPENAI_BASE_URL written into token Secrets (proxy.baseURL).")
	fs.StringVar(&f.upstreams, "proxy-upstreams", "", "Comma-separated vLLM base URLs (proxy.upstreams).")
	fs.StringVar(&f.name, "proxy-name", "", "Name of the proxy's Deployment, Services and ServiceAccount (proxy.name).")
	return f
}

// Load reads --config (no file: every default), applies the flags given on
// the command line, fills the defaults for an operator running in namespace
// with the image operatorImage, and validates the result.
func (f *Flags) Load(namespace, operatorImage string) (*OperatorConfig, error) {
	c := &OperatorConfig{}
	if f.path != "" {
		var err error
		if c, err = Read(f.path); err != nil {
			return nil, fmt.Errorf("reading the operator configuration: %w", err)
		}
	}
	f.fs.Visit(func(fl *flag.Flag) {
		switch fl.Name {
		case "issuer":
			c.Issuer = f.issuer
		case "audience":
			c.Audience = f.audience
		case "key-rotation-period":
			c.KeyRotationPeriod.Duration = f.keyRotation
		case "proxy-base-url":
			c.Proxy.BaseURL = f.baseURL
		case "proxy-name":
			c.Proxy.Name = f.name
		case "proxy-upstreams":
			c.Proxy.Upstreams = nil
			for u := range strings.SplitSeq(f.upstreams, ",") {
				if u = strings.TrimSpace(u); u != "" {
					c.Proxy.Upstreams = append(c.Proxy.Upstreams, u)
				}
			}
		}
	})
	c.Default(namespace, operatorImage)
	if err := c.Validate(); err != nil {
		where := "the flags"
		if f.path != "" {
			where = f.path
		}
		return nil, fmt.Errorf("invalid operator configuration (%s): %w", where, err)
	}
	return c, nil
}
