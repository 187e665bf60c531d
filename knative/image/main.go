// Command image builds the base image the four binaries' ko images sit on: the equivalent of
// distroless/static (CA certificates, a nonroot user, /tmp, time zone data), assembled from
// this machine's Debian files, because no container registry is reachable to pull
// distroless from. It writes the image into ko's on-disk base-image cache ($KOCACHE/img, an
// OCI layout) and prints a digest reference that ko then resolves from that cache without
// any network:
//
//	KOCACHE=.data/kocache go run ./knative/image -repo base.local/static
//	ko build --base-image=base.local/static@sha256:... --push=false --tarball=...
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The nonroot user distroless uses; the binaries need no privileges.
const nonroot = 65532

func main() {
	repo := flag.String("repo", "base.local/ray-executor-static", "name to give the base image (never pulled)")
	certs := flag.String("certs", "/etc/ssl/certs/ca-certificates.crt", "CA bundle to include")
	zoneinfo := flag.String("zoneinfo", "/usr/share/zoneinfo", "time zone data to include (empty: none)")
	flag.Parse()
	cache := os.Getenv("KOCACHE")
	if cache == "" {
		fail(fmt.Errorf("set KOCACHE: the base image goes into ko's cache there"))
	}
	img, err := build(*certs, *zoneinfo)
	fail(err)
	dig, err := img.Digest()
	fail(err)
	p, err := layout.FromPath(filepath.Join(cache, "img"))
	if err != nil {
		p, err = layout.Write(filepath.Join(cache, "img"), empty.Index)
		fail(err)
	}
	fail(p.ReplaceImage(img, func(d v1.Descriptor) bool { return d.Digest == dig }))
	fmt.Printf("%s@%s\n", *repo, dig)
}

type file struct {
	mode os.FileMode
	body []byte
	dir  bool
}

func build(certs, zoneinfo string) (v1.Image, error) {
	files := map[string]file{
		"etc/":           {mode: 0o755, dir: true},
		"etc/ssl/":       {mode: 0o755, dir: true},
		"etc/ssl/certs/": {mode: 0o755, dir: true},
		"etc/passwd": {mode: 0o644, body: []byte(
			"root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n" +
				"nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")},
		"etc/group":     {mode: 0o644, body: []byte("root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n")},
		"home/":         {mode: 0o755, dir: true},
		"home/nonroot/": {mode: 0o700, dir: true},
		"tmp/":          {mode: 0o1777, dir: true},
	}
	b, err := os.ReadFile(certs)
	if err != nil {
		return nil, fmt.Errorf("CA bundle: %w", err)
	}
	files["etc/ssl/certs/ca-certificates.crt"] = file{mode: 0o644, body: b}
	if zoneinfo != "" {
		files["usr/"] = file{mode: 0o755, dir: true}
		files["usr/share/"] = file{mode: 0o755, dir: true}
		err := filepath.WalkDir(zoneinfo, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(filepath.Dir(zoneinfo), path)
			name := "usr/share/" + filepath.ToSlash(rel)
			switch {
			case d.IsDir():
				files[name+"/"] = file{mode: 0o755, dir: true}
			case d.Type().IsRegular():
				body, err := os.ReadFile(path)
				if err != nil {
					return err
				}
				files[name] = file{mode: 0o644, body: body}
			}
			return nil // links are left out: the Go runtime reads zone files by name
		})
		if err != nil {
			return nil, fmt.Errorf("zoneinfo: %w", err)
		}
	}
	layer, err := tarLayer(files)
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), layer)
	if err != nil {
		return nil, err
	}
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.User = fmt.Sprint(nonroot)
	cf.Config.WorkingDir = "/home/nonroot"
	cf.Config.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"}
	cf.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	return mutate.ConfigFile(img, cf)
}

// tarLayer writes files in a stable order with fixed times, so the base (and with it every
// image built on it) is reproducible.
func tarLayer(files map[string]file) (v1.Layer, error) {
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		f := files[n]
		h := &tar.Header{Name: n, Mode: int64(f.mode.Perm() | f.mode&os.ModeSticky), ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
		if f.mode&os.ModeSticky != 0 || f.mode == 0o1777 {
			h.Mode = 0o1777
		}
		if n == "home/nonroot/" {
			h.Uid, h.Gid = nonroot, nonroot
		}
		if f.dir {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if !f.dir {
			if _, err := tw.Write(f.body); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil },
		tarball.WithMediaType(types.OCILayer))
}

func fail(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}
