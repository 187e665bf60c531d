//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/llmstub"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

// The CLI (functions/rexctl) as a person and a script use it: the built binary as a
// subprocess against the real ingress, functions, NATS and the executor on Ray.

var (
	rexctlOnce sync.Once
	rexctlErr  error
)

// rexctlBinary builds the CLI once into the package's binary directory.
func rexctlBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(binDir, "rexctl")
	rexctlOnce.Do(func() {
		if out, err := exec.Command("go", "build", "-o", bin, "../functions/rexctl/cmd").CombinedOutput(); err != nil {
			rexctlErr = fmt.Errorf("go build rexctl: %v\n%s", err, out)
		}
	})
	if rexctlErr != nil {
		t.Fatal(rexctlErr)
	}
	return bin
}

// cli is the CLI pointed at one ingress with one caller's token file.
type cli struct {
	t      *testing.T
	bin    string
	env    []string
	secret []string // never to appear in any output
}

type cliRun struct {
	code           int
	stdout, stderr string
}

func (c *cli) run(args ...string) cliRun {
	c.t.Helper()
	return c.runWith(nil, args...)
}

// runWith runs the CLI with extra environment; stdout and stderr are pipes (no terminal).
func (c *cli) runWith(env []string, args ...string) cliRun {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bin, args...)
	cmd.Env = append(append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + c.t.TempDir()}, c.env...), env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	r := cliRun{stdout: out.String(), stderr: errOut.String()}
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		r.code = exit.ExitCode()
	case err != nil:
		c.t.Fatalf("rexctl %v: %v", args, err)
	}
	for _, s := range c.secret {
		if strings.Contains(r.stdout+r.stderr, s) {
			c.t.Fatalf("rexctl %v printed a token:\n%s%s", args, r.stdout, r.stderr)
		}
	}
	return r
}

// want fails the test unless the run exited with code.
func (r cliRun) want(t *testing.T, code int, what string) cliRun {
	t.Helper()
	if r.code != code {
		t.Fatalf("%s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", what, r.code, code, r.stdout, r.stderr)
	}
	return r
}

