package testenv

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/fleet-ai/ray-executor/shared/testenv/podnet"
)

// Knative's data plane in the tests (issue 15): Knative Serving's own queue-proxy
// (knative.dev/serving/cmd/queue, built by `make queue-proxy` into bin/queue-proxy) in front
// of a function binary, the two sharing a network namespace as a revision's pod's containers
// do. Everything queue-proxy is told comes from the Service in knative/<service>.yaml
// (containerConcurrency, timeoutSeconds, the readiness probe, the port and its protocol), so
// the manifests and the tests cannot drift.

// Ports queue-proxy listens on inside a pod (knative.dev/networking's defaults, fixed in
// queue-proxy).
const (
	QueueHTTPPort  = 8012 // the serving port of an http1 revision
	QueueH2CPort   = 8013 // the serving port of an h2c revision (a port named "h2c")
	QueueHTTPSPort = 8112
	QueueAdminPort = 8022 // /drain, the preStop hook's target
)

// Revision is what a revision of one Knative Service gives queue-proxy and the container.
type Revision struct {
	Service   string
	Namespace string
	// ContainerConcurrency is the hard limit (0: none), TimeoutSeconds the request timeout
	// (Knative's default 300 when the Service sets none).
	ContainerConcurrency        int
	TimeoutSeconds              int
	ResponseStartTimeoutSeconds int
	IdleTimeoutSeconds          int
	ContainerPort               int  // 8080 when unset
	H2C                         bool // the port is named h2c: queue-proxy serves on 8013 and speaks h2c to the container
	// ReadinessProbe is the container's readiness probe after Knative's defaulting, as
	// queue-proxy receives it in SERVING_READINESS_PROBE.
	ReadinessProbe json.RawMessage
	// Env is the container's literal environment (name=value), without values from Secrets
	// or ConfigMaps.
	Env []string
}

