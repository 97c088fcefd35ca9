// Command imgbuild writes a linux/amd64 container image as a docker-archive
// tarball, from local files only, for `ctr images import`: the real-node test
// (hack/cluster.sh) runs the project's images without a registry or a Docker
// engine.
//
// With -base static-nonroot the image starts from a layer laid out like
// gcr.io/distroless/static:nonroot, the Dockerfile's base: /etc/passwd and
// /etc/group with root, nobody and nonroot (65532), the CA certificates at
// /etc/ssl/certs/ca-certificates.crt (from -ca-bundle), /tmp (1777) and
// /home/nonroot; SSL_CERT_FILE and PATH set as distroless sets them.
//
//	imgbuild -tag localhost/x:dev -out x.tar -base static-nonroot \
//	    -user 65532:65532 -entrypoint /x bin/x=/x
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// epoch is every file's and the image's time, so the same inputs give the
// same image digest.
var epoch = time.Unix(0, 0).UTC()

// entry is one file or directory of a layer.
type entry struct {
	name     string // without a leading slash
	dir      bool
	mode     int64
	uid, gid int
	data     []byte
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	if err := run(os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "imgbuild:", err)
		os.Exit(1)
	}
}

func run(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("imgbuild", flag.ContinueOnError)
	tag := fs.String("tag", "", "image reference written into the tarball")
	out := fs.String("out", "", "output tarball")
	base := fs.String("base", "", "base layer: empty, or static-nonroot (as gcr.io/distroless/static:nonroot)")
	caBundle := fs.String("ca-bundle", "/etc/ssl/certs/ca-certificates.crt", "CA certificates for -base static-nonroot")
	user := fs.String("user", "", "the image's user, e.g. 65532:65532")
	workdir := fs.String("workdir", "", "the image's working directory (default: the base's)")
	entrypoint := fs.String("entrypoint", "", "entrypoint, comma separated")
	var env listFlag
	fs.Var(&env, "env", "KEY=VALUE added to the image's environment (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *tag == "" || *out == "" {
		return errors.New("-tag and -out are required")
	}
	ref, err := name.NewTag(*tag)
	if err != nil {
		return err
	}

	img := empty.Image
	cfg := v1.Config{}
	switch *base {
	case "":
	case "static-nonroot":
		layer, err := staticNonroot(*caBundle)
		if err != nil {
			return err
		}
		if img, err = appendLayer(img, layer); err != nil {
			return err
		}
		cfg.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"}
		cfg.User = "65532"
		cfg.WorkingDir = "/home/nonroot"
	default:
		return fmt.Errorf("unknown -base %q", *base)
	}

	var files []entry
	for _, a := range fs.Args() {
		src, dst, ok := strings.Cut(a, "=")
		if !ok || !strings.HasPrefix(dst, "/") {
			return fmt.Errorf("file %q: want SRC=/ABSOLUTE/DST", a)
		}
		data, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		st, err := os.Stat(src)
		if err != nil {
			return err
		}
		files = append(files, entry{name: strings.TrimPrefix(dst, "/"), mode: int64(st.Mode().Perm()), data: data})
	}
	if len(files) > 0 {
		if img, err = appendLayer(img, files); err != nil {
			return err
		}
	}

	if *user != "" {
		cfg.User = *user
	}
	if *workdir != "" {
		cfg.WorkingDir = *workdir
	}
	if *entrypoint != "" {
		cfg.Entrypoint = strings.Split(*entrypoint, ",")
	}
	cfg.Env = append(cfg.Env, env...)
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Created = v1.Time{Time: epoch}
	cf.Config = cfg
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}
	tmp := *out + ".tmp"
	if err := tarball.WriteToFile(tmp, ref, img); err != nil {
		return err
	}
	if err := os.Rename(tmp, *out); err != nil {
		return err
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	_, _ = fmt.Fprintf(stderr, "imgbuild: %s as %s (%s)\n", *out, ref, d)
	return nil
}

// staticNonroot is the distroless static:nonroot layout the Dockerfile's
// final stage starts from.
func staticNonroot(caBundle string) ([]entry, error) {
	ca, err := os.ReadFile(caBundle)
	if err != nil {
		return nil, fmt.Errorf("CA certificates: %w", err)
	}
	if !bytes.Contains(ca, []byte("-----BEGIN CERTIFICATE-----")) {
		return nil, fmt.Errorf("%s holds no PEM certificate", caBundle)
	}
	return []entry{
		{name: "etc/passwd", mode: 0o644, data: []byte("root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")},
		{name: "etc/group", mode: 0o644, data: []byte("root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n")},
		{name: "etc/nsswitch.conf", mode: 0o644, data: []byte("hosts: files dns\n")},
		{name: "etc/ssl/certs/ca-certificates.crt", mode: 0o644, data: ca},
		{name: "tmp", dir: true, mode: 0o1777},
		{name: "root", dir: true, mode: 0o700},
		{name: "home/nonroot", dir: true, mode: 0o700, uid: 65532, gid: 65532},
	}, nil
}

// appendLayer adds entries as one layer, with every parent directory, in
// a fixed order.
func appendLayer(img v1.Image, entries []entry) (v1.Image, error) {
	all := map[string]entry{}
	for _, e := range entries {
		for d := path.Dir(e.name); d != "." && d != "/"; d = path.Dir(d) {
			if _, ok := all[d]; !ok {
				all[d] = entry{name: d, dir: true, mode: 0o755}
			}
		}
	}
	for _, e := range entries {
		all[e.name] = e
	}
	names := make([]string, 0, len(all))
	for n := range all {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		e := all[n]
		h := &tar.Header{Name: e.name, Mode: e.mode, Uid: e.uid, Gid: e.gid, ModTime: epoch, Typeflag: tar.TypeReg, Size: int64(len(e.data)), Format: tar.FormatPAX}
		if e.dir {
			h.Name += "/"
			h.Typeflag, h.Size = tar.TypeDir, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		return nil, err
	}
	return mutate.AppendLayers(img, layer)
}
