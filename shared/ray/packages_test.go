package ray

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

func TestEnsurePackageUploadsOnlyWhatRayLacks(t *testing.T) {
	t.Parallel()
	pkg := Package{Name: "_ray_pkg_0123456789abcdef.zip", Data: []byte("PK\x05\x06 a zip")}
	gcs := &fakeGCS{}
	c := stub(t, Config{Timeout: 5 * time.Second, Retries: -1, BreakerFailures: -1}, gcs.handler(t, "/api/packages/gcs/"+pkg.Name))
	if err := c.EnsurePackage(context.Background(), pkg); err != nil {
		t.Fatalf("first EnsurePackage: got %v, want nil", err)
	}
	expectCounts(t, "missing package", gcs, 1, 1)
	gcs.set(func(f *fakeGCS) {
		if !bytes.Equal(f.stored, pkg.Data) {
			t.Errorf("got %d bytes uploaded, want the package's %d", len(f.stored), len(pkg.Data))
		}
	})
	if err := c.EnsurePackage(context.Background(), pkg); err != nil {
		t.Fatalf("second EnsurePackage: got %v, want nil", err)
	}
	expectCounts(t, "package present", gcs, 2, 1)

	gcs.set(func(f *fakeGCS) { f.getStatus = 503 })
	if err := c.EnsurePackage(context.Background(), pkg); err == nil || !strings.Contains(err.Error(), pkg.Name) {
		t.Errorf("with Ray unavailable: got %v, want an error naming the package", err)
	}
	expectCounts(t, "Ray unavailable", gcs, 3, 1)
}
