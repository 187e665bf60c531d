package domain

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"
)

// validRequest returns a request of the given kind that Normalize accepts as is.
func validRequest(kind Kind) Request {
	r := Request{
		Kind:            kind,
		TaskID:          "task-1",
		TaskDescription: "Design the login flow",
		Role:            "architect",
		Constraints: Constraints{
			StoryID:        "story-7",
			PlanID:         "plan-3",
			TimeoutSeconds: 120,
			MaxRetries:     2,
			Metadata:       map[string]string{"task_type": "design"},
		},
		Agents: []Agent{
			{ID: "agent-a", Role: "architect", Model: "qwen", PromptTemplate: "You are {role}."},
			{ID: "agent-b", Role: "reviewer", Model: "llama"},
		},
		VLLMURL:   "http://vllm.llm.svc:8000/v1",
		VLLMModel: "qwen",
	}
	if kind == KindBacklogReview {
		r.TaskID = "ceremony-c1:story-story-7:role-architect"
		r.Constraints.PlanID = ""
	}
	return r
}

// validationProblems runs Normalize on r and returns the problems it reported, failing the
// test unless the error is a *ValidationError wrapping ErrInvalid.
func validationProblems(t *testing.T, r *Request, limits Limits) []string {
	t.Helper()
	err := Normalize(r, limits)
	if err == nil {
		t.Fatalf("Normalize: got nil error, want a validation error")
	}
	if !errors.Is(err, ErrInvalid) {
		t.Errorf("errors.Is(err, ErrInvalid): got false, want true (err = %v)", err)
	}
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("errors.As(err, *ValidationError): got false, want true (err = %T %v)", err, err)
	}
	if len(ve.Problems) == 0 {
		t.Fatalf("ValidationError.Problems: got none, want at least one")
	}
	return ve.Problems
}

// hasProblem reports whether one of problems contains every one of the substrings.
func hasProblem(problems []string, substrings ...string) bool {
	for _, p := range problems {
		all := true
		for _, s := range substrings {
			if !strings.Contains(p, s) {
				all = false
				break
			}
		}
		if all {
			return true
		}
	}
	return false
}

func TestNormalizeAcceptsValidRequests(t *testing.T) {
	for _, kind := range []Kind{KindDeliberation, KindBacklogReview} {
		t.Run(string(kind), func(t *testing.T) {
			r := validRequest(kind)
			if err := Normalize(&r, Limits{}); err != nil {
				t.Fatalf("Normalize: got %v, want nil", err)
			}
			if got, want := r.Constraints.TimeoutSeconds, int32(120); got != want {
				t.Errorf("timeout_seconds: got %d, want %d (explicit value kept)", got, want)
			}
			if got, want := r.Constraints.MaxRetries, int32(2); got != want {
				t.Errorf("max_retries: got %d, want %d (explicit value kept)", got, want)
			}
			if got, want := r.TaskType(), "design"; got != want {
				t.Errorf("TaskType(): got %q, want %q", got, want)
			}
		})
	}
}

func TestNormalizeRequiredFields(t *testing.T) {
	tests := []struct {
		field  string
		mutate func(r *Request, blank string)
	}{
		{"task_id", func(r *Request, b string) { r.TaskID = b }},
		{"task_description", func(r *Request, b string) { r.TaskDescription = b }},
		{"role", func(r *Request, b string) { r.Role = b }},
		{"vllm_url", func(r *Request, b string) { r.VLLMURL = b }},
		{"vllm_model", func(r *Request, b string) { r.VLLMModel = b }},
		{"constraints.story_id", func(r *Request, b string) { r.Constraints.StoryID = b }},
		{"agents[0].id", func(r *Request, b string) { r.Agents[0].ID = b }},
		{"agents[1].id", func(r *Request, b string) { r.Agents[1].ID = b }},
		{"agents[0].role", func(r *Request, b string) { r.Agents[0].Role = b }},
		{"agents[1].role", func(r *Request, b string) { r.Agents[1].Role = b }},
		{"agents[0].model", func(r *Request, b string) { r.Agents[0].Model = b }},
		{"agents[1].model", func(r *Request, b string) { r.Agents[1].Model = b }},
	}
	for _, kind := range []Kind{KindDeliberation, KindBacklogReview} {
		for _, tt := range tests {
			for _, blank := range []string{"", "  \t\n"} {
				t.Run(fmt.Sprintf("%s/%s/%q", kind, tt.field, blank), func(t *testing.T) {
					r := validRequest(kind)
					tt.mutate(&r, blank)
					problems := validationProblems(t, &r, Limits{})
					want := tt.field + " is required"
					if !hasProblem(problems, want) {
						t.Errorf("problems: got %q, want one containing %q", problems, want)
					}
					// An empty value breaks exactly the one rule; blanks may also fail
					// format rules (a blank URL is not a URL, a blank task_id not a
					// backlog task_id), but nothing unrelated may be reported.
					if blank == "" && len(problems) != 1 {
						t.Errorf("problems: got %d %q, want exactly 1", len(problems), problems)
					}
					for _, p := range problems {
						if !strings.HasPrefix(p, tt.field+" ") {
							t.Errorf("problem %q: got a problem about another field, want only %s", p, tt.field)
						}
					}
				})
			}
		}
	}
}

