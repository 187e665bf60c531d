// Package llmstub is a stand-in OpenAI-compatible chat-completions server. It is what tests
// use in place of a real LLM (the one dependency that cannot run here), and what `make run`
// starts when no LLM endpoint is configured. It never pretends to think: its answers say
// they come from a stand-in.
package llmstub

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Behavior scripts the stand-in's answers for one model name.
type Behavior struct {
	// Status, when non-zero and not 200, is answered instead of a completion.
	Status int
	// FailTimes answers Status only for the first FailTimes calls, then succeeds (0 = always).
	FailTimes int
	// Delay is slept before answering (bounded by the request's context).
	Delay time.Duration
	// Content replaces the default answer.
	Content string
	// Reasoning is returned as message.reasoning_content.
	Reasoning string
}

// Call is one request the stand-in received.
type Call struct {
	Model       string
	Messages    []Message
	Temperature *float64
	MaxTokens   int
	Format      map[string]any
	Received    time.Time
	// Traceparent is the W3C trace context the request carried ("" when none): the trace
	// tests check that the LLM call is part of the deliberation's trace.
	Traceparent string
}

// Message is one chat message.
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// Server answers POST /v1/chat/completions.
type Server struct {
	mu        sync.Mutex
	behaviors map[string]Behavior
	calls     []Call
	perModel  map[string]int
	inFlight  int
	maxFlight int
}

// New returns a stand-in that answers every model successfully until told otherwise.
func New() *Server {
	return &Server{behaviors: map[string]Behavior{}, perModel: map[string]int{}}
}

// Script sets the behaviour for model.
func (s *Server) Script(model string, b Behavior) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.behaviors[model] = b
}

// Calls returns a copy of the requests received so far.
func (s *Server) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Call(nil), s.calls...)
}

// MaxConcurrent is the most requests that were in flight at once.
func (s *Server) MaxConcurrent() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxFlight
}

type chatRequest struct {
	Model          string         `json:"model"`
	Messages       []Message      `json:"messages"`
	Temperature    *float64       `json:"temperature"`
	MaxTokens      int            `json:"max_tokens"`
	ResponseFormat map[string]any `json:"response_format"`
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/v1/chat/completions" {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	var req chatRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 8<<20)).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "invalid JSON: "+err.Error())
		return
	}
	s.mu.Lock()
	s.calls = append(s.calls, Call{Model: req.Model, Messages: req.Messages, Temperature: req.Temperature,
		MaxTokens: req.MaxTokens, Format: req.ResponseFormat, Received: time.Now(), Traceparent: r.Header.Get("traceparent")})
	b := s.behaviors[req.Model]
	s.perModel[req.Model]++
	n := s.perModel[req.Model]
	s.inFlight++
	if s.inFlight > s.maxFlight {
		s.maxFlight = s.inFlight
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.inFlight--
		s.mu.Unlock()
	}()

	if b.Delay > 0 {
		select {
		case <-time.After(b.Delay):
		case <-r.Context().Done():
			return
		}
	}
	if b.Status != 0 && b.Status != http.StatusOK && (b.FailTimes == 0 || n <= b.FailTimes) {
		writeError(w, b.Status, fmt.Sprintf("stand-in scripted failure %d for model %s", b.Status, req.Model))
		return
	}
	content := b.Content
	if content == "" {
		content = answer(req)
	}
	prompt := 0
	for _, m := range req.Messages {
		prompt += len(strings.Fields(m.Content))
	}
	completion := len(strings.Fields(content))
	msg := map[string]any{"role": "assistant", "content": content}
	if b.Reasoning != "" {
		msg["reasoning_content"] = b.Reasoning
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"id":      fmt.Sprintf("standin-%d", n),
		"object":  "chat.completion",
		"created": time.Now().Unix(),
		"model":   req.Model,
		"choices": []any{map[string]any{"index": 0, "message": msg, "finish_reason": "stop"}},
		"usage": map[string]int{"prompt_tokens": prompt, "completion_tokens": completion,
			"total_tokens": prompt + completion},
	})
}

// answer is the default reply: clearly a stand-in, and for task-extraction requests (JSON
// response format) a JSON object of the shape the task-extraction consumer reads.
func answer(req chatRequest) string {
	var user string
	for _, m := range req.Messages {
		if m.Role == "user" {
			user = m.Content
		}
	}
	first := strings.SplitN(strings.TrimSpace(user), "\n", 2)[0]
	if len(first) > 120 {
		first = first[:120]
	}
	if req.ResponseFormat != nil {
		b, _ := json.Marshal(map[string]any{"tasks": []map[string]string{
			{"title": "Stand-in task for: " + first, "description": "Produced by the ray-executor LLM stand-in."},
		}})
		return string(b)
	}
	return fmt.Sprintf("[LLM stand-in, model %s] Proposal for: %s", req.Model, first)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"message": msg, "code": status}})
}
