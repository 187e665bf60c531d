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

// The deliberation request reaches the payload as a GCS package of its own (RequestPackage),
// named in the job's runtime_env.py_modules: a Python package RequestModulePrefix + 16 hex
// digits holding RequestFile. RequestModuleEnv, in runtime_env.env_vars, tells the payload
// the module's name. Neither the request nor any caller text travels in an environment
// variable or on the command line.
const (
	// RequestModuleEnv names the environment variable holding the request module's name;
	// its value is RequestModulePrefix and hex digits, never caller text.
	RequestModuleEnv = "RAY_EXECUTOR_REQUEST_MODULE"
	// RequestModulePrefix starts every request module's name; the 16 hex digits after it
	// are the first 8 bytes of RequestFile's SHA-256, which the payload checks.
	RequestModulePrefix = "ray_executor_request_"
	// RequestFile is the request JSON (PayloadRequest) inside the request module.
	RequestFile = "request.json"
)

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

// RequestPackage wraps a request's JSON as the package it travels in: a zip holding
// <module>/__init__.py (empty) and <module>/request.json, where module is
// RequestModulePrefix + the first 16 hex digits of the JSON's SHA-256. Ray unpacks a
// py_modules package into a directory of its own on each node and puts that directory on
// the job's PYTHONPATH; the payload finds request.json through the module's name
// (RequestModuleEnv).
//
// Everything is content-addressed: the same JSON always gives the same zip bytes, hence the
// same package name, so uploading it again (a retry) is idempotent, and no two different
// requests share a module or package name. A hashed name cannot collide with a module the
// cluster's image or the working_dir provides either.
func RequestPackage(requestJSON []byte) (pkg Package, module string) {
	sum := sha256.Sum256(requestJSON)
	module = RequestModulePrefix + hex.EncodeToString(sum[:8])
	data, err := writeZip([]zipFile{
		{name: module + "/__init__.py"},
		{name: module + "/" + RequestFile, content: requestJSON},
	})
	if err != nil {
		// zip writes to memory, and the names are ours: this cannot fail.
		panic(fmt.Sprintf("ray: building request package: %v", err))
	}
	return Package{Name: packageName(data), Data: data}, module
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
// names and contents, not on the Go version's compressor. The payload's sources are small;
// a request is at most a few hundred KiB and lives in the cluster only while its job does.
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
