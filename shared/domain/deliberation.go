package domain

import (
	"fmt"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"unicode/utf8"
)

// Kind tells the two kinds of deliberation apart; it travels in the record and the events.
type Kind string

const (
	KindDeliberation  Kind = "deliberation"
	KindBacklogReview Kind = "backlog_review"
)

// Defaults applied when a request leaves a constraint at zero (COMPAT.md).
const (
	DefaultTimeoutSeconds = 300
	DefaultMaxRetries     = 3
)

// Agent is one LLM participant of a deliberation.
type Agent struct {
	ID             string `json:"id"`
	Role           string `json:"role"`
	Model          string `json:"model"`
	PromptTemplate string `json:"prompt_template"`
	// VLLMURL overrides the request's endpoint for this agent when set.
	VLLMURL string `json:"vllm_url"`
}

// Constraints bound a deliberation. Backlog reviews have no plan.
type Constraints struct {
	StoryID        string            `json:"story_id"`
	PlanID         string            `json:"plan_id"`
	TimeoutSeconds int32             `json:"timeout_seconds"`
	MaxRetries     int32             `json:"max_retries"`
	Metadata       map[string]string `json:"metadata"`
}

// Request is a deliberation as callers submit it, either kind.
type Request struct {
	Kind            Kind
	TaskID          string
	TaskDescription string
	Role            string
	Constraints     Constraints
	Agents          []Agent
	VLLMURL         string
	VLLMModel       string
}

// TaskType is the metadata entry that routes compatible NATS subjects (COMPAT.md).
func (r Request) TaskType() string { return r.Constraints.Metadata["task_type"] }

// Limits are the bounds the original lacked. Zero values mean "use the default".
type Limits struct {
	MaxAgents              int
	MaxDescriptionBytes    int
	MaxMetadataBytes       int // keys and values of constraints.metadata, summed
	MaxPromptTemplateBytes int
	MaxTimeoutSeconds      int32
	MaxRetries             int32
	// Endpoints restricts vllm_url (request and per agent); nil checks only the URL's shape.
	Endpoints *EndpointPolicy
}

// DefaultLimits are generous for real deliberations and keep the largest request they admit
// well inside every hop's size limit.
//
// The description is the one large field. The original's backlog-review processor sends a
// whole ceremony's reviews in one task-extraction prompt: about 70 KB, more for big
// stories; 256 KiB leaves room for 3.5 times that. It reaches the executor in the
// deliberation's work message (specs/records.md), which NATS's max_payload (8 MiB) bounds
// with room to spare; events carry ids, outcomes and metadata, never prompts.
//
// The limited fields together (256 KiB + 16 KiB of metadata + 32 prompt templates of
// 16 KiB: 784 KiB of text, about 0.8 MiB as protobuf with the metadata's per-entry
// framing at its worst) fit the execute function's MAX_BODY_BYTES (2 MiB) with more than
// twice the room, even as protobuf JSON when every byte of them needs a two-character
// escape (quotes, backslashes, newlines), and the ingress's MAX_MESSAGE_BYTES (4 MiB) is
// above that. The request package Ray stores is the same JSON: under 2 MiB for such text.
// Only text that is mostly control characters (six bytes each in JSON) can push a request
// within these limits past MAX_BODY_BYTES, which then refuses it (413) naming the limit.
func DefaultLimits() Limits {
	return Limits{
		MaxAgents:              32,
		MaxDescriptionBytes:    256 << 10,
		MaxMetadataBytes:       16 << 10,
		MaxPromptTemplateBytes: 16 << 10,
		MaxTimeoutSeconds:      3600,
		MaxRetries:             10,
	}
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	if l.MaxAgents <= 0 {
		l.MaxAgents = d.MaxAgents
	}
	if l.MaxDescriptionBytes <= 0 {
		l.MaxDescriptionBytes = d.MaxDescriptionBytes
	}
	if l.MaxMetadataBytes <= 0 {
		l.MaxMetadataBytes = d.MaxMetadataBytes
	}
	if l.MaxPromptTemplateBytes <= 0 {
		l.MaxPromptTemplateBytes = d.MaxPromptTemplateBytes
	}
	if l.MaxTimeoutSeconds <= 0 {
		l.MaxTimeoutSeconds = d.MaxTimeoutSeconds
	}
	if l.MaxRetries <= 0 {
		l.MaxRetries = d.MaxRetries
	}
	return l
}

// ValidationError lists every rule a request broke, each naming its field. It wraps
// ErrInvalid.
type ValidationError struct {
	Problems []string
}

func (e *ValidationError) Error() string {
	return "invalid request: " + strings.Join(e.Problems, "; ")
}

func (e *ValidationError) Unwrap() error { return ErrInvalid }

func (e *ValidationError) add(format string, args ...any) {
	e.Problems = append(e.Problems, fmt.Sprintf(format, args...))
}

