// Package executor is the Go side of the standing executor on Ray (DESIGN.md decision 4,
// specs/records.md): the work message a deliberation is queued as, and the Deployer that
// keeps exactly one executor version running on the cluster, resubmitting it when Ray lost
// it and rolling it when the payload changes. The executor itself is the Python payload
// (ray_executor_payload.executor), run as one long-lived Ray job.
package executor

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"

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

// Version is the executor version of the embedded payload: a digest of its package, so a
// change to any payload file rolls the executor and nothing else does.
func Version() string {
	_, data := payload.Package()
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:8])
}