type knativeService struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name      string `yaml:"name"`
		Namespace string `yaml:"namespace"`
	} `yaml:"metadata"`
	Spec struct {
		Template struct {
			Spec struct {
				ContainerConcurrency        *int `yaml:"containerConcurrency"`
				TimeoutSeconds              *int `yaml:"timeoutSeconds"`
				ResponseStartTimeoutSeconds *int `yaml:"responseStartTimeoutSeconds"`
				IdleTimeoutSeconds          *int `yaml:"idleTimeoutSeconds"`
				Containers                  []struct {
					Ports []struct {
						Name          string `yaml:"name"`
						ContainerPort int    `yaml:"containerPort"`
					} `yaml:"ports"`
					Env []struct {
						Name  string  `yaml:"name"`
						Value *string `yaml:"value"`
					} `yaml:"env"`
					ReadinessProbe map[string]any `yaml:"readinessProbe"`
				} `yaml:"containers"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

// RepoRoot is the main module's directory (found upwards from the working directory).
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && bytes.HasPrefix(b, []byte("module github.com/fleet-ai/ray-executor\n")) {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("testenv: not inside the ray-executor module")
		}
		dir = parent
	}
}

// LoadRevision reads the Service named service from knative/<service>.yaml.
func LoadRevision(t testing.TB, service string) Revision {
	t.Helper()
	path := filepath.Join(RepoRoot(t), "knative", service+".yaml")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for {
		var ks knativeService
		if err := dec.Decode(&ks); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("testenv: %s: %v", path, err)
		}
		if ks.APIVersion != "serving.knative.dev/v1" || ks.Kind != "Service" || ks.Metadata.Name != service {
			continue
		}
		return ks.revision(t, path)
	}
	t.Fatalf("testenv: %s has no Knative Service %q", path, service)
	return Revision{}
}

func (ks *knativeService) revision(t testing.TB, path string) Revision {
	t.Helper()
	spec := ks.Spec.Template.Spec
	if len(spec.Containers) != 1 {
		t.Fatalf("testenv: %s: want one container, have %d", path, len(spec.Containers))
	}
	c := spec.Containers[0]
	r := Revision{Service: ks.Metadata.Name, Namespace: ks.Metadata.Namespace, TimeoutSeconds: 300, ContainerPort: 8080}
	for _, v := range []struct {
		dst *int
		src *int
	}{{&r.ContainerConcurrency, spec.ContainerConcurrency}, {&r.TimeoutSeconds, spec.TimeoutSeconds},
		{&r.ResponseStartTimeoutSeconds, spec.ResponseStartTimeoutSeconds}, {&r.IdleTimeoutSeconds, spec.IdleTimeoutSeconds}} {
		if v.src != nil {
			*v.dst = *v.src
		}
	}
	if len(c.Ports) > 0 {
		if c.Ports[0].ContainerPort != 0 {
			r.ContainerPort = c.Ports[0].ContainerPort
		}
		r.H2C = c.Ports[0].Name == "h2c"
	}
	for _, e := range c.Env {
		if e.Value != nil {
			r.Env = append(r.Env, e.Name+"="+*e.Value)
		}
	}
	probe, err := json.Marshal(knativeReadinessProbe(c.ReadinessProbe, r.ContainerPort))
	if err != nil {
		t.Fatalf("testenv: %s: readiness probe: %v", path, err)
	}
	r.ReadinessProbe = probe
	return r
}

// knativeReadinessProbe applies what Knative does to a user container's readiness probe
// before handing it to queue-proxy: the webhook's defaults (a TCP probe when none is given,
// successThreshold 1, Kubernetes' thresholds when periodSeconds is set), then the revision
// reconciler's (the probe aims at 127.0.0.1 and the container's port; http scheme).
func knativeReadinessProbe(p map[string]any, port int) map[string]any {
	out := map[string]any{}
	for k, v := range p {
		out[k] = v
	}
	handler := func(key string) map[string]any {
		m, _ := out[key].(map[string]any)
		return m
	}
	if handler("tcpSocket") == nil && handler("httpGet") == nil && handler("exec") == nil && handler("grpc") == nil {
		out["tcpSocket"] = map[string]any{}
	}
	if n, _ := out["successThreshold"].(int); n == 0 {
		out["successThreshold"] = 1
	}
	if period, _ := out["periodSeconds"].(int); period != 0 {
		if n, _ := out["failureThreshold"].(int); n == 0 {
			out["failureThreshold"] = 3
		}
		if n, _ := out["timeoutSeconds"].(int); n < 1 {
			out["timeoutSeconds"] = 1
		}
	}
	aim := func(h map[string]any) map[string]any {
		c := map[string]any{}
		for k, v := range h {
			c[k] = v
		}
		c["host"] = "127.0.0.1"
		if n, _ := c["port"].(int); n == 0 {
			c["port"] = port
		}
		return c
	}
	switch {
	case handler("httpGet") != nil:
		h := aim(handler("httpGet"))
		if h["scheme"] == nil {
			h["scheme"] = "HTTP"
		}
		out["httpGet"] = h
	case handler("tcpSocket") != nil:
		out["tcpSocket"] = aim(handler("tcpSocket"))
	case handler("exec") != nil: // queue-proxy probes an exec probe's container over TCP
		delete(out, "exec")
		out["tcpSocket"] = map[string]any{"host": "127.0.0.1", "port": port}
	case handler("grpc") != nil:
		g := map[string]any{}
		for k, v := range handler("grpc") {
			g[k] = v
		}
		g["port"] = port
		if g["service"] == nil {
			g["service"] = ""
		}
		out["grpc"] = g
	}
	return out
}

// servingPort is queue-proxy's serving port for the revision.
func (r Revision) servingPort() int {
	if r.H2C {
		return QueueH2CPort
	}
	return QueueHTTPPort
}

// knativeLoggingConfig is Knative's default zap configuration (config-logging's
// zap-logger-config), which queue-proxy reads from SERVING_LOGGING_CONFIG.
const knativeLoggingConfig = `{"level":"info","development":false,"outputPaths":["stdout"],"errorOutputPaths":["stderr"],` +
	`"encoding":"json","encoderConfig":{"timeKey":"timestamp","levelKey":"severity","nameKey":"logger","callerKey":"caller",` +
	`"messageKey":"message","stacktraceKey":"stacktrace","lineEnding":"","levelEncoder":"","timeEncoder":"iso8601",` +
	`"durationEncoder":"","callerEncoder":""}}`

// QueueProxyEnv is the environment Knative's revision reconciler gives the queue-proxy
// container of this revision's pod (knative.dev/serving pkg/reconciler/revision/resources,
// v0.50.0), with Knative's default configuration: one pod IP, no TLS, no HTTP/2 auto
// detection, no multi-container probing, default observability.
func (r Revision) QueueProxyEnv() []string {
	rev := r.Service + "-00001"
	return []string{
		"SERVING_NAMESPACE=" + r.Namespace,
		"SERVING_SERVICE=" + r.Service,
		"SERVING_CONFIGURATION=" + r.Service,
		"SERVING_REVISION=" + rev,
		"SERVING_POD=" + rev + "-deployment-0",
		"SERVING_POD_IP=127.0.0.1",
		"HOST_IP=127.0.0.1",
		"QUEUE_SERVING_PORT=" + strconv.Itoa(r.servingPort()),
		"QUEUE_SERVING_TLS_PORT=" + strconv.Itoa(QueueHTTPSPort),
		"USER_PORT=" + strconv.Itoa(r.ContainerPort),
		"CONTAINER_CONCURRENCY=" + strconv.Itoa(r.ContainerConcurrency),
		"REVISION_TIMEOUT_SECONDS=" + strconv.Itoa(r.TimeoutSeconds),
		"REVISION_RESPONSE_START_TIMEOUT_SECONDS=" + strconv.Itoa(r.ResponseStartTimeoutSeconds),
		"REVISION_IDLE_TIMEOUT_SECONDS=" + strconv.Itoa(r.IdleTimeoutSeconds),
		"SERVING_READINESS_PROBE=" + string(r.ReadinessProbe),
		"SERVING_LOGGING_CONFIG=" + knativeLoggingConfig,
		"SERVING_LOGGING_LEVEL=info",
		"SYSTEM_NAMESPACE=knative-serving",
		"ENABLE_HTTP2_AUTO_DETECTION=false",
		"ENABLE_HTTP_FULL_DUPLEX=false",
		"ENABLE_MULTI_CONTAINER_PROBES=false",
		"ROOT_CA=",
		"QUEUE_PROXY_TLS_MIN_VERSION=",
		"QUEUE_PROXY_TLS_MAX_VERSION=",
		"QUEUE_PROXY_TLS_CIPHER_SUITES=",
		"QUEUE_PROXY_TLS_CURVE_PREFERENCES=",
	}
}

// ContainerEnv is what Knative sets in the user container (PORT, K_SERVICE,
// K_CONFIGURATION, K_REVISION), then the Service's literal env.
func (r Revision) ContainerEnv() []string {
	return append([]string{
		"PORT=" + strconv.Itoa(r.ContainerPort),
		"K_SERVICE=" + r.Service,
		"K_CONFIGURATION=" + r.Service,
		"K_REVISION=" + r.Service + "-00001",
	}, r.Env...)
}

// QueueProxyBin is bin/queue-proxy (QUEUE_PROXY_BIN overrides it); the test fails without it.
func QueueProxyBin(t testing.TB) string {
	t.Helper()
	bin := os.Getenv("QUEUE_PROXY_BIN")
	if bin == "" {
		bin = filepath.Join(RepoRoot(t), "bin", "queue-proxy")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("testenv: Knative's queue-proxy is not built (%v): run `make queue-proxy` (make test does)", err)
	}
	return bin
}

// Pod is a network namespace of its own for a revision's processes (cmd/pod holds it),
// reached from the test through Unix-socket relays.
type Pod struct {
	Name   string
	dir    string
	holder *exec.Cmd
	addrs  map[int]string
}

// NewPod starts a pod whose ports in are reachable from the test (Addr) and from which
// 127.0.0.1:<p> for each port in out reaches 127.0.0.1:<p> outside (NATS, Ray, other pods).
func NewPod(t testing.TB, name string, in, out []int) *Pod {
	t.Helper()
	dir, err := os.MkdirTemp("", "pod-") // short: a Unix socket's path is at most 107 bytes
	if err != nil {
		t.Fatal(err)
	}
	p := &Pod{Name: name, dir: dir, addrs: map[int]string{}}
	var listeners []net.Listener
	t.Cleanup(func() {
		if p.holder != nil && p.holder.Process != nil {
			_ = p.holder.Process.Kill()
			_ = p.holder.Wait()
		}
		for _, ln := range listeners {
			ln.Close()
		}
		os.RemoveAll(dir)
	})
	pod := filepath.Join(dir, "pod")
	if b, err := exec.Command("go", "build", "-o", pod, "github.com/fleet-ai/ray-executor/shared/testenv/cmd/pod").CombinedOutput(); err != nil {
		t.Fatalf("testenv: building the pod holder: %v\n%s", err, b)
	}
	for _, port := range out {
		ln, err := net.Listen("unix", filepath.Join(dir, fmt.Sprintf("out-%d.sock", port)))
		if err != nil {
			t.Fatal(err)
		}
		listeners = append(listeners, ln)
		go podnet.Relay(ln, "tcp", fmt.Sprintf("127.0.0.1:%d", port))
	}
	args := []string{"--net"}
	if os.Geteuid() != 0 {
		args = append(args, "--map-root-user")
	}
	args = append(args, "--", pod, "-dir", dir, "-in", joinPorts(in), "-out", joinPorts(out))
	p.holder = exec.Command("unshare", args...)
	p.holder.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := p.holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	p.holder.Stderr = &stderr
	if err := p.holder.Start(); err != nil {
		t.Fatalf("testenv: unshare --net (a network namespace per pod): %v", err)
	}
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	if strings.TrimSpace(line) != "ready" {
		_ = p.holder.Wait()
		t.Fatalf("testenv: pod %s did not start (a network namespace needs root or unprivileged user namespaces): %s", name, stderr.String())
	}
	for _, port := range in {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		listeners = append(listeners, ln)
		p.addrs[port] = ln.Addr().String()
		go podnet.Relay(ln, "unix", filepath.Join(dir, fmt.Sprintf("in-%d.sock", port)))
	}
	return p
}

func joinPorts(ports []int) string {
	s := make([]string, len(ports))
	for i, p := range ports {
		s[i] = strconv.Itoa(p)
	}
	return strings.Join(s, ",")
}

// Addr is the address outside the pod that reaches port inside it (one of NewPod's in).
func (p *Pod) Addr(port int) string { return p.addrs[port] }

// PodProcess is one process in a pod.
type PodProcess struct {
	Name string
	Cmd  *exec.Cmd
	out  *SyncBuffer
	done chan struct{}
}

// SyncBuffer is a bytes.Buffer safe for a child process's output and a test reading it.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *SyncBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *SyncBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Start runs bin in the pod with env (and PATH) as its whole environment; it is killed when
// the test ends, and its output logged if the test failed.
func (p *Pod) Start(t testing.TB, name, bin string, env []string) *PodProcess {
	t.Helper()
	var args []string
	if os.Geteuid() == 0 {
		args = []string{fmt.Sprintf("--net=/proc/%d/ns/net", p.holder.Process.Pid)}
	} else {
		args = []string{"--target", strconv.Itoa(p.holder.Process.Pid), "--user", "--net", "--preserve-credentials"}
	}
	pp := &PodProcess{Name: p.Name + "/" + name, out: &SyncBuffer{}, done: make(chan struct{})}
	pp.Cmd = exec.Command("nsenter", append(args, "--", bin)...) // nsenter execs bin: the pid is bin's
	pp.Cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	pp.Cmd.Stdout, pp.Cmd.Stderr = pp.out, pp.out
	pp.Cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := pp.Cmd.Start(); err != nil {
		t.Fatalf("testenv: nsenter %s: %v", pp.Name, err)
	}
	go func() { _ = pp.Cmd.Wait(); close(pp.done) }()
	t.Cleanup(func() {
		pp.Kill()
		if t.Failed() {
			t.Logf("%s output:\n%s", pp.Name, pp.Output())
		}
	})
	return pp
}

// Output is what the process wrote so far.
func (pp *PodProcess) Output() string { return pp.out.String() }

// Signal sends sig to the process.
func (pp *PodProcess) Signal(sig syscall.Signal) { _ = pp.Cmd.Process.Signal(sig) }

// Exited is closed when the process has ended.
func (pp *PodProcess) Exited() <-chan struct{} { return pp.done }

// Kill ends the process at once and waits for it.
func (pp *PodProcess) Kill() {
	_ = pp.Cmd.Process.Kill()
	<-pp.done
}

// Served is one revision's pod: the container (a function binary) with Knative's
// queue-proxy in front of it.
type Served struct {
	Revision   Revision
	Pod        *Pod
	Container  *PodProcess
	QueueProxy *PodProcess
	// URL reaches queue-proxy's serving port (http://127.0.0.1:<port>): what the activator
	// or the cluster's ingress would call.
	URL string
	// AdminURL reaches queue-proxy's admin port (/drain).
	AdminURL string
}

// ServeRevision starts bin as the container of knative/<service>.yaml's revision, with
// queue-proxy in front, in a pod of their own whose 127.0.0.1:<p> reaches the test's
// 127.0.0.1:<p> for each port in out. The container's environment is ContainerEnv, then
// env; it waits until queue-proxy reports the revision ready (its readiness probe of the
// container passed), within 30 s.
func ServeRevision(t testing.TB, service, bin string, env []string, out []int) *Served {
	t.Helper()
	return Serve(t, LoadRevision(t, service), bin, env, out)
}

// Serve is ServeRevision for a revision read with LoadRevision (and changed by the test).
func Serve(t testing.TB, r Revision, bin string, env []string, out []int) *Served {
	t.Helper()
	service := r.Service
	qp := QueueProxyBin(t)
	pod := NewPod(t, service, []int{r.servingPort(), QueueAdminPort}, out)
	s := &Served{Revision: r, Pod: pod,
		URL: "http://" + pod.Addr(r.servingPort()), AdminURL: "http://" + pod.Addr(QueueAdminPort)}
	s.Container = pod.Start(t, service, bin, append(r.ContainerEnv(), env...))
	s.QueueProxy = pod.Start(t, "queue-proxy", qp, r.QueueProxyEnv())
	deadline := time.Now().Add(30 * time.Second)
	for !s.Ready() {
		if time.Now().After(deadline) {
			t.Fatalf("testenv: queue-proxy did not report %s ready within 30 s\n%s:\n%s\nqueue-proxy:\n%s",
				service, service, s.Container.Output(), s.QueueProxy.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return s
}

// Ready asks queue-proxy as the kubelet does (its readiness probe: K-Network-Probe: queue on
// the serving port): true once queue-proxy's probe of the container passes.
func (s *Served) Ready() bool {
	code, _ := s.Probe("queue")
	return code == http.StatusOK
}

// Probe sends a GET with K-Network-Probe: value (queue: the kubelet's readiness probe of
// queue-proxy; probe: Knative's network probe) to queue-proxy and returns the status and
// the K-Network-Hash header of the answer.
func (s *Served) Probe(value string) (int, string) {
	req, _ := http.NewRequest(http.MethodGet, s.URL+"/", nil)
	req.Header.Set("K-Network-Probe", value)
	req.Header.Set("K-Network-Hash", "test-hash")
	if value == "queue" { // the kubelet's probe; the network probe comes from Knative's prober
		req.Header.Set("User-Agent", "kube-probe/1.33")
	}
	resp, err := (&http.Client{Timeout: 15 * time.Second}).Do(req)
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, resp.Header.Get("K-Network-Hash")
}

// Terminate stops the pod as the kubelet stops a revision's pod: SIGTERM to queue-proxy at
// once, and the container's preStop hook (GET /wait-for-drain on queue-proxy's admin port,
// which returns once queue-proxy has drained: 30 s without a request, fixed in queue-proxy)
// before SIGTERM to the container; SIGKILL to what still runs after grace. It returns once
// both processes have ended.
func (s *Served) Terminate(grace time.Duration) {
	s.QueueProxy.Signal(syscall.SIGTERM)
	go func() {
		if resp, err := (&http.Client{Timeout: grace}).Get(s.AdminURL + "/wait-for-drain"); err == nil {
			resp.Body.Close()
		}
		s.Container.Signal(syscall.SIGTERM)
	}()
	timer := time.NewTimer(grace)
	defer timer.Stop()
	for _, p := range []*PodProcess{s.QueueProxy, s.Container} {
		select {
		case <-p.Exited():
		case <-timer.C:
			p.Kill()
		}
	}
}
