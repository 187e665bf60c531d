package ray

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

// PayloadEntrypoint is the entrypoint of a deliberation job. It runs the embedded Python
// package from the job's working_dir (see PayloadPackage).
const PayloadEntrypoint = "python -u -m ray_executor_payload"

// PayloadRequestEnv names the environment variable that carries the deliberation request
// JSON to the payload. It travels in runtime_env.env_vars, never on the command line
// (which Ray shows in job listings and logs).
const PayloadRequestEnv = "RAY_EXECUTOR_REQUEST"

// payloadDir is the embedded Python package; tests (payload/tests) are not embedded.
const payloadDir = "payload/ray_executor_payload"

//go:embed payload/ray_executor_payload/*.py
var payloadFS embed.FS

// zipEpoch is the modification time of every zip entry, so the archive depends only on
// the file contents. 1980-01-01 is the earliest time the zip format can hold.
var zipEpoch = time.Date(1980, time.January, 1, 0, 0, 0, 0, time.UTC)

// PayloadPackage returns the embedded Python payload as a Ray working_dir package: a zip
// whose root holds ray_executor_payload/*.py, and its GCS name
// "_ray_pkg_<first 16 hex digits of the zip's SHA-256>.zip". The zip is built once per
// process and is deterministic (sorted entries, fixed times and modes, no compression),
// so the same sources always give the same bytes and the same name. The returned slice
// is shared; do not modify it.
func PayloadPackage() (name string, data []byte) {
	return payloadPackage()
}

var payloadPackage = sync.OnceValues(func() (string, []byte) {
	data, err := buildZip(payloadFS, payloadDir, "ray_executor_payload")
	if err != nil {
		// The input is embedded at build time and zip writes to memory, so this
		// cannot fail at run time unless the build itself is broken.
		panic(fmt.Sprintf("ray: building payload package: %v", err))
	}
	return packageName(data), data
})

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

	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, n := range names {
		content, err := fs.ReadFile(fsys, path.Join(dir, n))
		if err != nil {
			return nil, err
		}
		h := &zip.FileHeader{
			Name: path.Join(prefix, n),
			// Stored, not deflated: the sources are small, and the bytes (hence the
			// name) then do not depend on the Go version's compressor.
			Method:   zip.Store,
			Modified: zipEpoch,
		}
		h.SetMode(0o644)
		w, err := zw.CreateHeader(h)
		if err != nil {
			return nil, err
		}
		if _, err := w.Write(content); err != nil {
			return nil, err
		}
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
