package serving

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"knative.dev/pkg/network"
)

// The probes that decide routing follow the dependencies only until the replica has started
// once; the ingress's plain GET /readyz keeps reporting them (issue 15).
func TestReadinessDoesNotCascade(t *testing.T) {
	var down atomic.Bool
	down.Store(true) // NATS not reached yet at start
	var calls atomic.Int32
	h := Probes(appHandler, func(context.Context) error {
		calls.Add(1)
		if down.Load() {
			return errors.New("NATS is not connected")
		}
		return nil
	})
	ask := func(path string, header map[string]string) (int, string) {
		req, err := http.NewRequest(http.MethodGet, "http://fn"+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range header {
			req.Header.Set(k, v)
		}
		w := &recorder{header: http.Header{}}
		h.ServeHTTP(w, req)
		if w.status == 0 {
			w.status = http.StatusOK
		}
		return w.status, w.body.String()
	}
	kubelet := map[string]string{"User-Agent": network.KubeProbeUAPrefix + "1.33", network.ProbeHeaderName: "queue"}
	netProbe := map[string]string{network.ProbeHeaderName: network.ProbeHeaderValue}

	// Before the first success: not ready, whoever asks, with the reason.
	for _, hdr := range []map[string]string{kubelet, netProbe, nil} {
		if code, body := ask(ReadinessPath, hdr); code != http.StatusServiceUnavailable || !strings.Contains(body, "NATS is not connected") {
			t.Errorf("before start, %v: %d %q, want 503 with the reason", hdr, code, body)
		}
	}
	down.Store(false)
	if code, _ := ask(ReadinessPath, kubelet); code != http.StatusOK {
		t.Fatalf("started: kubelet probe %d", code)
	}
	// The dependency goes away: routing probes stay ready without asking it again; the
	// plain check reports it.
	down.Store(true)
	before := calls.Load()
	for _, hdr := range []map[string]string{kubelet, netProbe} {
		if code, body := ask(ReadinessPath, hdr); code != http.StatusOK {
			t.Errorf("dependency down, %v: %d %q, want 200 (readiness must not cascade)", hdr, code, body)
		}
	}
	if code, _ := ask("/", kubelet); code != http.StatusOK {
		t.Errorf("dependency down, kubelet probe on /: %d, want 200", code)
	}
	if calls.Load() != before {
		t.Errorf("routing probes asked the dependency %d times after start, want 0", calls.Load()-before)
	}
	if code, body := ask(ReadinessPath, nil); code != http.StatusServiceUnavailable || !strings.Contains(body, "NATS is not connected") {
		t.Errorf("dependency down, plain GET /readyz: %d %q, want 503 with the reason (GetStatus reads it)", code, body)
	}
	if code, _ := ask(LivenessPath, kubelet); code != http.StatusOK {
		t.Errorf("liveness: %d", code)
	}
}
