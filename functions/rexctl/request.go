package rexctl

import (
	"bytes"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
)

const (
	// maxRequestFileBytes bounds a request file (the ingress takes 4 MiB by default).
	maxRequestFileBytes = 8 << 20
	// maxDescriptionFileBytes bounds --description-file (execute allows 256 KiB by default).
	maxDescriptionFileBytes = 4 << 20
	maxAgentFlags           = 1024
	maxMetadataFlags        = 1024
	maxIdempotencyKeyBytes  = 256
)

// Kinds of submission.
const (
	kindDeliberation  = "deliberation"
	kindBacklogReview = "backlog-review"
)

// submitOptions are submit's flags.
type submitOptions struct {
	file            string
	kind            string
	taskID          string
	description     string
	descriptionFile string
	role            string
	storyID         string
	planID          string
	timeoutSeconds  int32
	maxRetries      int32
	metadata        []string
	agents          []string
	agentCount      int
	vllmURL         string
	model           string
	idempotencyKey  string
	wait            bool
	quiet           bool
}

func (o *submitOptions) register(fs *pflag.FlagSet) {
	fs.StringVarP(&o.file, "file", "f", "", "the request as a JSON or YAML file (protobuf field names, e.g. task_id); - reads standard input; flags given as well override its fields")
	fs.StringVar(&o.kind, "kind", kindDeliberation, "deliberation or backlog-review (ExecuteBacklogReviewDeliberation)")
	fs.StringVar(&o.taskID, "task-id", "", "task_id")
	fs.StringVarP(&o.description, "description", "d", "", "task_description")
	fs.StringVar(&o.descriptionFile, "description-file", "", "read task_description from this file (- for standard input)")
	fs.StringVar(&o.role, "role", "", "role")
	fs.StringVar(&o.storyID, "story-id", "", "constraints.story_id")
	fs.StringVar(&o.planID, "plan-id", "", "constraints.plan_id (not for backlog-review)")
	fs.Int32Var(&o.timeoutSeconds, "timeout-seconds", 0, "constraints.timeout_seconds (0: the gateway's default, 300)")
	fs.Int32Var(&o.maxRetries, "max-retries", 0, "constraints.max_retries (0: the gateway's default)")
	fs.StringArrayVar(&o.metadata, "metadata", nil, "constraints.metadata entry key=value (repeatable)")
	fs.StringArrayVar(&o.agents, "agent", nil, "an agent: id=ID[,role=ROLE][,model=MODEL][,url=URL] or just ID; role and model default to --role and --model (repeatable)")
	fs.IntVar(&o.agentCount, "agents", 0, "N agents agent-1..agent-N with --role and --model (instead of --agent)")
	fs.StringVar(&o.vllmURL, "vllm-url", "", "vllm_url: the OpenAI-compatible endpoint")
	fs.StringVar(&o.model, "model", "", "vllm_model")
	fs.StringVar(&o.idempotencyKey, "idempotency-key", "", "sent as idempotency-key metadata: the same key always names the same deliberation")
	fs.BoolVar(&o.wait, "wait", false, "watch the deliberation until it ends (exit code from its outcome)")
	fs.BoolVarP(&o.quiet, "quiet", "q", false, "print only the deliberation id")
}

// buildRequest reads the request file (if any) and applies the flags that were given.
func (o *submitOptions) buildRequest(fs *pflag.FlagSet, stdin io.Reader) (*pb.ExecuteDeliberationRequest, error) {
	if o.kind != kindDeliberation && o.kind != kindBacklogReview {
		return nil, usagef("--kind %q: want %s or %s", o.kind, kindDeliberation, kindBacklogReview)
	}
	if err := checkKey(o.idempotencyKey); err != nil {
		return nil, err
	}
	req := &pb.ExecuteDeliberationRequest{}
	if o.file != "" {
		b, err := readBounded(o.file, maxRequestFileBytes, stdin)
		if err != nil {
			return nil, usagef("--file: %v", err)
		}
		if req, err = decodeRequest(b, o.file); err != nil {
			return nil, err
		}
	}
	if o.description != "" && o.descriptionFile != "" {
		return nil, usagef("give --description or --description-file, not both")
	}
	if o.descriptionFile == "-" && o.file == "-" {
		return nil, usagef("--file and --description-file cannot both read standard input")
	}
	set := func(name string, dst *string, v string) {
		if fs.Changed(name) {
			*dst = v
		}
	}
	set("task-id", &req.TaskId, o.taskID)
	set("description", &req.TaskDescription, o.description)
	set("role", &req.Role, o.role)
	set("vllm-url", &req.VllmUrl, o.vllmURL)
	set("model", &req.VllmModel, o.model)
	if o.descriptionFile != "" {
		b, err := readBounded(o.descriptionFile, maxDescriptionFileBytes, stdin)
		if err != nil {
			return nil, usagef("--description-file: %v", err)
		}
		req.TaskDescription = string(b)
	}
	if fs.Changed("story-id") || fs.Changed("plan-id") || fs.Changed("timeout-seconds") || fs.Changed("max-retries") || len(o.metadata) > 0 {
		if req.Constraints == nil {
			req.Constraints = &pb.TaskConstraints{}
		}
		c := req.Constraints
		set("story-id", &c.StoryId, o.storyID)
		set("plan-id", &c.PlanId, o.planID)
		if fs.Changed("timeout-seconds") {
			c.TimeoutSeconds = o.timeoutSeconds
		}
		if fs.Changed("max-retries") {
			c.MaxRetries = o.maxRetries
		}
		if len(o.metadata) > maxMetadataFlags {
			return nil, usagef("more than %d --metadata flags", maxMetadataFlags)
		}
		for _, kv := range o.metadata {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				return nil, usagef("--metadata %q: want key=value", clip(kv, 64))
			}
			if c.Metadata == nil {
				c.Metadata = map[string]string{}
			}
			c.Metadata[k] = v
		}
	}
	agents, err := o.buildAgents(req)
	if err != nil {
		return nil, err
	}
	if agents != nil {
		req.Agents = agents
	}
	if len(req.Agents) == 0 {
		return nil, usagef("no agents: give --agent (repeatable), --agents N, or agents in --file")
	}
	if o.kind == kindBacklogReview && req.GetConstraints().GetPlanId() != "" {
		return nil, usagef("a backlog-review has no plan_id")
	}
	return req, nil
}

