package ingress

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/fleet-ai/ray-executor/shared/testenv"
)

// A peer holding its share of connections (idle ones, as a slow-loris client holds them)
// cannot open another; another peer can, until the replica's total is reached; a closed
// connection frees its place. Refusals are logged with their reason, at most once per peer
// per refusalLogEvery however many there are.
func TestConnectionsAreCappedPerPeerAndInAll(t *testing.T) {
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var logs testenv.SyncBuffer
	ln := LimitConns(raw, ConnLimits{PerPeer: 2, Total: 3}, slog.New(slog.NewTextHandler(&logs, nil)))
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)
	addr := raw.Addr().String()

	dialFrom := func(local string) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 2 * time.Second}
		return d.Dial("tcp", addr)
	}
	check := func(local string) error {
		cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return dialFrom(local) }))
		if err != nil {
			return err
		}
		defer cc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	// closedByServer reports whether the server closed c without a byte (a refusal).
	closedByServer := func(c net.Conn) bool {
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err := c.Read(make([]byte, 1))
		return err == io.EOF || err != nil && strings.Contains(err.Error(), "reset")
	}

	var held []net.Conn
	for range 2 {
		c, err := dialFrom("127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	t.Cleanup(func() {
		for _, c := range held {
			_ = c.Close()
		}
	})
	extra, err := dialFrom("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if !closedByServer(extra) {
		t.Error("a third connection from one peer was kept")
	}
	_ = extra.Close()
	if err := check("127.0.0.1"); err == nil {
		t.Error("an RPC over a third connection from one peer succeeded")
	}
	if err := check("127.0.0.2"); err != nil {
		t.Errorf("another peer, within the total: %v", err)
	}
	// Another peer holds the third place of three: the total is reached for everyone. (The
	// server counts a closed connection out once it notices; wait for that, and for the
	// third to be counted in.)
	open := func(want int) {
		t.Helper()
		l := ln.(*limitedListener)
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			l.mu.Lock()
			n := l.total
			l.mu.Unlock()
			if n == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d connections counted, want %d", n, want)
			}
		}
	}
	open(2)
	third, err := dialFrom("127.0.0.3")
	if err != nil {
		t.Fatal(err)
	}
	held = append(held, third)
	open(3)
	if err := check("127.0.0.4"); err == nil {
		t.Error("a fourth connection in all was served")
	}
	// Freeing a place of the first peer's lets it in again.
	_ = held[0].Close()
	_ = third.Close()
	deadline := time.Now().Add(5 * time.Second)
	for check("127.0.0.1") != nil {
		if time.Now().After(deadline) {
			t.Fatal("a closed connection never freed its place")
		}
		time.Sleep(50 * time.Millisecond)
	}

	out := logs.String()
	if !strings.Contains(out, "MAX_CONNECTIONS_PER_PEER") || !strings.Contains(out, "MAX_CONNECTIONS)") {
		t.Errorf("the refusals' reasons are not logged:\n%s", out)
	}
	if n := strings.Count(out, "peer=127.0.0.1 "); n != 1 {
		t.Errorf("127.0.0.1's refusals logged %d times, want once per %s:\n%s", n, refusalLogEvery, out)
	}
}
