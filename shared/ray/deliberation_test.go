package ray

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fleet-ai/ray-executor/shared/domain"
)

// nastyText is what a shell, Ray's env var expansion, a format string or an HTML-escaping
// encoder could each misread.
const nastyText = "$(touch /tmp/pwned) `id` $HOME ${PATH} $$ \\ \" ' <b>&amp;</b> {task_id} %s\n\t\x00 \x01 ünïcødé 🚀 \u2028 "

// bigRequest is a normalized request whose description is exactly the default limit.
func bigRequest(t *testing.T) domain.Request {
	t.Helper()
	limit := domain.DefaultLimits().MaxDescriptionBytes
	desc := strings.Repeat(nastyText, limit/len(nastyText))
	desc += strings.Repeat("x", limit-len(desc))
	r := domain.Request{Kind: domain.KindDeliberation, TaskID: "t-big", TaskDescription: desc, Role: "dev",
		Constraints: domain.Constraints{StoryID: "s", Metadata: map[string]string{"task_type": "TASK_EXTRACTION", "k": nastyText}},
		Agents:      []domain.Agent{{ID: "a1", Role: "dev", Model: "m", PromptTemplate: "You are {role}. " + nastyText}},
		VLLMURL:     "http://127.0.0.1:8000", VLLMModel: "m"}
	if err := domain.Normalize(&r, domain.Limits{}); err != nil {
		t.Fatalf("a description of exactly the default limit: got %v, want it valid", err)
	}
	if len(r.TaskDescription) != limit {
		t.Fatalf("built a description of %d bytes, want %d", len(r.TaskDescription), limit)
	}
	return r
}

// unzipRequest reads a request package back as Ray's py_modules would unpack it.
func unzipRequest(t *testing.T, data []byte) map[string][]byte {
	t.Helper()
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatalf("request package is not a zip: %v", err)
	}
	files := map[string][]byte{}
	for _, f := range zr.File {
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatalf("%s: %v", f.Name, err)
		}
		files[f.Name] = b
	}
	return files
}

var moduleName = regexp.MustCompile(`^ray_executor_request_[0-9a-f]{16}$`)

func TestDeliberationJobSendsTheRequestAsAPackage(t *testing.T) {
	t.Parallel()
	r := bigRequest(t)
	opts := JobOptions{WorkingDir: "gcs://_ray_pkg_payload.zip", EnvVars: map[string]string{"RAY_EXECUTOR_NATS_URL": "nats://n:4222"}}
	job, err := DeliberationJob("delib-big", r, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", opts)
	if err != nil {
		t.Fatal(err)
	}

	// The submission names the package and the module; it carries no request text.
	sub := job.Submit
	if sub.Entrypoint != PayloadEntrypoint {
		t.Errorf("got entrypoint %q, want %q", sub.Entrypoint, PayloadEntrypoint)
	}
	if got, ok := sub.RuntimeEnv["py_modules"].([]string); !ok || len(got) != 1 || got[0] != job.Request.URI() {
		t.Errorf("got py_modules %v, want [%s]", sub.RuntimeEnv["py_modules"], job.Request.URI())
	}
	if wd := sub.RuntimeEnv["working_dir"]; wd != opts.WorkingDir {
		t.Errorf("got working_dir %v, want %s", wd, opts.WorkingDir)
	}
	env := sub.RuntimeEnv["env_vars"].(map[string]string)
	module := env[RequestModuleEnv]
	if !moduleName.MatchString(module) {
		t.Errorf("got %s=%q, want ray_executor_request_<16 hex>", RequestModuleEnv, module)
	}
	if env["RAY_EXECUTOR_NATS_URL"] != "nats://n:4222" || len(env) != 2 {
		t.Errorf("got env_vars %v, want the operator's and the module name only", env)
	}
	if _, ok := env["RAY_EXECUTOR_REQUEST"]; ok {
		t.Errorf("got the request in env_vars, want it only in the package")
	}
	wire, err := json.Marshal(sub)
	if err != nil {
		t.Fatal(err)
	}
	if len(wire) > 4<<10 || bytes.Contains(wire, []byte("touch /tmp/pwned")) {
		t.Errorf("got a %d-byte submission carrying request text, want a small one without it", len(wire))
	}

	// The package: <module>/__init__.py and <module>/request.json, content-addressed.
	if !regexp.MustCompile(`^_ray_pkg_[0-9a-f]{16}\.zip$`).MatchString(job.Request.Name) || job.Request.Name != packageName(job.Request.Data) {
		t.Errorf("got package name %q, want _ray_pkg_ + 16 hex of the zip's SHA-256 (%s)", job.Request.Name, packageName(job.Request.Data))
	}
	if job.Request.URI() != "gcs://"+job.Request.Name {
		t.Errorf("got URI %q", job.Request.URI())
	}
	files := unzipRequest(t, job.Request.Data)
	body, ok := files[module+"/"+RequestFile]
	if init, hasInit := files[module+"/__init__.py"]; !ok || !hasInit || len(init) != 0 || len(files) != 2 {
		t.Fatalf("got package entries %v, want exactly %s/__init__.py (empty) and %s/%s", keys(files), module, module, RequestFile)
	}
	sum := sha256.Sum256(body)
	if module != RequestModulePrefix+hex.EncodeToString(sum[:8]) {
		t.Errorf("got module %s, want %s + the first 16 hex digits of request.json's SHA-256", module, RequestModulePrefix)
	}
	if !bytes.Contains(body, []byte("<b>&amp;</b>")) {
		t.Errorf("got <, > and & escaped in request.json, want them as they are")
	}
	var pr PayloadRequest
	if err := json.Unmarshal(body, &pr); err != nil {
		t.Fatalf("request.json is not JSON: %v", err)
	}
	if pr.TaskDescription != r.TaskDescription {
		t.Errorf("got a description of %d bytes differing from the %d sent, want it byte for byte", len(pr.TaskDescription), len(r.TaskDescription))
	}
	if pr.Version != 1 || pr.DeliberationID != "delib-big" || pr.Metadata["k"] != nastyText || pr.Agents[0].PromptTemplate != r.Agents[0].PromptTemplate ||
		pr.Traceparent == "" || pr.TaskID != "t-big" {
		t.Errorf("got request %+v, want every field as sent", pr)
	}

	// The same request gives the same bytes (a retry uploads nothing new); another
	// deliberation gives another package and module.
	again, _ := DeliberationJob("delib-big", r, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", opts)
	if again.Request.Name != job.Request.Name || !bytes.Equal(again.Request.Data, job.Request.Data) {
		t.Errorf("got a different package for the same request, want identical bytes")
	}
	other, _ := DeliberationJob("delib-other", r, "", opts)
	if other.Request.Name == job.Request.Name || other.Submit.RuntimeEnv["env_vars"].(map[string]string)[RequestModuleEnv] == module {
		t.Errorf("got the same package or module for two deliberations, want distinct ones")
	}
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestEnsurePackageUploadsOnlyWhatRayLacks(t *testing.T) {
	t.Parallel()
	pkg, _ := RequestPackage([]byte(`{"version":1}`))
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

// Normalize bounds a template's rendered size with the placeholders the payload fills in:
// both sides must name the same ones.
func TestPromptPlaceholdersMatchThePayload(t *testing.T) {
	t.Parallel()
	src, err := payloadFS.ReadFile(payloadDir + "/prompts.py")
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
