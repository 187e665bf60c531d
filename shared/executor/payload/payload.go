// Package payload is the executor's Python application (ray_executor_payload/, with its
// tests and benchmarks beside it), embedded in the Go binaries that deploy it to Ray as the
// executor job's working_dir package.
package payload

import (
	"archive/zip"
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"sync"
	"time"
)

// Module is the Python package the executor job runs; tests/ and bench/ are not embedded.
const Module = "ray_executor_payload"

//go:embed ray_executor_payload/*.py
var sources embed.FS

// zipEpoch is the modification time of every zip entry, so the archive depends only on
// the file contents. 1980-01-01 is the earliest time the zip format can hold.
var zipEpoch = time.Date(1980, time.January, 1, 0, 0, 0, 0, time.UTC)

// Package returns the embedded Python payload as a Ray working_dir package: a zip whose
// root holds ray_executor_payload/*.py, and its GCS name "_ray_pkg_<first 16 hex digits of
// the zip's SHA-256>.zip". The zip is built once per process and is deterministic (sorted
// entries, fixed times and modes, no compression), so the same sources always give the
// same bytes and the same name. The returned slice is shared; do not modify it.
func Package() (name string, data []byte) {
	return built()
}

var built = sync.OnceValues(func() (string, []byte) {
	data, err := buildZip(sources, Module, Module)
	if err != nil {
		// The input is embedded at build time and zip writes to memory, so this
		// cannot fail at run time unless the build itself is broken.
		panic(fmt.Sprintf("payload: building the package: %v", err))
	}
	return packageName(data), data
})

// Source returns one embedded source file (name relative to ray_executor_payload/).
func Source(name string) ([]byte, error) {
	return sources.ReadFile(path.Join(Module, name))
}

// packageName is Ray's GCS package name for a zip: _ray_pkg_<16 hex of sha256>.zip.
func packageName(zipData []byte) string {
	sum := sha256.Sum256(zipData)
	return "_ray_pkg_" + hex.EncodeToString(sum[:8]) + ".zip"
}

// buildZip zips the regular files directly in dir of fsys, in name order, storing each as
// prefix/<file name>.
func buildZip(fsys fs.FS, dir, prefix string) ([]byte, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		if e.Type().IsRegular() {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	if len(names) == 0 {
		return nil, fmt.Errorf("no files in %s", dir)
	}
	files := make([]zipFile, 0, len(names))
	for _, n := range names {
		content, err := fs.ReadFile(fsys, path.Join(dir, n))
		if err != nil {
			return nil, err
		}
		files = append(files, zipFile{name: path.Join(prefix, n), content: content})
	}
	return writeZip(files)
}

// zipFile is one entry of a package.
type zipFile struct {
	name    string
	content []byte
}

// writeZip zips files in the order given, deterministically: fixed times and modes, and
// stored, not deflated, so the bytes (hence the package name) depend on nothing but the
// names and contents, not on the Go version's compressor. The payload's sources are small.
func writeZip(files []zipFile) ([]byte, error) {
	size := 22 // end of central directory
	for _, f := range files {
		size += len(f.content) + 2*len(f.name) + 128 // headers, extra fields, data descriptor
	}
	buf := bytes.NewBuffer(make([]byte, 0, size))
	zw := zip.NewWriter(buf)
	for _, f := range files {
		h := &zip.FileHeader{Name: f.name, Method: zip.Store, Modified: zipEpoch}
		h.SetMode(0o644)
		w, err := zw.CreateHeader(h)
		if err != nil {
			return nil, err
		}
		if _, err := w.Write(f.content); err != nil {
			return nil, err
		}
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