// Bounds on the short text fields, so that every event and work message built from them
// stays far below NATS's max_payload and no error echoes a caller's megabytes back:
// identifiers, names and models at most MaxShortFieldBytes, URLs at most MaxURLBytes,
// metadata keys at most MaxShortFieldBytes (keys and values together within
// MaxMetadataBytes).
const (
	MaxShortFieldBytes = 256
	MaxURLBytes        = 2048
)

// clip is s for an error message: at most 64 bytes of it, quoted.
func clip(s string) string {
	if len(s) <= 64 {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("%q... (%d bytes)", strings.ToValidUTF8(s[:64], ""), len(s))
}

// backlogTaskID is the shape the backlog-review processor parses (COMPAT.md).
var backlogTaskID = regexp.MustCompile(`^ceremony-[^:\s]+:story-[^:\s]+:role-[^:\s]+$`)

// Normalize validates r against the original's rules and the limits, and applies the
// defaults (timeout 300 s, retries 3; a backlog review's story_id copied into metadata). It
// returns a *ValidationError (wrapping ErrInvalid) naming every offending field.
func Normalize(r *Request, limits Limits) error {
	limits = limits.withDefaults()
	v := &ValidationError{}
	required := func(field, value string) {
		if strings.TrimSpace(value) == "" {
			v.add("%s is required", field)
		}
	}
	required("task_id", r.TaskID)
	required("task_description", r.TaskDescription)
	required("role", r.Role)
	required("vllm_url", r.VLLMURL)
	required("vllm_model", r.VLLMModel)
	required("constraints.story_id", r.Constraints.StoryID)
	tooLong := func(field, value string, max int) {
		if len(value) > max {
			v.add("%s is %d bytes, more than the limit of %d", field, len(value), max)
		}
	}
	for field, s := range map[string]string{"task_id": r.TaskID, "role": r.Role, "vllm_model": r.VLLMModel,
		"constraints.story_id": r.Constraints.StoryID, "constraints.plan_id": r.Constraints.PlanID} {
		tooLong(field, s, MaxShortFieldBytes)
	}
	tooLong("vllm_url", r.VLLMURL, MaxURLBytes)
	for field, s := range map[string]string{
		"task_id": r.TaskID, "task_description": r.TaskDescription, "role": r.Role,
		"vllm_url": r.VLLMURL, "vllm_model": r.VLLMModel,
		"constraints.story_id": r.Constraints.StoryID, "constraints.plan_id": r.Constraints.PlanID,
	} {
		if !utf8.ValidString(s) {
			v.add("%s is not valid UTF-8", field)
		}
	}
	if r.VLLMURL != "" {
		if err := checkEndpoint(r.VLLMURL); err != nil {
			v.add("vllm_url %v", err)
		} else if !limits.Endpoints.Allows(r.VLLMURL) {
			v.add("vllm_url %s is not an allowed LLM endpoint (allowed: %s)", clip(r.VLLMURL), limits.Endpoints)
		}
	}
	if n := len(r.TaskDescription); n > limits.MaxDescriptionBytes {
		v.add("task_description is %d bytes, more than the limit of %d", n, limits.MaxDescriptionBytes)
	}

	c := &r.Constraints
	switch {
	case c.TimeoutSeconds < 0:
		v.add("constraints.timeout_seconds must not be negative, got %d", c.TimeoutSeconds)
	case c.TimeoutSeconds > limits.MaxTimeoutSeconds:
		v.add("constraints.timeout_seconds is %d, more than the limit of %d", c.TimeoutSeconds, limits.MaxTimeoutSeconds)
	case c.TimeoutSeconds == 0:
		c.TimeoutSeconds = DefaultTimeoutSeconds
	}
	switch {
	case c.MaxRetries < 0:
		v.add("constraints.max_retries must not be negative, got %d", c.MaxRetries)
	case c.MaxRetries > limits.MaxRetries:
		v.add("constraints.max_retries is %d, more than the limit of %d", c.MaxRetries, limits.MaxRetries)
	case c.MaxRetries == 0:
		c.MaxRetries = DefaultMaxRetries
	}
	metaBytes := 0
	for k, val := range c.Metadata {
		metaBytes += len(k) + len(val)
		if k == "" {
			v.add("constraints.metadata has an empty key")
		}
		if len(k) > MaxShortFieldBytes {
			v.add("constraints.metadata key %s is more than the limit of %d bytes", clip(k), MaxShortFieldBytes)
		}
		if !utf8.ValidString(k) || !utf8.ValidString(val) {
			v.add("constraints.metadata[%s] is not valid UTF-8", clip(k))
		}
	}
	if metaBytes > limits.MaxMetadataBytes {
		v.add("constraints.metadata is %d bytes, more than the limit of %d", metaBytes, limits.MaxMetadataBytes)
	}

	switch r.Kind {
	case KindDeliberation:
	case KindBacklogReview:
		if r.TaskID != "" && !backlogTaskID.MatchString(r.TaskID) {
			v.add("task_id must look like ceremony-<c>:story-<s>:role-<r> for a backlog review, got %s", clip(r.TaskID))
		}
		if c.PlanID != "" {
			v.add("constraints.plan_id must be empty for a backlog review")
		}
	default:
		v.add("kind %s is unknown", clip(string(r.Kind)))
	}

	if len(r.Agents) == 0 {
		v.add("agents must name at least one agent")
	}
	if len(r.Agents) > limits.MaxAgents {
		v.add("agents has %d entries, more than the limit of %d", len(r.Agents), limits.MaxAgents)
	} else {
		seen := make(map[string]int, len(r.Agents))
		for i, a := range r.Agents {
			required(fmt.Sprintf("agents[%d].id", i), a.ID)
			required(fmt.Sprintf("agents[%d].role", i), a.Role)
			required(fmt.Sprintf("agents[%d].model", i), a.Model)
			for field, s := range map[string]string{"id": a.ID, "role": a.Role, "model": a.Model} {
				tooLong(fmt.Sprintf("agents[%d].%s", i, field), s, MaxShortFieldBytes)
			}
			tooLong(fmt.Sprintf("agents[%d].vllm_url", i), a.VLLMURL, MaxURLBytes)
			if j, dup := seen[a.ID]; dup && a.ID != "" {
				v.add("agents[%d].id %s repeats agents[%d].id", i, clip(a.ID), j)
			}
			seen[a.ID] = i
			if n := len(a.PromptTemplate); n > limits.MaxPromptTemplateBytes {
				v.add("agents[%d].prompt_template is %d bytes, more than the limit of %d", i, n, limits.MaxPromptTemplateBytes)
			} else if n, most := renderedSize(r, a), limits.MaxPromptTemplateBytes+limits.MaxDescriptionBytes; n > most {
				v.add("agents[%d].prompt_template renders to %d bytes with its placeholders filled in, more than the limit of %d (the prompt_template and task_description limits together)",
					i, n, most)
			}
			if a.VLLMURL != "" {
				if err := checkEndpoint(a.VLLMURL); err != nil {
					v.add("agents[%d].vllm_url %v", i, err)
				} else if !limits.Endpoints.Allows(a.VLLMURL) {
					v.add("agents[%d].vllm_url %s is not an allowed LLM endpoint (allowed: %s)", i, clip(a.VLLMURL), limits.Endpoints)
				}
			}
			for field, s := range map[string]string{"id": a.ID, "role": a.Role, "model": a.Model, "prompt_template": a.PromptTemplate, "vllm_url": a.VLLMURL} {
				if !utf8.ValidString(s) {
					v.add("agents[%d].%s is not valid UTF-8", i, field)
				}
			}
		}
	}

	if len(v.Problems) > 0 {
		sort.Strings(v.Problems) // maps above iterate in random order; keep messages stable
		return v
	}
	if r.Kind == KindBacklogReview {
		if _, ok := c.Metadata["story_id"]; !ok {
			if c.Metadata == nil {
				c.Metadata = map[string]string{}
			}
			c.Metadata["story_id"] = c.StoryID
		}
	}
	return nil
}

// PromptPlaceholders are the placeholders the payload fills in an agent's prompt_template
// (shared/executor/payload/ray_executor_payload/prompts.py, PLACEHOLDERS; a test keeps the two in
// step). Anything else in braces stays literal.
var PromptPlaceholders = []string{"role", "agent_id", "task_id", "task_description", "story_id", "plan_id"}

var promptPlaceholder = regexp.MustCompile(`\{(` + strings.Join(PromptPlaceholders, "|") + `)\}`)

// renderedSize is the size of agent a's system prompt once the payload has filled in its
// template's placeholders (in one pass, as prompts.render_template does), without building
// it. Each {task_description} brings in the whole description, so a 16 KiB template naming
// it a thousand times would make a prompt of hundreds of MiB per agent on the Ray driver
// and in every LLM call. Normalize bounds it by the two limits together, which admits any
// template within its limit that names the description once (and the ids a few times).
func renderedSize(r *Request, a Agent) int {
	n := len(a.PromptTemplate)
	for _, m := range promptPlaceholder.FindAllStringSubmatchIndex(a.PromptTemplate, -1) {
		var value string
		switch a.PromptTemplate[m[2]:m[3]] {
		case "role":
			value = a.Role
		case "agent_id":
			value = a.ID
		case "task_id":
			value = r.TaskID
		case "task_description":
			value = r.TaskDescription
		case "story_id":
			value = r.Constraints.StoryID
		case "plan_id":
			value = r.Constraints.PlanID
		}
		n += len(value) - (m[1] - m[0])
	}
	return n
}

// checkEndpoint accepts an absolute http(s) URL with a host and no credentials or query.
func checkEndpoint(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("is not a URL: %v", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("must be an http or https URL, got scheme %q", u.Scheme)
	}
	if u.Hostname() == "" { // "http://:8000" has a Host but no host name
		return fmt.Errorf("must name a host")
	}
	if u.User != nil {
		return fmt.Errorf("must not carry credentials")
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("must not have a query or fragment")
	}
	return nil
}