func TestNormalizeAgentsRequired(t *testing.T) {
	tests := []struct {
		name   string
		agents []Agent
	}{
		{"nil", nil},
		{"empty", []Agent{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := validRequest(KindDeliberation)
			r.Agents = tt.agents
			problems := validationProblems(t, &r, Limits{})
			if len(problems) != 1 || !hasProblem(problems, "agents", "at least one") {
				t.Errorf("problems: got %q, want exactly one naming agents", problems)
			}
		})
	}
}

func TestNormalizeNegativeConstraints(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(c *Constraints)
		want   []string
	}{
		{"timeout -1", func(c *Constraints) { c.TimeoutSeconds = -1 }, []string{"constraints.timeout_seconds", "negative", "-1"}},
		{"timeout min int32", func(c *Constraints) { c.TimeoutSeconds = -2147483648 }, []string{"constraints.timeout_seconds", "negative"}},
		{"retries -1", func(c *Constraints) { c.MaxRetries = -1 }, []string{"constraints.max_retries", "negative", "-1"}},
		{"retries -100", func(c *Constraints) { c.MaxRetries = -100 }, []string{"constraints.max_retries", "negative", "-100"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := validRequest(KindDeliberation)
			tt.mutate(&r.Constraints)
			problems := validationProblems(t, &r, Limits{})
			if len(problems) != 1 || !hasProblem(problems, tt.want...) {
				t.Errorf("problems: got %q, want exactly one containing %q", problems, tt.want)
			}
		})
	}
}

func TestNormalizeDefaults(t *testing.T) {
	tests := []struct {
		name                     string
		timeout, retries         int32
		wantTimeout, wantRetries int32
	}{
		{"both zero", 0, 0, DefaultTimeoutSeconds, DefaultMaxRetries},
		{"timeout zero", 0, 5, 300, 5},
		{"retries zero", 60, 0, 60, 3},
		{"both set", 1, 1, 1, 1},
		{"both at limit", 3600, 10, 3600, 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := validRequest(KindDeliberation)
			r.Constraints.TimeoutSeconds = tt.timeout
			r.Constraints.MaxRetries = tt.retries
			if err := Normalize(&r, Limits{}); err != nil {
				t.Fatalf("Normalize: got %v, want nil", err)
			}
			if got := r.Constraints.TimeoutSeconds; got != tt.wantTimeout {
				t.Errorf("timeout_seconds: got %d, want %d", got, tt.wantTimeout)
			}
			if got := r.Constraints.MaxRetries; got != tt.wantRetries {
				t.Errorf("max_retries: got %d, want %d", got, tt.wantRetries)
			}
		})
	}
	if DefaultTimeoutSeconds != 300 || DefaultMaxRetries != 3 {
		t.Errorf("defaults: got timeout %d retries %d, want 300 and 3", DefaultTimeoutSeconds, DefaultMaxRetries)
	}
}

func TestDefaultLimits(t *testing.T) {
	got := DefaultLimits()
	want := Limits{
		MaxAgents:              32,
		MaxDescriptionBytes:    256 << 10, // a backlog review's task-extraction prompt is ~70 KB
		MaxMetadataBytes:       16 << 10,
		MaxPromptTemplateBytes: 16 << 10,
		MaxTimeoutSeconds:      3600,
		MaxRetries:             10,
	}
	if got != want {
		t.Errorf("DefaultLimits(): got %+v, want %+v", got, want)
	}
}

