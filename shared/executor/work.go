package executor

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"

	"github.com/fleet-ai/ray-executor/shared/domain"
)

// PayloadRequest is the body of a work message (WorkMessage), the JSON the executor parses
// with parse_request (payload/ray_executor_payload/request.py). It is the contract between
// the Go side and the payload; change both together (specs/records.md).
type PayloadRequest struct {
	Version         int               `json:"version"`
	DeliberationID  string            `json:"deliberation_id"`
	Kind            domain.Kind       `json:"kind"`
	TaskID          string            `json:"task_id"`
	TaskDescription string            `json:"task_description"`
	Role            string            `json:"role"`
	StoryID         string            `json:"story_id"`
	PlanID          string            `json:"plan_id"`
	TimeoutSeconds  int32             `json:"timeout_seconds"`
	MaxRetries      int32             `json:"max_retries"`
	Metadata        map[string]string `json:"metadata"`
	VLLMURL         string            `json:"vllm_url"`
	VLLMModel       string            `json:"vllm_model"`
	Agents          []domain.Agent    `json:"agents"`
	Traceparent     string            `json:"traceparent,omitempty"`
}

// RequestHash identifies a normalized request's content, to tell a retried request from a
// different request that reuses an idempotency key.
func RequestHash(r domain.Request) string {
	b, _ := json.Marshal(r) // maps marshal with sorted keys: stable
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}
