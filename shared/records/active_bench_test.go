package records

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

// BenchmarkActiveIndex reads an index of 200 active deliberations (issue 11's figure) both
// ways Active can: the one-request batch it uses, and the watcher it falls back to above
// 1,024 entries (a consumer per read, plus the subject list that checks it).
//
//	go test -run '^$' -bench ActiveIndex ./shared/records/
func BenchmarkActiveIndex(b *testing.B) {
	bus := testenv.NATS(b)
	s := New(bus.Conn(), bus.JetStream(), Config{})
	ctx := context.Background()
	if err := s.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	req := domain.Request{Kind: domain.KindDeliberation, TaskID: "t", Agents: []domain.Agent{{ID: "a1"}}}
	for i := range 200 {
		if err := s.PutActive(ctx, domain.NewRecord(fmt.Sprintf("d%03d", i), req, "h", "", "", time.Now()).Active()); err != nil {
			b.Fatal(err)
		}
	}
	kv, err := s.kv(ctx)
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		read func() ([]keyValue, error)
	}{
		{"batch", func() ([]keyValue, error) { return s.activeBatch(ctx) }},
		{"watched", func() ([]keyValue, error) { return s.activeWatched(ctx, kv) }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				got, err := tc.read()
				if err != nil || len(got) != 200 {
					b.Fatalf("got %d entries, %v; want 200", len(got), err)
				}
			}
		})
	}
}
