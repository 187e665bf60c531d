package testenv

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/fleet-ai/ray-executor/shared/natsbus"
	"github.com/fleet-ai/ray-executor/shared/natslocal"
)

// NATS starts an embedded NATS JetStream server for one test (a free port, storage in
// t.TempDir()) and returns a bus connected to it with the streams provisioned; the
// server's URL is bus.Config().URL. Both are closed when the test ends.
func NATS(t testing.TB) *natsbus.Bus {
	t.Helper()
	srv, err := natslocal.Start("127.0.0.1:0", filepath.Join(t.TempDir(), "nats"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	b, err := natsbus.Connect(natsbus.Config{URL: srv.URL(), Provision: true}, "test "+t.Name(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for !b.Connected() && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	if err := b.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	return b
}