// agents returns n distinct valid agents.
func agents(n int) []Agent {
	out := make([]Agent, n)
	for i := range out {
		out[i] = Agent{ID: fmt.Sprintf("agent-%d", i), Role: "dev", Model: "m"}
	}
	return out
}

// metadataOfBytes returns metadata whose keys and values sum to n bytes (n >= 1).
func metadataOfBytes(n int) map[string]string {
	return map[string]string{"k": strings.Repeat("v", n-1)}
}

func TestNormalizeLimits(t *testing.T) {
	custom := Limits{
		MaxAgents:              2,
		MaxDescriptionBytes:    10,
		MaxMetadataBytes:       20,
		MaxPromptTemplateBytes: 5,
		MaxTimeoutSeconds:      60,
		MaxRetries:             4,
	}
	tests := []struct {
		name   string
		limits Limits
		mutate func(r *Request)
		want   []string // substrings of the one problem; nil: the request is valid
	}{
		// agents
		{"agents at default limit", Limits{}, func(r *Request) { r.Agents = agents(32) }, nil},
		{"agents over default limit", Limits{}, func(r *Request) { r.Agents = agents(33) },
			[]string{"agents", "33", "limit of 32"}},
		{"10,000 agents", Limits{}, func(r *Request) { r.Agents = agents(10000) },
			[]string{"agents", "10000", "limit of 32"}},
		{"10,000 invalid agents report one problem", Limits{}, func(r *Request) { r.Agents = make([]Agent, 10000) },
			[]string{"agents", "10000", "limit of 32"}},
		{"agents at custom limit", custom, func(r *Request) { r.Agents = agents(2) }, nil},
		{"agents over custom limit", custom, func(r *Request) { r.Agents = agents(3) },
			[]string{"agents", "3 entries", "limit of 2"}},
		{"10,000 agents within a raised limit", Limits{MaxAgents: 10000}, func(r *Request) { r.Agents = agents(10000) }, nil},

		// task_description
		{"description at default limit", Limits{}, func(r *Request) { r.TaskDescription = strings.Repeat("x", 256<<10) }, nil},
		{"description over default limit", Limits{}, func(r *Request) { r.TaskDescription = strings.Repeat("x", 256<<10+1) },
			[]string{"task_description", "262145 bytes", "limit of 262144"}},
		{"a real backlog review's prompt (~70 KB) within the default", Limits{}, func(r *Request) { r.TaskDescription = strings.Repeat("review ", 10000) }, nil},
		{"description over custom limit", custom, func(r *Request) { r.TaskDescription = strings.Repeat("x", 11) },
			[]string{"task_description", "11 bytes", "limit of 10"}},
		{"description limit counts bytes not runes", custom, func(r *Request) { r.TaskDescription = strings.Repeat("é", 6) },
			[]string{"task_description", "12 bytes", "limit of 10"}},

		// constraints.metadata
		{"metadata at default limit", Limits{}, func(r *Request) { r.Constraints.Metadata = metadataOfBytes(16 << 10) }, nil},
		{"metadata over default limit", Limits{}, func(r *Request) { r.Constraints.Metadata = metadataOfBytes(16<<10 + 1) },
			[]string{"constraints.metadata", "16385 bytes", "limit of 16384"}},
		{"metadata keys and values summed", custom, func(r *Request) {
			r.Constraints.Metadata = map[string]string{"aaaa": "bbbbbb", "cccc": "dddddd", "e": ""} // 21 bytes
		}, []string{"constraints.metadata", "21 bytes", "limit of 20"}},
		{"metadata at custom limit", custom, func(r *Request) { r.Constraints.Metadata = map[string]string{"aaaa": "bbbbbb", "cccc": "dddddd"} }, nil},
		{"metadata empty key", Limits{}, func(r *Request) { r.Constraints.Metadata = map[string]string{"": "x"} },
			[]string{"constraints.metadata", "empty key"}},

		// agents[i].prompt_template
		{"prompt template at default limit", Limits{}, func(r *Request) { r.Agents[1].PromptTemplate = strings.Repeat("p", 16<<10) }, nil},
		{"prompt template over default limit", Limits{}, func(r *Request) { r.Agents[1].PromptTemplate = strings.Repeat("p", 16<<10+1) },
			[]string{"agents[1].prompt_template", "16385 bytes", "limit of 16384"}},
		{"prompt template naming the description once, both at their limits", Limits{}, func(r *Request) {
			r.TaskDescription = strings.Repeat("x", 256<<10)
			r.Agents[1].PromptTemplate = "{task_description}" + strings.Repeat("p", 16<<10-len("{task_description}{role}")) + "{role}"
		}, nil},
		{"prompt template naming a description at its limit twice", Limits{}, func(r *Request) {
			r.TaskDescription = strings.Repeat("x", 256<<10)
			r.Agents[0].PromptTemplate = "Task: {task_description}\nAgain: {task_description}"
		}, []string{"agents[0].prompt_template renders to 524302 bytes", "limit of 278528", "prompt_template and task_description limits"}},
		{"prompt template naming the description a thousand times", Limits{}, func(r *Request) {
			r.TaskDescription = strings.Repeat("x", 1<<10)
			r.Agents[1].PromptTemplate = strings.Repeat("{task_description}", 900)
		}, []string{"agents[1].prompt_template renders to 921600 bytes", "limit of 278528"}},
		{"prompt template rendering counts every placeholder, and only those", Limits{MaxDescriptionBytes: 10, MaxPromptTemplateBytes: 100}, func(r *Request) {
			r.TaskID, r.Constraints.StoryID, r.Constraints.PlanID = strings.Repeat("t", 25), strings.Repeat("s", 25), strings.Repeat("p", 25)
			r.TaskDescription = "d"
			r.Agents[0].PromptTemplate = "{task_id}{story_id}{plan_id}{agent_id}{role}{Task_id}{task_id {0}"
		}, []string{"agents[0].prompt_template renders to 112 bytes", "limit of 110"}},
		{"prompt template over custom limit", custom, func(r *Request) { r.Agents[0].PromptTemplate = "123456" },
			[]string{"agents[0].prompt_template", "6 bytes", "limit of 5"}},

		// constraints.timeout_seconds
		{"timeout at default limit", Limits{}, func(r *Request) { r.Constraints.TimeoutSeconds = 3600 }, nil},
		{"timeout over default limit", Limits{}, func(r *Request) { r.Constraints.TimeoutSeconds = 3601 },
			[]string{"constraints.timeout_seconds", "3601", "limit of 3600"}},
		{"timeout over custom limit", custom, func(r *Request) { r.Constraints.TimeoutSeconds = 61 },
			[]string{"constraints.timeout_seconds", "61", "limit of 60"}},
		{"timeout max int32", Limits{}, func(r *Request) { r.Constraints.TimeoutSeconds = 2147483647 },
			[]string{"constraints.timeout_seconds", "2147483647", "limit of 3600"}},

		// constraints.max_retries
		{"retries at default limit", Limits{}, func(r *Request) { r.Constraints.MaxRetries = 10 }, nil},
		{"retries over default limit", Limits{}, func(r *Request) { r.Constraints.MaxRetries = 11 },
			[]string{"constraints.max_retries", "11", "limit of 10"}},
		{"retries over custom limit", custom, func(r *Request) { r.Constraints.MaxRetries = 5 },
			[]string{"constraints.max_retries", "5", "limit of 4"}},

		// negative limits fall back to the defaults
		{"negative limits mean defaults", Limits{MaxAgents: -1, MaxTimeoutSeconds: -5}, func(r *Request) { r.Constraints.TimeoutSeconds = 3601 },
			[]string{"constraints.timeout_seconds", "limit of 3600"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := validRequest(KindDeliberation)
			r.TaskDescription = "short"
			r.Constraints.TimeoutSeconds = 30 // within the custom limit too
			r.Constraints.Metadata = nil
			r.Agents[0].PromptTemplate = ""
			tt.mutate(&r)
			if tt.want == nil {
				if err := Normalize(&r, tt.limits); err != nil {
					t.Fatalf("Normalize: got %v, want nil", err)
				}
				return
			}
			problems := validationProblems(t, &r, tt.limits)
			if len(problems) != 1 || !hasProblem(problems, tt.want...) {
				t.Errorf("problems: got %q, want exactly one containing %q", problems, tt.want)
			}
		})
	}
}

