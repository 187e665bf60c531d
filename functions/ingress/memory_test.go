package ingress

import (
	"context"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

// The ingress binary, with credentials required, takes 8 concurrent 4 MiB messages of
// millions of empty repeated entries, three rounds with a valid token and three without,
// and stays under 64 MiB resident at its peak (VmHWM, the kernel's accounting of the
// process). Before credentials were checked ahead of the message and the shape ahead of
// decoding, four such messages took it from 27 MB to 541 MB.
func TestHostileFloodsStayUnder64MiB(t *testing.T) {
	const limit = 64 << 20
	p := testenv.StartBinary(t, "./cmd", "AUTH_TOKENS="+testTokens, "NATS_URL=nats://127.0.0.1:1",
		"EXECUTE_URL=http://127.0.0.1:1", "STATUS_URL=http://127.0.0.1:1", "LIST_URL=http://127.0.0.1:1")
	conn, err := grpc.NewClient(p.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(8<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	flood := make([]byte, 0, 4<<20)
	for len(flood)+2 <= 4<<20-16 {
		flood = append(flood, 0x2a, 0x00) // an empty agents (field 5) entry
	}
	_, before := p.Memory(t)
	for round := range 6 {
		ctx, want := withToken(writerToken), codes.InvalidArgument
		if round%2 == 1 {
			ctx, want = context.Background(), codes.Unauthenticated
		}
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var out []byte
				err := conn.Invoke(ctx, pb.RayExecutorService_ExecuteDeliberation_FullMethodName, flood, &out, grpc.ForceCodec(rawCodec{}))
				if status.Code(err) != want {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("round %d: got %v, want %s", round, err, want)
		}
	}
	rss, peak := p.Memory(t)
	t.Logf("ingress resident: %d MiB before, peak %d MiB, %d MiB after 48 hostile 4 MiB messages", before>>20, peak>>20, rss>>20)
	if peak > limit {
		t.Errorf("the ingress peaked at %d MiB resident, over %d MiB", peak>>20, limit>>20)
	}
}
