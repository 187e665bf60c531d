package ray

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/fleet-ai/ray-executor/shared/domain"
)

// FuzzJobDetails feeds arbitrary bodies to the client as Ray's answer to GET /api/jobs/{id}:
// it must return details or an error wrapping ErrUnavailable, never panic.
func FuzzJobDetails(f *testing.F) {
	f.Add([]byte(`{"type":"SUBMISSION","submission_id":"s","status":"RUNNING","start_time":1795763729695,"metadata":{"a":"b"}}`))
	f.Add([]byte(`{"status":null,"metadata":null,"runtime_env":null,"driver_exit_code":null}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"start_time":-1,"end_time":9223372036854775807}`))
	f.Add([]byte("\xff\xfe"))
	var body []byte
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(body) }))
	defer srv.Close()
	c, err := New(Config{Address: srv.URL})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		body = b
		j, err := c.Job(context.Background(), "s")
		if err != nil && !errors.Is(err, domain.ErrUnavailable) {
			t.Fatalf("got %v, want details or ErrUnavailable", err)
		}
		if err == nil {
			_ = j.Status.Terminal()
		}
	})
}