func TestNormalizeDuplicateAgentIDs(t *testing.T) {
	tests := []struct {
		name string
		ids  []string
		want []string // every problem, sorted
	}{
		{"pair", []string{"a", "a"}, []string{`agents[1].id "a" repeats agents[0].id`}},
		{"apart", []string{"a", "b", "a"}, []string{`agents[2].id "a" repeats agents[0].id`}},
		{"two pairs", []string{"a", "b", "b", "a"}, []string{
			`agents[2].id "b" repeats agents[1].id`,
			`agents[3].id "a" repeats agents[0].id`,
		}},
		{"case differs", []string{"a", "A"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := validRequest(KindDeliberation)
			r.Agents = nil
			for _, id := range tt.ids {
				r.Agents = append(r.Agents, Agent{ID: id, Role: "dev", Model: "m"})
			}
			if tt.want == nil {
				if err := Normalize(&r, Limits{}); err != nil {
					t.Fatalf("Normalize: got %v, want nil", err)
				}
				return
			}
			problems := validationProblems(t, &r, Limits{})
			if strings.Join(problems, "|") != strings.Join(tt.want, "|") {
				t.Errorf("problems: got %q, want %q", problems, tt.want)
			}
		})
	}
	t.Run("three of a kind", func(t *testing.T) {
		r := validRequest(KindDeliberation)
		r.Agents = []Agent{{ID: "x", Role: "r", Model: "m"}, {ID: "x", Role: "r", Model: "m"}, {ID: "x", Role: "r", Model: "m"}}
		problems := validationProblems(t, &r, Limits{})
		if len(problems) != 2 || !hasProblem(problems, "agents[1].id", "repeats") || !hasProblem(problems, "agents[2].id", "repeats") {
			t.Errorf("problems: got %q, want agents[1] and agents[2] reported as repeats", problems)
		}
	})
	t.Run("empty ids are not duplicates", func(t *testing.T) {
		r := validRequest(KindDeliberation)
		r.Agents = []Agent{{Role: "r", Model: "m"}, {Role: "r", Model: "m"}}
		problems := validationProblems(t, &r, Limits{})
		if hasProblem(problems, "repeats") {
			t.Errorf("problems: got %q, want no repeat reported for empty ids", problems)
		}
		if !hasProblem(problems, "agents[0].id is required") || !hasProblem(problems, "agents[1].id is required") {
			t.Errorf("problems: got %q, want both empty ids reported as required", problems)
		}
	})
}

