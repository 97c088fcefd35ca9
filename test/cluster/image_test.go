// Package cluster holds the real-node test (make test-cluster, build tag
// cluster): the chart installed on a single-node Kubernetes that
// hack/cluster.sh brings up, pods serving tokens end to end. Its image test
// runs in every make test: the image hack/image.sh builds for that node must
// be the one the Dockerfile describes.
package cluster

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/x509"
	"debug/buildinfo"
	"debug/elf"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// dockerfile is what the test reads of the Dockerfile.
type dockerfile struct {
	// builds maps each output of the build stage's go build to how it is
	// built; cgo is the stage's CGO_ENABLED.
	builds map[string]goBuild
	cgo    string
	// base is the final stage's FROM; copies map a path in the image to the
	// build stage's output it is copied from.
	base       string
	copies     map[string]string
	user       string
	entrypoint []string
}

// goBuild is one go build of the Dockerfile's build stage.
type goBuild struct {
	pkg      string
	ldflags  string
	trimpath bool
}

// parseDockerfile reads the two-stage layout of the project's Dockerfile: a
// stage named build, and a final stage.
func parseDockerfile(t *testing.T, path string) dockerfile {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Continuation lines joined, comments dropped.
	var lines []string
	var cur strings.Builder
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(l, "#") {
			continue
		}
		if s, ok := strings.CutSuffix(l, "\\"); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(l)
		if cur.Len() > 0 {
			lines = append(lines, cur.String())
		}
		cur.Reset()
	}
	d := dockerfile{builds: map[string]goBuild{}, copies: map[string]string{}}
	stage := ""
	goBuildRE := regexp.MustCompile(`go build ([^&]*?)-o (\S+) (\./\S+)`)
	for _, l := range lines {
		instr, rest, _ := strings.Cut(l, " ")
		switch strings.ToUpper(instr) {
		case "FROM":
			f := strings.Fields(rest)
			if n := len(f); n >= 3 && strings.EqualFold(f[n-2], "AS") {
				stage = f[n-1]
			} else {
				stage = "final"
				d.base = f[len(f)-1]
			}
		case "ENV":
			if stage == "build" {
				if m := regexp.MustCompile(`CGO_ENABLED=(\S+)`).FindStringSubmatch(rest); m != nil {
					d.cgo = m[1]
				}
			}
		case "RUN":
			for _, m := range goBuildRE.FindAllStringSubmatch(rest, -1) {
				b := goBuild{pkg: m[3], trimpath: strings.Contains(m[1], "-trimpath")}
				if lf := regexp.MustCompile(`-ldflags="([^"]*)"`).FindStringSubmatch(m[1]); lf != nil {
					b.ldflags = lf[1]
				}
				d.builds[m[2]] = b
			}
		case "COPY":
			f := strings.Fields(rest)
			if stage == "final" && len(f) == 3 && f[0] == "--from=build" {
				d.copies[f[2]] = f[1]
			}
		case "USER":
			d.user = strings.TrimSpace(rest)
		case "ENTRYPOINT":
			if err := json.Unmarshal([]byte(rest), &d.entrypoint); err != nil {
				t.Fatalf("ENTRYPOINT %s: not the exec form: %v", rest, err)
			}
		}
	}
	return d
}

// image is what the test reads of a docker-archive tarball.
type image struct {
	config struct {
		User       string
		Entrypoint []string
		Env        []string
		WorkingDir string
	}
	files map[string]*tar.Header
	data  map[string][]byte
}

func readImage(t *testing.T, path string) image {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	blobs := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		blobs[h.Name] = b
	}
	var manifest []struct {
		Config string
		Layers []string
	}
	if err := json.Unmarshal(blobs["manifest.json"], &manifest); err != nil || len(manifest) != 1 {
		t.Fatalf("manifest.json: %v (%d images)", err, len(manifest))
	}
	var cfg struct {
		Config json.RawMessage `json:"config"`
	}
	img := image{files: map[string]*tar.Header{}, data: map[string][]byte{}}
	if err := json.Unmarshal(blobs[manifest[0].Config], &cfg); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(cfg.Config, &img.config); err != nil {
		t.Fatal(err)
	}
	for _, l := range manifest[0].Layers {
		zr, err := gzip.NewReader(bytes.NewReader(blobs[l]))
		if err != nil {
			t.Fatal(err)
		}
		lr := tar.NewReader(zr)
		for {
			h, err := lr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			name := "/" + strings.TrimSuffix(h.Name, "/")
			img.files[name] = h
			if img.data[name], err = io.ReadAll(lr); err != nil {
				t.Fatal(err)
			}
		}
	}
	return img
}