// buildAgents is the agents the flags name, or nil when they name none.
func (o *submitOptions) buildAgents(req *pb.ExecuteDeliberationRequest) ([]*pb.Agent, error) {
	if len(o.agents) > 0 && o.agentCount > 0 {
		return nil, usagef("give --agent or --agents, not both")
	}
	if len(o.agents) > maxAgentFlags || o.agentCount > maxAgentFlags {
		return nil, usagef("at most %d agents from the command line", maxAgentFlags)
	}
	if o.agentCount < 0 {
		return nil, usagef("--agents %d: want a positive count", o.agentCount)
	}
	var out []*pb.Agent
	for i := 1; i <= o.agentCount; i++ {
		out = append(out, &pb.Agent{Id: "agent-" + strconv.Itoa(i), Role: req.GetRole(), Model: req.GetVllmModel()})
	}
	for _, spec := range o.agents {
		a, err := parseAgent(spec, req)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

// parseAgent reads "id=a1,role=r,model=m,url=u" (or just "a1").
func parseAgent(spec string, req *pb.ExecuteDeliberationRequest) (*pb.Agent, error) {
	a := &pb.Agent{Role: req.GetRole(), Model: req.GetVllmModel()}
	if !strings.Contains(spec, "=") {
		a.Id = spec
	} else {
		for _, part := range strings.Split(spec, ",") {
			k, v, ok := strings.Cut(part, "=")
			if !ok {
				return nil, usagef("--agent %q: %q is not key=value", clip(spec, 64), clip(part, 64))
			}
			switch strings.TrimSpace(k) {
			case "id":
				a.Id = v
			case "role":
				a.Role = v
			case "model":
				a.Model = v
			case "url", "vllm_url":
				a.VllmUrl = v
			default:
				return nil, usagef("--agent %q: unknown key %q (want id, role, model, url)", clip(spec, 64), clip(k, 64))
			}
		}
	}
	if a.Id == "" {
		return nil, usagef("--agent %q: no id", clip(spec, 64))
	}
	return a, nil
}

// decodeRequest parses a request file: JSON when it is named .json or starts with '{',
// else YAML (converted to JSON first, so both take the same protobuf JSON field names).
func decodeRequest(b []byte, name string) (*pb.ExecuteDeliberationRequest, error) {
	js := b
	ext := strings.ToLower(filepath.Ext(name))
	if ext != ".json" && !bytes.HasPrefix(bytes.TrimSpace(b), []byte("{")) {
		var err error
		if js, err = yaml.YAMLToJSON(b); err != nil {
			return nil, usagef("%s: not valid YAML: %v", displayPath(name), err)
		}
	}
	req := &pb.ExecuteDeliberationRequest{}
	if err := protojson.Unmarshal(js, req); err != nil {
		return nil, usagef("%s: not an ExecuteDeliberationRequest: %v", displayPath(name), err)
	}
	return req, nil
}

// backlogReview is req as an ExecuteBacklogReviewDeliberationRequest (same fields, no plan_id).
func backlogReview(req *pb.ExecuteDeliberationRequest) *pb.ExecuteBacklogReviewDeliberationRequest {
	out := &pb.ExecuteBacklogReviewDeliberationRequest{
		TaskId:          req.GetTaskId(),
		TaskDescription: req.GetTaskDescription(),
		Role:            req.GetRole(),
		Agents:          req.GetAgents(),
		VllmUrl:         req.GetVllmUrl(),
		VllmModel:       req.GetVllmModel(),
	}
	if c := req.GetConstraints(); c != nil {
		out.Constraints = &pb.BacklogReviewTaskConstraints{
			StoryId:        c.GetStoryId(),
			TimeoutSeconds: c.GetTimeoutSeconds(),
			MaxRetries:     c.GetMaxRetries(),
			Metadata:       c.GetMetadata(),
		}
	}
	return out
}

// checkKey refuses an idempotency key gRPC metadata could not carry.
func checkKey(key string) error {
	if len(key) > maxIdempotencyKeyBytes {
		return usagef("--idempotency-key is longer than %d bytes", maxIdempotencyKeyBytes)
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; c < 0x20 || c > 0x7e {
			return usagef("--idempotency-key has a character at byte %d that is not printable ASCII", i+1)
		}
	}
	return nil
}

// clip cuts s to at most n bytes for quoting in a message.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return fmt.Sprintf("%s…", s[:n])
}