func TestNormalizeEndpoints(t *testing.T) {
	tests := []struct {
		url  string
		want string // substring of the problem; "" when the URL is accepted
	}{
		{"http://vllm:8000", ""},
		{"https://vllm.example.com/v1", ""},
		{"HTTP://vllm:8000/v1", ""},
		{"http://10.0.0.1:8000", ""},
		{"http://[::1]:8000/v1/", ""},

		{"ftp://vllm/v1", `scheme "ftp"`},
		{"file:///etc/passwd", `scheme "file"`},
		{"ws://vllm:8000", `scheme "ws"`},
		{"javascript:alert(1)", `scheme "javascript"`},
		{"vllm:8000", `scheme "vllm"`},
		{"//vllm:8000/v1", `scheme ""`},
		{"/v1/chat", `scheme ""`},
		{"http://", "host"},
		{"http:///v1", "host"},
		{"http://:8000", "host"},
		{"http://user:secret@vllm:8000", "credentials"},
		{"http://user@vllm:8000", "credentials"},
		{"https://:secret@vllm", "credentials"},
		{"http://vllm:8000/v1?api_key=x", "query"},
		{"http://vllm:8000/v1#frag", "fragment"},
		{"http://vllm:notaport", "not a URL"},
		{"http://vl lm", "not a URL"},
		{"http://%zz", "not a URL"},
	}
	for _, tt := range tests {
		for _, where := range []string{"vllm_url", "agents[1].vllm_url"} {
			t.Run(where+"/"+tt.url, func(t *testing.T) {
				r := validRequest(KindDeliberation)
				if where == "vllm_url" {
					r.VLLMURL = tt.url
				} else {
					r.Agents[1].VLLMURL = tt.url
				}
				if tt.want == "" {
					if err := Normalize(&r, Limits{}); err != nil {
						t.Fatalf("Normalize: got %v, want nil", err)
					}
					return
				}
				problems := validationProblems(t, &r, Limits{})
				if len(problems) != 1 || !hasProblem(problems, where+" ", tt.want) {
					t.Errorf("problems: got %q, want exactly one naming %s and containing %q", problems, where, tt.want)
				}
			})
		}
	}
}