// guardedCLI starts an ingress in front of the shared functions whose callers are a writer
// (the CLI's token file) and a reader, and returns the CLI for the writer and the tokens.
func guardedCLI(t *testing.T) (c *cli, writer, reader string) {
	t.Helper()
	writer = "rexctl-writer-3c2f9a8b7d6e5f4a3b2c1d0e"
	reader = "rexctl-reader-0e1d2c3b4a5f6e7d8c9b0a1f"
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte("person "+writer+" write\nwatcher "+reader+" read\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(writer+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr, _ := startGuardedIngress(t, "AUTH_TOKENS_FILE="+tokens)
	return &cli{t: t, bin: rexctlBinary(t), env: []string{"REX_ADDRESS=" + addr, "REX_TOKEN_FILE=" + tokenFile},
		secret: []string{writer, reader}}, writer, reader
}

// submitArgs is a submission by flags of one agent per model.
func submitArgs(t *testing.T, llmURL string, models ...string) []string {
	args := []string{"submit", "--task-id", uniqueTask(t), "-d", "Decide how to shard the user table.", "--role", "architect",
		"--vllm-url", llmURL, "--model", "default-model", "--story-id", "story-1", "--timeout-seconds", "120", "--max-retries", "0"}
	for i, m := range models {
		args = append(args, "--agent", fmt.Sprintf("id=agent-%d,model=%s", i+1, m))
	}
	return args
}

func TestRexctlEndToEnd(t *testing.T) {
	t.Parallel()
	c, _, reader := guardedCLI(t)
	stub, url := llm(t)
	stub.Script("m1", llmstub.Behavior{Delay: 300 * time.Millisecond})
	stub.Script("m2", llmstub.Behavior{Delay: 600 * time.Millisecond})
	stub.Script("broken", llmstub.Behavior{Status: 400})
	stub.Script("hang", llmstub.Behavior{Delay: 3 * time.Minute})

	// submit (JSON output), idempotent by its key.
	args := append(submitArgs(t, url, "m1", "m2"), "--idempotency-key", "rexctl-"+uniqueTask(t), "-o", "json")
	var first, again pb.ExecuteDeliberationResponse
	r := c.run(args...).want(t, 0, "submit")
	if err := protojson.Unmarshal([]byte(r.stdout), &first); err != nil || first.GetDeliberationId() == "" || first.GetStatus() != "submitted" {
		t.Fatalf("submit -o json: %v %q", err, r.stdout)
	}
	r = c.run(args...).want(t, 0, "submit again")
	if err := protojson.Unmarshal([]byte(r.stdout), &again); err != nil || again.GetDeliberationId() != first.GetDeliberationId() || !again.GetDuplicate() {
		t.Fatalf("the same idempotency key: %v %q, want deliberation %s duplicate", err, r.stdout, first.GetDeliberationId())
	}
	id := first.GetDeliberationId()

	// watch, not on a terminal: one plain line per event, to its end.
	r = c.run("watch", id).want(t, 0, "watch")
	var kinds []string
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		if f := strings.Fields(l); len(f) >= 3 && f[2] == id {
			kinds = append(kinds, f[1])
		} else {
			t.Fatalf("watch line %q is not <time> <kind> <id> ...", l)
		}
	}
	if got := strings.Join(kinds, " "); got != "submitted started agent_completed agent_completed completed" {
		t.Errorf("watch events %q:\n%s", got, r.stdout)
	}
	if !strings.Contains(r.stdout, "agent=agent-1 model=m1") || !strings.Contains(r.stdout, "agent=agent-2 model=m2") {
		t.Errorf("watch lines lack the agents:\n%s", r.stdout)
	}

	// watch --output json: one LifecycleEvent per line, the same events.
	r = c.run("watch", id, "-o", "json").want(t, 0, "watch -o json")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != len(kinds) {
		t.Fatalf("watch -o json: %d lines, want %d", len(lines), len(kinds))
	}
	for i, l := range lines {
		var ev pb.LifecycleEvent
		if err := protojson.Unmarshal([]byte(l), &ev); err != nil || ev.GetKind() != kinds[i] || ev.GetSubject() != id {
			t.Errorf("watch -o json line %d: %v %s", i, err, l)
		}
	}

	// status, as JSON and as text.
	r = c.run("status", id, "-o", "json").want(t, 0, "status -o json")
	var st pb.GetDeliberationStatusResponse
	if err := protojson.Unmarshal([]byte(r.stdout), &st); err != nil || st.GetStatus() != "completed" || len(st.GetAgentResults()) != 2 || st.GetCompletedAgents() != 2 {
		t.Fatalf("status -o json: %v %s", err, r.stdout)
	}
	r = c.run("status", id).want(t, 0, "status")
	for _, want := range []string{"status        completed", "agents        2 (2 completed, 0 failed)", "agent-1", "agent-2", "best result: agent-"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status text lacks %q:\n%s", want, r.stdout)
		}
	}

	// submit --wait of a deliberation whose one agent fails: exit 4, its events printed.
	r = c.run(append(submitArgs(t, url, "broken"), "--wait")...).want(t, 4, "submit --wait of a failing deliberation")
	if !strings.Contains(r.stdout, " agent_failed ") || !strings.Contains(r.stdout, " failed ") || !strings.Contains(r.stderr, "ended failed") {
		t.Errorf("submit --wait failed:\nstdout %s\nstderr %s", r.stdout, r.stderr)
	}

	// A slow one: listed while it runs, cancelled, its watch ends cancelled (exit 5).
	r = c.run(append(submitArgs(t, url, "hang"), "-q")...).want(t, 0, "submit -q")
	slow := strings.TrimSpace(r.stdout)
	if strings.ContainsAny(slow, " \n") || slow == "" {
		t.Fatalf("submit -q printed %q, want the id alone", r.stdout)
	}
	listed := false
	for deadline := time.Now().Add(90 * time.Second); !listed && time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
		r = c.run("list", "-o", "json").want(t, 0, "list -o json")
		var jobs pb.GetActiveJobsResponse
		if err := protojson.Unmarshal([]byte(r.stdout), &jobs); err != nil {
			t.Fatalf("list -o json: %v %s", err, r.stdout)
		}
		for _, j := range jobs.GetJobs() {
			listed = listed || (j.GetJobId() == slow && j.GetStatus() == "RUNNING")
		}
	}
	if !listed {
		t.Fatalf("%s never listed running: %s", slow, r.stdout)
	}
	if r = c.run("list").want(t, 0, "list"); !strings.Contains(r.stdout, slow) || !strings.HasPrefix(r.stdout, "DELIBERATION") {
		t.Errorf("list text:\n%s", r.stdout)
	}
	r = c.runWith([]string{"REX_TOKEN_FILE=", "REX_TOKEN=" + reader}, "cancel", slow).want(t, 6, "cancel by a read-only caller")
	if !strings.Contains(r.stderr, "PERMISSION_DENIED") {
		t.Errorf("a reader's cancel: %s", r.stderr)
	}
	r = c.run("cancel", slow, "--reason", "rexctl e2e").want(t, 0, "cancel")
	if !strings.Contains(r.stdout, "deliberation "+slow+": cancelled") {
		t.Errorf("cancel: %q", r.stdout)
	}
	r = c.run("watch", slow).want(t, 5, "watch of a cancelled deliberation")
	if !strings.Contains(r.stdout, " cancelled "+slow) {
		t.Errorf("watch of the cancelled one:\n%s", r.stdout)
	}

	// Not found, as NOT_FOUND (watch, cancel) and as status "not_found".
	c.run("status", "delib-nobody-submitted-this").want(t, 3, "status of an unknown id")
	c.run("watch", "delib-nobody-submitted-this").want(t, 3, "watch of an unknown id")
	c.run("cancel", "delib-nobody-submitted-this").want(t, 3, "cancel of an unknown id")

	// Credentials: none, a wrong one, a reader's submit.
	c.runWith([]string{"REX_TOKEN_FILE="}, "list").want(t, 6, "no token")
	r = c.runWith([]string{"REX_TOKEN_FILE=", "REX_TOKEN=wrong-token-0123456789abcdef"}, "list").want(t, 6, "a wrong token")
	if !strings.Contains(r.stderr, "UNAUTHENTICATED") || strings.Contains(r.stderr, "wrong-token-0123456789abcdef") {
		t.Errorf("a wrong token: %q", r.stderr)
	}
	c.runWith([]string{"REX_TOKEN_FILE=", "REX_TOKEN=" + reader}, submitArgs(t, url, "m1")...).want(t, 6, "submit by a read-only caller")

	// A request the ingress refuses: exit 2, the field named.
	r = c.run("submit", "--task-id", "t", "--agent", "a1", "--vllm-url", url).want(t, 2, "an invalid request")
	if !strings.Contains(r.stderr, "INVALID_ARGUMENT") {
		t.Errorf("an invalid request: %q", r.stderr)
	}

	// health: the exit code follows the status it prints.
	r = c.run("health")
	if wantCode := map[bool]int{true: 0, false: 7}[strings.HasPrefix(r.stdout, "healthy ")]; r.code != wantCode || !strings.Contains(r.stdout, "version") {
		t.Errorf("health: exit %d with:\n%s%s", r.code, r.stdout, r.stderr)
	}
	// Nothing listening: retry later.
	c.runWith([]string{"REX_ADDRESS=127.0.0.1:1"}, "list", "--timeout", "3s").want(t, 7, "no ingress")
}