// TestImageMatchesDockerfile builds the image the real-node test runs
// (hack/image.sh, no Docker engine) and fails where it differs from the
// Dockerfile: the binaries, the packages and flags they are built from,
// their paths, the user, the entrypoint, and the base's CA certificates,
// users and /tmp.
func TestImageMatchesDockerfile(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the image")
	}
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	d := parseDockerfile(t, filepath.Join(repo, "Dockerfile"))
	if len(d.copies) == 0 || len(d.builds) == 0 || d.user == "" || len(d.entrypoint) == 0 {
		t.Fatalf("the Dockerfile no longer reads as this test expects (copies %v, builds %v, user %q, entrypoint %q): update the test and hack/image.sh together", d.copies, d.builds, d.user, d.entrypoint)
	}

	out := filepath.Join(t.TempDir(), "image.tar")
	cmd := exec.Command(filepath.Join(repo, "hack/image.sh"), out, "localhost/llm-user-operator:drift")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("hack/image.sh: %v\n%s", err, b)
	}
	img := readImage(t, out)

	if img.config.User != d.user {
		t.Errorf("user %q, the Dockerfile's USER is %q", img.config.User, d.user)
	}
	if !slices.Equal(img.config.Entrypoint, d.entrypoint) {
		t.Errorf("entrypoint %q, the Dockerfile's is %q", img.config.Entrypoint, d.entrypoint)
	}

	const module = "github.com/llm-user-operator/llm-user-operator"
	var binaries []string
	for dst, src := range d.copies {
		binaries = append(binaries, dst)
		build, ok := d.builds[src]
		if !ok {
			t.Errorf("the Dockerfile copies %s to %s, which its build stage does not build", src, dst)
			continue
		}
		h, ok := img.files[dst]
		if !ok {
			t.Errorf("%s: not in the image", dst)
			continue
		}
		if h.Typeflag != tar.TypeReg || h.Mode&0o111 == 0 {
			t.Errorf("%s: not an executable file (mode %o)", dst, h.Mode)
		}
		bi, err := buildinfo.Read(bytes.NewReader(img.data[dst]))
		if err != nil {
			t.Errorf("%s: %v", dst, err)
			continue
		}
		if want := module + strings.TrimPrefix(build.pkg, "."); bi.Path != want {
			t.Errorf("%s is %s, the Dockerfile builds it from %s", dst, bi.Path, want)
		}
		settings := map[string]string{}
		for _, s := range bi.Settings {
			settings[s.Key] = s.Value
		}
		for k, want := range map[string]string{"CGO_ENABLED": d.cgo, "-trimpath": boolString(build.trimpath), "GOOS": "linux"} {
			if settings[k] != want {
				t.Errorf("%s built with %s=%q, the Dockerfile with %q", dst, k, settings[k], want)
			}
		}
		// With -trimpath the build info leaves -ldflags out: -s and -w are
		// read off the binary's sections instead.
		checkLdflags(t, dst, img.data[dst], build.ldflags)
	}
	// Nothing executable that the Dockerfile does not put there.
	for name, h := range img.files {
		if h.Typeflag == tar.TypeReg && h.Mode&0o111 != 0 && !slices.Contains(binaries, name) {
			t.Errorf("%s: an executable the Dockerfile does not copy", name)
		}
	}

	// The base: what gcr.io/distroless/static:nonroot gives the binaries.
	if d.base != "gcr.io/distroless/static:nonroot" {
		t.Fatalf("the Dockerfile's base is now %s: teach hack/tools/imgbuild its layout, then this test", d.base)
	}
	certs := 0
	for rest := img.data["/etc/ssl/certs/ca-certificates.crt"]; ; {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			break
		}
		if _, err := x509.ParseCertificate(blk.Bytes); err == nil {
			certs++
		}
	}
	if certs < 10 {
		t.Errorf("/etc/ssl/certs/ca-certificates.crt holds %d certificates", certs)
	}
	if !slices.Contains(img.config.Env, "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt") {
		t.Errorf("env %q: no SSL_CERT_FILE, which distroless sets", img.config.Env)
	}
	if !strings.Contains(string(img.data["/etc/passwd"]), "nonroot:x:65532:65532:") {
		t.Errorf("/etc/passwd has no nonroot user 65532:\n%s", img.data["/etc/passwd"])
	}
	if h := img.files["/tmp"]; h == nil || h.Typeflag != tar.TypeDir || h.Mode&0o7777 != 0o1777 {
		t.Errorf("/tmp: %+v, want a directory of mode 1777", h)
	}
	if h := img.files["/home/nonroot"]; h == nil || h.Uid != 65532 || img.config.WorkingDir != "/home/nonroot" {
		t.Errorf("/home/nonroot %+v, working directory %q: want nonroot's home, the working directory", h, img.config.WorkingDir)
	}
}

// checkLdflags fails unless the ELF binary bin was linked with ldflags,
// which may hold -s (no symbol table) and -w (no DWARF).
func checkLdflags(t *testing.T, name string, bin []byte, ldflags string) {
	t.Helper()
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		t.Errorf("%s: %v", name, err)
		return
	}
	flags := strings.Fields(ldflags)
	for _, fl := range flags {
		if fl != "-s" && fl != "-w" {
			t.Errorf("the Dockerfile links with %s, which this test cannot check: teach it", fl)
		}
	}
	has := func(section string) bool { return f.Section(section) != nil }
	if want := !slices.Contains(flags, "-s"); has(".symtab") != want {
		t.Errorf("%s: symbol table present %v, the Dockerfile's -ldflags=%q", name, has(".symtab"), ldflags)
	}
	if want := !slices.Contains(flags, "-w") && !slices.Contains(flags, "-s"); has(".debug_info") != want {
		t.Errorf("%s: DWARF present %v, the Dockerfile's -ldflags=%q", name, has(".debug_info"), ldflags)
	}
}

func boolString(b bool) string {
	if b {
		return "true"
	}
	return "false"
}
