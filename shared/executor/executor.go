// Package executor is the Go side of the standing executor on Ray (DESIGN.md decision 4,
// specs/records.md): the work message a deliberation is queued as, and the Deployer that
// keeps exactly one executor version running on the cluster, resubmitting it when Ray lost
// it and rolling it when the payload or its settings change. The executor itself is the
// Python payload (ray_executor_payload.executor), run as one long-lived Ray job.
package executor

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"

	"github.com/fleet-ai/ray-executor/shared/executor/payload"

	"github.com/fleet-ai/ray-executor/shared/domain"
)

// Entrypoint is the executor job's command: fixed text, no caller input.
const Entrypoint = "python -u -m ray_executor_payload.executor"

// WorkMessage is the body of a deliberation's work message: the payload request JSON
// (version 1) the executor parses with parse_request.
func WorkMessage(id string, r domain.Request, traceparent string) ([]byte, error) {
	pr := PayloadRequest{
		Version: 1, DeliberationID: id, Kind: r.Kind, TaskID: r.TaskID, TaskDescription: r.TaskDescription,
		Role: r.Role, StoryID: r.Constraints.StoryID, PlanID: r.Constraints.PlanID,
		TimeoutSeconds: r.Constraints.TimeoutSeconds, MaxRetries: r.Constraints.MaxRetries,
		Metadata: r.Constraints.Metadata, VLLMURL: r.VLLMURL, VLLMModel: r.VLLMModel, Agents: r.Agents,
		Traceparent: traceparent,
	}
	if pr.Metadata == nil {
		pr.Metadata = map[string]string{}
	}
	var body bytes.Buffer
	enc := json.NewEncoder(&body)
	enc.SetEscapeHTML(false) // prompts are full of code and markup; read by Python, never HTML
	if err := enc.Encode(pr); err != nil {
		return nil, fmt.Errorf("executor: encode the work message of %s: %w", id, err)
	}
	return body.Bytes(), nil
}

// Version is the version of the executor the embedded payload makes when deployed with env
// (its job's environment, Settings.Env) and driverCPUs: a digest of the payload's package and
// of those settings. A change to any payload file or to any setting the executor reads
// (EXECUTOR_*, where NATS is and what its streams are called, RETENTION, the OTLP export)
// rolls the executor once the functions run with it, and nothing else does: settings reach
// the executor only when it is deployed, so without this a raised EXECUTOR_MAX_REPLICAS
// would wait for the next redeploy.
func Version(env map[string]string, driverCPUs float64) string {
	_, data := payload.Package()
	return version(data, env, driverCPUs)
}

func version(pkg []byte, env map[string]string, driverCPUs float64) string {
	h := sha256.New()
	h.Write(pkg)
	for _, k := range slices.Sorted(maps.Keys(env)) {
		// NUL cannot occur in an environment variable, so no two settings hash alike.
		fmt.Fprintf(h, "\x00%s=%s", k, env[k])
	}
	fmt.Fprintf(h, "\x00driver_num_cpus=%s", strconv.FormatFloat(driverCPUs, 'f', -1, 64))
	return hex.EncodeToString(h.Sum(nil)[:8])
}