func TestNormalizeInvalidUTF8(t *testing.T) {
	const bad = "ok\xff\xfe"
	tests := []struct {
		field  string
		mutate func(r *Request)
	}{
		{"task_id", func(r *Request) { r.TaskID = bad }},
		{"task_description", func(r *Request) { r.TaskDescription = bad }},
		{"role", func(r *Request) { r.Role = bad }},
		{"vllm_model", func(r *Request) { r.VLLMModel = bad }},
		{"vllm_url", func(r *Request) { r.VLLMURL = "http://vllm\xff:8000" }},
		{"constraints.story_id", func(r *Request) { r.Constraints.StoryID = bad }},
		{"constraints.plan_id", func(r *Request) { r.Constraints.PlanID = bad }},
		{`constraints.metadata["k\xff"]`, func(r *Request) { r.Constraints.Metadata = map[string]string{"k\xff": "v"} }},
		{`constraints.metadata["k"]`, func(r *Request) { r.Constraints.Metadata = map[string]string{"k": "v\xc3"} }},
		{"agents[1].id", func(r *Request) { r.Agents[1].ID = bad }},
		{"agents[1].role", func(r *Request) { r.Agents[1].Role = bad }},
		{"agents[1].model", func(r *Request) { r.Agents[1].Model = bad }},
		{"agents[1].prompt_template", func(r *Request) { r.Agents[1].PromptTemplate = bad }},
		{"agents[1].vllm_url", func(r *Request) { r.Agents[1].VLLMURL = "http://vllm\xff:8000" }},
	}
	for _, tt := range tests {
		t.Run(tt.field, func(t *testing.T) {
			r := validRequest(KindDeliberation)
			tt.mutate(&r)
			problems := validationProblems(t, &r, Limits{})
			if !hasProblem(problems, tt.field+" is not valid UTF-8") {
				t.Errorf("problems: got %q, want one containing %q", problems, tt.field+" is not valid UTF-8")
			}
		})
	}
}

func TestNormalizeBacklogTaskID(t *testing.T) {
	tests := []struct {
		taskID string
		ok     bool
	}{
		{"ceremony-c1:story-s1:role-architect", true},
		{"ceremony-2024-q1:story-ABC-123:role-qa_lead", true},
		{"ceremony-é:story-ü:role-ß", true},
		{"ceremony-c1:story-s1", false},
		{"ceremony-c1:story-s1:role-", false},
		{"ceremony-:story-s1:role-r", false},
		{"ceremony-c1:story-:role-r", false},
		{"story-s1:ceremony-c1:role-r", false},
		{"ceremony-c1:story-s1:role-r:extra", false},
		{"ceremony-c1:story-s1:role-r:", false},
		{"xceremony-c1:story-s1:role-r", false},
		{"ceremony-c1:story-s1:role-r x", false},
		{"ceremony-c 1:story-s1:role-r", false},
		{"ceremony-c1:story-s1:role-r\n", false},
		{"CEREMONY-c1:STORY-s1:ROLE-r", false},
		{"task-1", false},
	}
	for _, tt := range tests {
		t.Run(tt.taskID, func(t *testing.T) {
			r := validRequest(KindBacklogReview)
			r.TaskID = tt.taskID
			if tt.ok {
				if err := Normalize(&r, Limits{}); err != nil {
					t.Fatalf("Normalize: got %v, want nil", err)
				}
				return
			}
			problems := validationProblems(t, &r, Limits{})
			if len(problems) != 1 || !hasProblem(problems, "task_id", "ceremony-<c>:story-<s>:role-<r>") {
				t.Errorf("problems: got %q, want exactly one naming task_id and its pattern", problems)
			}
		})
	}
	t.Run("deliberation task ids are free-form", func(t *testing.T) {
		r := validRequest(KindDeliberation)
		r.TaskID = "anything: at all"
		if err := Normalize(&r, Limits{}); err != nil {
			t.Fatalf("Normalize: got %v, want nil", err)
		}
	})
}

