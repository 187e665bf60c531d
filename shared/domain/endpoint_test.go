package domain

import (
	"strings"
	"testing"
)

func TestEndpointPolicy(t *testing.T) {
	p, err := ParseEndpointPolicy("http://127.0.0.1, https://vllm.example.com:8443/v1/ ,http://llm.svc:8000")
	if err != nil {
		t.Fatal(err)
	}
	for url, want := range map[string]bool{
		"http://127.0.0.1:8000":                 true, // no port in the entry: any port
		"http://127.0.0.1":                      true,
		"https://127.0.0.1:8000":                false, // scheme differs
		"https://vllm.example.com:8443/v1":      true,
		"https://VLLM.example.com:8443/v1/chat": true,
		"https://vllm.example.com:8443/v10":     false, // not on a segment boundary
		"https://vllm.example.com/v1":           false, // port differs (443)
		"http://llm.svc:8000/anything":          true,
		"http://llm.svc:8001":                   false,
		"http://169.254.169.254/latest":         false,
		"http://127.0.0.1.evil.example:8000":    false,
		// Path tricks against an entry with a path: what a server might read as another
		// path is refused, however it is spelled.
		"https://vllm.example.com:8443/v1/../admin":         false,
		"https://vllm.example.com:8443/v1/./chat":           false,
		"https://vllm.example.com:8443/v1/%2e%2e/admin":     false,
		"https://vllm.example.com:8443/v1/%2E%2E/admin":     false,
		"https://vllm.example.com:8443/v1%2f..%2fadmin":     false,
		"https://vllm.example.com:8443/v1/..%5cadmin":       false,
		"https://vllm.example.com:8443/v1/..\\admin":        false,
		"https://vllm.example.com:8443/v1;x=y/chat":         false,
		"https://vllm.example.com:8443/v1/chat/completions": true,
	} {
		if got := p.Allows(url); got != want {
			t.Errorf("Allows(%q) got %v, want %v", url, got, want)
		}
	}
	none, _ := ParseEndpointPolicy("")
	if none.Allows("http://127.0.0.1:8000") || !strings.Contains(none.String(), "LLM_ENDPOINT_ALLOWLIST") {
		t.Errorf("an empty allowlist must allow nothing and say how to set it; got %q", none)
	}
	any, _ := ParseEndpointPolicy("*")
	if !any.Allows("http://anything:1") {
		t.Errorf("* must allow any endpoint")
	}
	for _, bad := range []string{"ftp://x", "http://", "not a url at all"} {
		if _, err := ParseEndpointPolicy(bad); err == nil {
			t.Errorf("ParseEndpointPolicy(%q): got nil error", bad)
		}
	}
	r := Request{Kind: KindDeliberation, TaskID: "t", TaskDescription: "d", Role: "r", VLLMModel: "m",
		VLLMURL: "http://169.254.169.254/", Constraints: Constraints{StoryID: "s"},
		Agents: []Agent{{ID: "a", Role: "r", Model: "m", VLLMURL: "http://127.0.0.1:9/"}}}
	err = Normalize(&r, Limits{Endpoints: p})
	if err == nil || !strings.Contains(err.Error(), `vllm_url "http://169.254.169.254/" is not an allowed LLM endpoint`) ||
		strings.Contains(err.Error(), "agents[0].vllm_url") {
		t.Errorf("got %v, want the request's vllm_url refused and the agent's (allowed) one accepted", err)
	}
}