// tmuxBinary is tmux, which the machines have (/usr/bin/tmux); without it the test fails,
// in CI and out of it: the live display is tested as a person sees it or not at all.
func tmuxBinary(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("tmux")
	if err != nil {
		t.Fatalf("tmux is needed to test the CLI's live display (apt-get install tmux): %v", err)
	}
	return bin
}

// tmuxServer is a tmux server of the test's own (its own socket), so no other is touched.
type tmuxServer struct {
	t      *testing.T
	bin    string
	socket string
}

func newTmux(t *testing.T) *tmuxServer {
	t.Helper()
	dir, err := os.MkdirTemp("", "rexctl-tmux-") // short: a socket path has at most 107 bytes
	if err != nil {
		t.Fatal(err)
	}
	s := &tmuxServer{t: t, bin: tmuxBinary(t), socket: filepath.Join(dir, "s")}
	conf := filepath.Join(dir, "tmux.conf")
	// remain-on-exit keeps a pane whose program ended, with its last screen.
	if err := os.WriteFile(conf, []byte("set -g remain-on-exit on\nset -g status off\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = exec.Command(s.bin, "-S", s.socket, "kill-server").Run()
		os.RemoveAll(dir)
	})
	// The server starts with its configuration and a placeholder session.
	s.cmd("-f", conf, "new-session", "-d", "-s", "boot", "-x", "80", "-y", "10", "sleep", "600")
	return s
}