func TestNormalizeBacklogPlanID(t *testing.T) {
	r := validRequest(KindBacklogReview)
	r.Constraints.PlanID = "plan-1"
	problems := validationProblems(t, &r, Limits{})
	if len(problems) != 1 || !hasProblem(problems, "constraints.plan_id", "empty") {
		t.Errorf("problems: got %q, want exactly one naming constraints.plan_id", problems)
	}

	d := validRequest(KindDeliberation)
	d.Constraints.PlanID = "plan-1"
	if err := Normalize(&d, Limits{}); err != nil {
		t.Errorf("Normalize deliberation with plan_id: got %v, want nil", err)
	}
}

func TestNormalizeBacklogStoryIDMetadata(t *testing.T) {
	tests := []struct {
		name     string
		kind     Kind
		metadata map[string]string
		want     map[string]string
	}{
		{"backlog, nil metadata", KindBacklogReview, nil, map[string]string{"story_id": "story-7"}},
		{"backlog, other metadata kept", KindBacklogReview, map[string]string{"task_type": "review"},
			map[string]string{"task_type": "review", "story_id": "story-7"}},
		{"backlog, existing story_id not overwritten", KindBacklogReview, map[string]string{"story_id": "from-caller"},
			map[string]string{"story_id": "from-caller"}},
		{"deliberation, nil metadata left alone", KindDeliberation, nil, nil},
		{"deliberation, metadata left alone", KindDeliberation, map[string]string{"task_type": "x"}, map[string]string{"task_type": "x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := validRequest(tt.kind)
			r.Constraints.Metadata = tt.metadata
			if err := Normalize(&r, Limits{}); err != nil {
				t.Fatalf("Normalize: got %v, want nil", err)
			}
			got := r.Constraints.Metadata
			if len(got) != len(tt.want) || (got == nil) != (tt.want == nil) {
				t.Fatalf("metadata: got %v, want %v", got, tt.want)
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Errorf("metadata[%q]: got %q, want %q", k, got[k], v)
				}
			}
		})
	}
}

func TestNormalizeUnknownKind(t *testing.T) {
	for _, kind := range []Kind{"", "Deliberation", "review"} {
		t.Run(string(kind), func(t *testing.T) {
			r := validRequest(KindDeliberation)
			r.Kind = kind
			problems := validationProblems(t, &r, Limits{})
			want := fmt.Sprintf("kind %q is unknown", kind)
			if len(problems) != 1 || problems[0] != want {
				t.Errorf("problems: got %q, want [%q]", problems, want)
			}
		})
	}
}

func TestNormalizeReportsEveryProblem(t *testing.T) {
	r := Request{
		Kind:            KindBacklogReview,
		TaskID:          "bad",
		TaskDescription: strings.Repeat("d", 11),
		VLLMURL:         "ftp://x",
		Constraints: Constraints{
			PlanID:         "p",
			TimeoutSeconds: -1,
			MaxRetries:     99,
		},
		Agents: []Agent{{ID: "a"}, {ID: "a", Role: "r", Model: "m", VLLMURL: "http://u:p@h"}},
	}
	err := Normalize(&r, Limits{MaxDescriptionBytes: 10})
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("Normalize: got %v, want a *ValidationError", err)
	}
	wantFields := []string{
		"role is required",
		"vllm_model is required",
		"constraints.story_id is required",
		"vllm_url must be an http or https URL",
		"task_description is 11 bytes",
		"constraints.timeout_seconds must not be negative",
		"constraints.max_retries is 99",
		"task_id must look like",
		"constraints.plan_id must be empty",
		"agents[0].role is required",
		"agents[0].model is required",
		"agents[1].id \"a\" repeats agents[0].id",
		"agents[1].vllm_url must not carry credentials",
	}
	if len(ve.Problems) != len(wantFields) {
		t.Errorf("problems: got %d %q, want %d", len(ve.Problems), ve.Problems, len(wantFields))
	}
	for _, w := range wantFields {
		if !hasProblem(ve.Problems, w) {
			t.Errorf("problems: got %q, want one containing %q", ve.Problems, w)
		}
	}
	if !sort.StringsAreSorted(ve.Problems) {
		t.Errorf("problems: got %q, want them sorted for stable messages", ve.Problems)
	}
	msg := err.Error()
	if want := "invalid request: " + strings.Join(ve.Problems, "; "); msg != want {
		t.Errorf("Error(): got %q, want %q", msg, want)
	}
	if !errors.Is(err, ErrInvalid) {
		t.Errorf("errors.Is(err, ErrInvalid): got false, want true")
	}
	for _, other := range []error{ErrNotFound, ErrConflict, ErrUnavailable, ErrDeadline, ErrAlreadyExists, ErrUnauthenticated} {
		if errors.Is(err, other) {
			t.Errorf("errors.Is(err, %v): got true, want false", other)
		}
	}
	// A wrapped validation error is still recognised.
	wrapped := fmt.Errorf("execute: %w", err)
	if !errors.Is(wrapped, ErrInvalid) || !errors.As(wrapped, &ve) {
		t.Errorf("wrapped validation error: got Is=%v As=%v, want both true", errors.Is(wrapped, ErrInvalid), errors.As(wrapped, &ve))
	}
}

