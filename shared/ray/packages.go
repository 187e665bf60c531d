package ray

import (
	"context"
	"fmt"
	"net/http"

	"github.com/fleet-ai/ray-executor/shared/domain"
)

// Package is a GCS package: a zip Ray stores under Name, "_ray_pkg_<first 16 hex digits of
// the zip's SHA-256>.zip", that jobs name as URI() in their runtime_env (working_dir,
// py_modules).
type Package struct {
	Name string
	Data []byte
}

// URI is how a runtime_env names the package: "gcs://" + Name.
func (p Package) URI() string { return "gcs://" + p.Name }

// EnsurePackage makes sure p is stored in the cluster: a GET, and a PUT only when Ray does
// not have it, so a retry with the same (content-addressed) package uploads nothing again.
// The GET also pins the name for about ten minutes, even before the PUT stores it: that
// keeps the package until a job naming it holds Ray's reference (Ray then drops it once
// no job uses it), and lets Ray delete it if no job ever does. Errors are those of
// PackageExists and UploadPackage.
func (c *Client) EnsurePackage(ctx context.Context, p Package) error {
	ok, err := c.PackageExists(ctx, p.Name)
	if err != nil || ok {
		return err
	}
	return c.UploadPackage(ctx, p.Name, p.Data)
}

// PackageExists reports whether the GCS package name (e.g. "_ray_pkg_<hex>.zip", the part
// after "gcs://") is stored in the cluster. A successful check also re-pins the package in
// Ray for about ten minutes. Errors: domain.ErrInvalid for an empty name (no request is
// made); domain.ErrUnavailable, domain.ErrUnauthenticated, domain.ErrDeadline or
// context.Canceled. A missing package is (false, nil), not an error.
func (c *Client) PackageExists(ctx context.Context, name string) (bool, error) {
	op := "check package " + name
	seg, err := segment(op, "package name", name)
	if err != nil {
		return false, err
	}
	resp, err := c.do(ctx, request{op: op, method: http.MethodGet, path: "/api/packages/gcs/" + seg, idempotent: true},
		http.StatusOK, http.StatusNotFound)
	if err != nil {
		return false, err
	}
	return resp.status == http.StatusOK, nil
}

// UploadPackage stores zip under the GCS package name (the part after "gcs://"), so jobs
// can use runtime_env {"working_dir": "gcs://" + name}. Ray keeps an unreferenced package
// only for its pin time (about ten minutes). Uploading an existing name overwrites it.
// Errors: domain.ErrInvalid for an empty name or empty zip (no request is made) and for a
// 400 from Ray; domain.ErrUnavailable, domain.ErrUnauthenticated, domain.ErrDeadline or
// context.Canceled.
func (c *Client) UploadPackage(ctx context.Context, name string, zip []byte) error {
	op := "upload package " + name
	seg, err := segment(op, "package name", name)
	if err != nil {
		return err
	}
	if len(zip) == 0 {
		return fmt.Errorf("ray: %s: empty package: %w", op, domain.ErrInvalid)
	}
	_, err = c.do(ctx, request{
		op: op, method: http.MethodPut, path: "/api/packages/gcs/" + seg,
		body: zip, contentType: "application/zip",
		idempotent: true, // a second PUT of the same bytes under the same name leaves the same package
	}, http.StatusOK)
	return err
}