// cmd runs one tmux command (arguments passed as they are, never through a shell).
func (s *tmuxServer) cmd(args ...string) string {
	s.t.Helper()
	out, err := exec.Command(s.bin, append([]string{"-S", s.socket}, args...)...).CombinedOutput()
	if err != nil {
		s.t.Fatalf("tmux %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// run starts program with args in a new session name of width x height, with env. The
// program's exit status is written to a file when it ends: tmux's own #{pane_dead_status}
// is sometimes never filled in (seen with tmux 3.3a: the pane dead, the status empty for
// good). The script is a fixed literal; program and args reach it as positional parameters
// ("$@"), never as shell text.
func (s *tmuxServer) run(name string, width, height int, env []string, program string, args ...string) {
	s.t.Helper()
	a := []string{"new-session", "-d", "-s", name, "-x", fmt.Sprint(width), "-y", fmt.Sprint(height)}
	for _, e := range env {
		a = append(a, "-e", e)
	}
	status := s.statusFile(name)
	a = append(a, "sh", "-c", `"$@"; echo $? > "$0.tmp" && mv "$0.tmp" "$0"`, status, program)
	s.cmd(append(a, args...)...)
}

// statusFile is where the program of session name leaves its exit status.
func (s *tmuxServer) statusFile(name string) string {
	return filepath.Join(filepath.Dir(s.socket), name+".status")
}

func (s *tmuxServer) screen(name string) string { return s.cmd("capture-pane", "-p", "-t", name) }

// exited reports whether the session's program ended, and its exit status.
func (s *tmuxServer) exited(name string) (bool, int) {
	b, err := os.ReadFile(s.statusFile(name))
	if err != nil {
		return false, 0
	}
	code, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return err == nil, code
}

// waitExit waits until the session's program has ended, and returns its exit status.
func (s *tmuxServer) waitExit(name, when string) int {
	s.t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if dead, code := s.exited(name); dead {
			return code
		}
	}
	s.t.Fatalf("the program in %s did not exit %s within 30 s:\n%s", name, when, s.screen(name))
	return -1
}

// waitScreen polls the session's screen until ok accepts it, and returns it.
func (s *tmuxServer) waitScreen(name string, within time.Duration, what string, ok func(string) bool) string {
	s.t.Helper()
	var last string
	for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if last = s.screen(name); ok(last) {
			return last
		}
	}
	s.t.Fatalf("the screen never showed %s within %s; last screen:\n%s", what, within, last)
	return ""
}

// A person runs `rexctl watch` in a terminal (tmux, 100x20): the screen shows each agent's
// progress live, the elapsed time, and the final state, which stays on the screen after it
// exits 0; a second watch is left with Ctrl-C, exit 130, the deliberation going on.
func TestRexctlWatchInTmux(t *testing.T) {
	t.Parallel()
	tm := newTmux(t)
	c, _, _ := guardedCLI(t)
	stub, url := llm(t)
	stub.Script("quick", llmstub.Behavior{Delay: 500 * time.Millisecond})
	stub.Script("slow", llmstub.Behavior{Delay: 4 * time.Second})
	stub.Script("broken", llmstub.Behavior{Status: 400})
	stub.Script("hang", llmstub.Behavior{Delay: 3 * time.Minute})

	id := strings.TrimSpace(c.run(append(submitArgs(t, url, "quick", "slow", "broken"), "-q")...).want(t, 0, "submit").stdout)
	tm.run("watch", 100, 20, c.env, c.bin, "watch", id)

	// Live: the quick agent done and the broken one failed while the slow one still runs.
	live := tm.waitScreen("watch", 90*time.Second, "one agent done, one failed, one running", func(s string) bool {
		return strings.Contains(s, "running 1") && strings.Contains(s, "done 1") && strings.Contains(s, "failed 1")
	})
	// An agent still running is known by its index only: no event has named it yet.
	for _, want := range []string{"deliberation " + id, "running ", "2/3 agents finished", "elapsed 00:", "agent-1", "agent #2", "agent-3", "q or Ctrl-C"} {
		if !strings.Contains(live, want) {
			t.Errorf("the live screen lacks %q:\n%s", want, live)
		}
	}
	if row := lineWith(live, "agent-3"); !strings.Contains(row, "failed") || !strings.Contains(row, "broken") {
		t.Errorf("agent-3's row %q: want failed with its model", row)
	}
	if row := lineWith(live, "agent #2"); !strings.Contains(row, "running") {
		t.Errorf("agent-2's row %q: want running", row)
	}

	// The end: completed, the final screen kept, exit status 0.
	final := tm.waitScreen("watch", 90*time.Second, "completed", func(s string) bool { return strings.Contains(s, "completed in ") })
	for _, want := range []string{"3/3 agents finished", "done 2", "failed 1", "score "} {
		if !strings.Contains(final, want) {
			t.Errorf("the final screen lacks %q:\n%s", want, final)
		}
	}
	if row := lineWith(final, "agent-2"); !strings.Contains(row, "done") || !strings.Contains(row, "slow") {
		t.Errorf("agent-2's final row %q: want done", row)
	}
	if code := tm.waitExit("watch", "after the deliberation completed"); code != 0 {
		t.Errorf("watch of a completed deliberation exited %d in the terminal", code)
	}

	// Ctrl-C leaves the watch (exit 130); the deliberation goes on, and is then cancelled.
	hung := strings.TrimSpace(c.run(append(submitArgs(t, url, "hang"), "-q")...).want(t, 0, "submit").stdout)
	tm.run("quit", 100, 20, c.env, c.bin, "watch", hung)
	tm.waitScreen("quit", 90*time.Second, "the agent running", func(s string) bool { return strings.Contains(s, "running 1") })
	tm.cmd("send-keys", "-t", "quit", "C-c")
	tm.waitScreen("quit", 10*time.Second, "that watching stopped", func(s string) bool { return strings.Contains(s, "stopped watching") })
	if code := tm.waitExit("quit", "after Ctrl-C"); code != 130 {
		t.Errorf("Ctrl-C: exit %d, want 130", code)
	}
	var st pb.GetDeliberationStatusResponse
	r := c.run("status", hung, "-o", "json").want(t, 0, "status after Ctrl-C")
	if err := protojson.Unmarshal([]byte(r.stdout), &st); err != nil || st.GetStatus() != "running" {
		t.Errorf("after Ctrl-C the deliberation should go on running: %v %s", err, r.stdout)
	}
	c.run("cancel", hung).want(t, 0, "cancel")
}

// lineWith is the first line of screen containing s.
func lineWith(screen, s string) string {
	for _, l := range strings.Split(screen, "\n") {
		if strings.Contains(l, s) {
			return l
		}
	}
	return ""
}

// The CLI's TLS options against an ingress that requires client certificates: the CA and a
// client certificate get in (from flags or the environment); no certificate, no TLS, or a
// server it cannot verify is UNAVAILABLE, exit 7.
func TestRexctlMutualTLS(t *testing.T) {
	t.Parallel()
	ca := testenv.NewCA(t, "rexctl-e2e-ca")
	serverCert, serverKey := ca.Issue(t, "ingress", []string{"ingress.test"}, true)
	clientCert, clientKey := ca.Issue(t, "alice", nil, false)
	addr, _ := startGuardedIngress(t, "TLS_CERT_FILE="+serverCert, "TLS_KEY_FILE="+serverKey, "TLS_CLIENT_CA_FILE="+ca.CertFile)
	c := &cli{t: t, bin: rexctlBinary(t), env: []string{"REX_ADDRESS=" + addr}}
	certFlags := []string{"--ca-file", ca.CertFile, "--cert-file", clientCert, "--key-file", clientKey}

	r := c.run(append([]string{"list"}, certFlags...)...).want(t, 0, "list with the CA and a client certificate")
	if !strings.HasPrefix(r.stdout, "DELIBERATION") && r.stdout != "no active deliberations\n" {
		t.Errorf("list over mutual TLS: %q", r.stdout)
	}
	r = c.run(append([]string{"health", "--server-name", "ingress.test", "-o", "json"}, certFlags...)...)
	var health pb.GetStatusResponse
	if err := protojson.Unmarshal([]byte(r.stdout), &health); err != nil || health.GetVersion() == "" ||
		r.code != map[bool]int{true: 0, false: 7}[health.GetStatus() == "healthy"] {
		t.Errorf("health over mutual TLS with --server-name: exit %d, %v, %s%s", r.code, err, r.stdout, r.stderr)
	}
	c.runWith([]string{"REX_CA_FILE=" + ca.CertFile, "REX_CERT_FILE=" + clientCert, "REX_KEY_FILE=" + clientKey}, "list").
		want(t, 0, "list with the TLS files from the environment")
	c.run("list", "--insecure-skip-verify", "--cert-file", clientCert, "--key-file", clientKey).want(t, 0, "list without verifying the server")

	c.run("list", "--ca-file", ca.CertFile, "--timeout", "5s").want(t, 7, "no client certificate")
	c.run("list", "--timeout", "5s").want(t, 7, "plaintext to a TLS ingress")
	c.run("list", "--tls", "--cert-file", clientCert, "--key-file", clientKey, "--timeout", "5s").want(t, 7, "a server certificate the system does not trust")
	c.run(append([]string{"list", "--server-name", "other.test", "--timeout", "5s"}, certFlags...)...).want(t, 7, "a server name the certificate does not carry")
}
