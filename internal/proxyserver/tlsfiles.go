package proxyserver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"sync"
	"time"
)

// reloading holds what was parsed from some files, and parses them again
// when one of them has changed since. A Secret volume swaps its files when
// the Secret changes (cert-manager renewing a certificate, a CA bundle
// rotated), so a renewed certificate or CA is used from the next
// connection on, without a restart. Files caught mid-change that do not
// parse keep the last good value, and are tried again at the next call.
type reloading[T any] struct {
	files []string
	parse func() (T, error)

	mu   sync.Mutex
	seen []os.FileInfo
	val  T
}

// get returns the value of the files as they are now. Only the first
// call's errors are returned: later ones keep the last good value.
func (r *reloading[T]) get() (T, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	infos := make([]os.FileInfo, len(r.files))
	changed := r.seen == nil
	for i, f := range r.files {
		fi, err := os.Stat(f)
		if err != nil {
			if r.seen != nil {
				return r.val, nil
			}
			return r.val, err
		}
		infos[i] = fi
		if !changed {
			was := r.seen[i]
			changed = !os.SameFile(fi, was) || !fi.ModTime().Equal(was.ModTime()) || fi.Size() != was.Size()
		}
	}
	if !changed {
		return r.val, nil
	}
	v, err := r.parse()
	if err != nil {
		if r.seen != nil {
			return r.val, nil
		}
		return v, err
	}
	r.val, r.seen = v, infos
	return v, nil
}

// redisTLS is the TLS configuration of o's Redis connections and the
// dialer that makes them, both nil without --redis-tls: the CAs of
// --redis-tls-ca-file (else the system's roots) and the client
// certificate, if any, each read again when its files change. A
// connection's server name is the host it dials, so the certificates must
// name the addresses the proxy is given and, on a cluster, those the nodes
// announce.
func redisTLS(o Options) (*tls.Config, func(ctx context.Context, network, addr string) (net.Conn, error), error) {
	if !o.RedisTLS {
		return nil, nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	var roots *reloading[*x509.CertPool]
	if o.RedisTLSCAFile != "" {
		roots = &reloading[*x509.CertPool]{files: []string{o.RedisTLSCAFile}, parse: func() (*x509.CertPool, error) {
			pem, err := os.ReadFile(o.RedisTLSCAFile)
			if err != nil {
				return nil, fmt.Errorf("--redis-tls-ca-file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("--redis-tls-ca-file %s holds no PEM certificate", o.RedisTLSCAFile)
			}
			return pool, nil
		}}
		pool, err := roots.get()
		if err != nil {
			return nil, nil, err
		}
		tc.RootCAs = pool
	}
	if o.RedisTLSCertFile != "" {
		pair := &reloading[*tls.Certificate]{files: []string{o.RedisTLSCertFile, o.RedisTLSKeyFile}, parse: func() (*tls.Certificate, error) {
			cert, err := tls.LoadX509KeyPair(o.RedisTLSCertFile, o.RedisTLSKeyFile)
			if err != nil {
				return nil, fmt.Errorf("--redis-tls-cert-file and --redis-tls-key-file: %w", err)
			}
			return &cert, nil
		}}
		if _, err := pair.get(); err != nil {
			return nil, nil, err
		}
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return pair.get() }
	}
	// go-redis's own dialer, with the CAs as they are now.
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		cfg := tc
		if roots != nil {
			pool, _ := roots.get()
			cfg = tc.Clone()
			cfg.RootCAs = pool
		}
		d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second, KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 30 * time.Second, Interval: 5 * time.Second, Count: 3}}, Config: cfg}
		return d.DialContext(ctx, network, addr)
	}
	return tc, dial, nil
}