func TestNormalizeStableMessage(t *testing.T) {
	// Normalize ranges over maps; the message must not depend on their order.
	var first string
	for i := 0; i < 50; i++ {
		r := Request{
			Kind: KindDeliberation, TaskID: "\xff", Role: "\xfe", VLLMModel: "\xfd",
			Constraints: Constraints{StoryID: "\xfc", PlanID: "\xff"},
			Agents:      []Agent{{ID: "\xff", Role: "\xfe", Model: "\xfd", PromptTemplate: "\xfc"}},
		}
		err := Normalize(&r, Limits{})
		if err == nil {
			t.Fatal("Normalize: got nil, want an error")
		}
		if i == 0 {
			first = err.Error()
		} else if err.Error() != first {
			t.Fatalf("Error() on run %d: got %q, want %q (same as run 0)", i, err.Error(), first)
		}
	}
}

func TestSentinelsAreDistinct(t *testing.T) {
	all := []error{ErrInvalid, ErrNotFound, ErrAlreadyExists, ErrConflict, ErrUnavailable, ErrUnauthenticated, ErrDeadline}
	for i, a := range all {
		for j, b := range all {
			if got := errors.Is(a, b); got != (i == j) {
				t.Errorf("errors.Is(%v, %v): got %v, want %v", a, b, got, i == j)
			}
		}
	}
}

// Every short text field has a limit, and no refusal echoes a caller's megabytes: a request
// whose every short field is 100 KiB is refused naming each, in a message of a few KiB.
func TestShortFieldsAreBounded(t *testing.T) {
	huge := strings.Repeat("x", 100<<10)
	r := validRequest(KindBacklogReview)
	r.TaskID, r.Role, r.VLLMModel = huge, huge, huge
	r.Constraints.StoryID = huge
	r.VLLMURL = "http://127.0.0.1/" + huge
	r.Constraints.Metadata = map[string]string{huge[:300]: "v"}
	r.Agents[0].ID, r.Agents[0].Role, r.Agents[0].Model = huge, huge, huge
	r.Agents = append(r.Agents, r.Agents[0]) // a repeated (huge) id
	err := Normalize(&r, Limits{})
	if err == nil {
		t.Fatal("accepted")
	}
	msg := err.Error()
	for _, want := range []string{
		"task_id is 102400 bytes, more than the limit of 256", "role is 102400 bytes", "vllm_model is 102400 bytes",
		"constraints.story_id is 102400 bytes", "vllm_url is 102417 bytes, more than the limit of 2048",
		"constraints.metadata key", "agents[0].id is 102400 bytes", "agents[0].model is 102400 bytes",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("the refusal does not say %q", want)
		}
	}
	if len(msg) > 8<<10 {
		t.Errorf("the refusal is %d bytes: it echoes the caller's text", len(msg))
	}
	ok := validRequest(KindDeliberation)
	ok.TaskID, ok.Agents[0].Model = strings.Repeat("t", MaxShortFieldBytes), strings.Repeat("m", MaxShortFieldBytes)
	if err := Normalize(&ok, Limits{}); err != nil {
		t.Errorf("fields at the limit: %v", err)
	}
}
