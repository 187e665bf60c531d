package payload

import (
	"archive/zip"
	"bytes"
	"io"
	"io/fs"
	"regexp"
	"sort"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/fleet-ai/ray-executor/shared/domain"
)

func TestPayloadPackage(t *testing.T) {
	t.Parallel()
	name, data := Package()
	name2, data2 := Package()
	if name != name2 || !bytes.Equal(data, data2) {
		t.Fatalf("got different packages from two calls (%s, %s), want the same", name, name2)
	}
	if !regexp.MustCompile(`^_ray_pkg_[0-9a-f]{16}\.zip$`).MatchString(name) {
		t.Errorf("got name %q, want _ray_pkg_<16 hex>.zip", name)
	}
	if want := packageName(data); name != want {
		t.Errorf("got name %q, want %q (from the zip's sha256)", name, want)
	}

	// Rebuilding from the embedded files gives the same bytes.
	again, err := buildZip(sources, Module, Module)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again, data) {
		t.Errorf("got a different zip on rebuild, want identical bytes")
	}

	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatalf("got unreadable zip: %v", err)
	}
	embedded, _ := fs.Glob(sources, Module+"/*.py")
	var got, want []string
	for _, p := range embedded {
		want = append(want, "ray_executor_payload/"+p[len(Module)+1:])
	}
	sort.Strings(want)
	for _, f := range zr.File {
		got = append(got, f.Name)
		if !f.Modified.Equal(zipEpoch) {
			t.Errorf("%s: got modified %s, want %s", f.Name, f.Modified, zipEpoch)
		}
		if f.Mode().Perm() != 0o644 {
			t.Errorf("%s: got mode %v, want 0644", f.Name, f.Mode())
		}
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		content, _ := io.ReadAll(rc)
		rc.Close()
		orig, _ := fs.ReadFile(sources, Module+"/"+strings.TrimPrefix(f.Name, "ray_executor_payload/"))
		if !bytes.Equal(content, orig) {
			t.Errorf("%s: got content differing from the embedded file", f.Name)
		}
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("got entries %v, want %v (sorted, under ray_executor_payload/)", got, want)
	}
	if !contains(got, "ray_executor_payload/__init__.py") {
		t.Errorf("got entries %v, want ray_executor_payload/__init__.py among them", got)
	}
	for _, n := range got {
		if strings.Contains(n, "tests/") {
			t.Errorf("got test file %s in the package, want tests excluded", n)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestBuildZipDeterministic(t *testing.T) {
	t.Parallel()
	src := fstest.MapFS{
		"p/b.py":          {Data: []byte("b = 2\n")},
		"p/a.py":          {Data: []byte("a = 1\n")},
		"p/__init__.py":   {Data: []byte("")},
		"p/sub/ignored.x": {Data: []byte("x")},
	}
	one, err := buildZip(src, "p", "pkg")
	if err != nil {
		t.Fatal(err)
	}
	two, _ := buildZip(src, "p", "pkg")
	if !bytes.Equal(one, two) {
		t.Errorf("got different bytes for the same input, want identical")
	}
	zr, _ := zip.NewReader(bytes.NewReader(one), int64(len(one)))
	var names []string
	for _, f := range zr.File {
		names = append(names, f.Name)
	}
	if got, want := strings.Join(names, ","), "pkg/__init__.py,pkg/a.py,pkg/b.py"; got != want {
		t.Errorf("got entries %s, want %s", got, want)
	}

	src["p/b.py"] = &fstest.MapFile{Data: []byte("b = 3\n")}
	changed, _ := buildZip(src, "p", "pkg")
	if packageName(changed) == packageName(one) {
		t.Errorf("got the same name %s for different content, want a different one", packageName(one))
	}
	if _, err := buildZip(fstest.MapFS{"p/sub/x": {Data: []byte("x")}}, "p", "pkg"); err == nil {
		t.Errorf("got nil error for a directory without files, want an error")
	}
}

// Normalize bounds a template's rendered size with the placeholders the payload fills in:
// both sides must name the same ones.
func TestPromptPlaceholdersMatchThePayload(t *testing.T) {
	t.Parallel()
	src, err := Source("prompts.py")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^PLACEHOLDERS = \(([^)]*)\)`).FindSubmatch(src)
	if m == nil {
		t.Fatal("prompts.py has no PLACEHOLDERS = (...) line")
	}
	var py []string
	for _, q := range regexp.MustCompile(`"([a-z_]+)"`).FindAllSubmatch(m[1], -1) {
		py = append(py, string(q[1]))
	}
	if strings.Join(py, ",") != strings.Join(domain.PromptPlaceholders, ",") {
		t.Errorf("got payload placeholders %v, domain.PromptPlaceholders %v: want the same", py, domain.PromptPlaceholders)
	}
}
