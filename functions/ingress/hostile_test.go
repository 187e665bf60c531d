package ingress

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
)

// rawCodec sends pre-encoded bytes as they are, so a test can send what no protobuf library
// would produce.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return v.([]byte), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

// Hostile messages get INVALID_ARGUMENT (or gRPC's RESOURCE_EXHAUSTED for a message over
// the size limit), never INTERNAL, and the server keeps serving.
func TestHostileMessagesAreInvalidArgument(t *testing.T) {
	addr := guarded(t, Config{MaxMessageBytes: 64 << 10}, &Server{})
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	// task_id (field 1) holding invalid UTF-8: proto3 strings must be UTF-8.
	badUTF8 := protowire.AppendTag(nil, 1, protowire.BytesType)
	badUTF8 = protowire.AppendBytes(badUTF8, []byte{'t', 0xff, 0xfe})
	// A length that runs past the end of the message.
	truncated := protowire.AppendTag(nil, 1, protowire.BytesType)
	truncated = protowire.AppendVarint(truncated, 1000)
	// agents (field 4) nested as a message whose own field claims a group that never ends.
	junk := []byte{0x22, 0x02, 0x0b, 0x00}
	execute, status_ := pb.RayExecutorService_ExecuteDeliberation_FullMethodName, pb.RayExecutorService_GetDeliberationStatus_FullMethodName
	cases := []struct {
		name    string
		body    []byte
		want    codes.Code
		methods []string
	}{
		{"invalid UTF-8 in a string", badUTF8, codes.InvalidArgument, []string{execute, status_}},
		{"truncated field", truncated, codes.InvalidArgument, []string{execute, status_}},
		// Field 4 is agents in ExecuteDeliberationRequest (unknown, so kept as is, elsewhere).
		{"malformed nested message", junk, codes.InvalidArgument, []string{execute}},
		{"over the size limit", protowire.AppendBytes(protowire.AppendTag(nil, 2, protowire.BytesType), []byte(strings.Repeat("x", 70<<10))),
			codes.ResourceExhausted, []string{execute, status_}},
	}
	for _, tc := range cases {
		for _, method := range tc.methods {
			var out []byte
			err := conn.Invoke(context.Background(), method, tc.body, &out, grpc.ForceCodec(rawCodec{}))
			if status.Code(err) != tc.want {
				t.Errorf("%s to %s: got %v, want %s", tc.name, method, err, tc.want)
			}
		}
	}
	// Watch is a server stream: its one request is read the same way.
	stream, err := conn.NewStream(context.Background(), &grpc.StreamDesc{ServerStreams: true},
		pb.RayExecutorService_WatchDeliberation_FullMethodName, grpc.ForceCodec(rawCodec{}))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.SendMsg(badUTF8); err != nil {
		t.Fatal(err)
	}
	_ = stream.CloseSend()
	var out []byte
	if err := stream.RecvMsg(&out); status.Code(err) != codes.InvalidArgument {
		t.Errorf("watch with invalid UTF-8: got %v, want InvalidArgument", err)
	}
	// Every recorded failure was answered and forgotten: nothing piles up.
	left := 0
	undecodable.Range(func(any, any) bool { left++; return true })
	if left != 0 {
		t.Errorf("%d undecodable requests still remembered", left)
	}
	// Still serving.
	if _, err := pb.NewRayExecutorServiceClient(conn).GetDeliberationStatus(context.Background(),
		&pb.GetDeliberationStatusRequest{DeliberationId: "delib-abc"}); err != nil {
		t.Fatalf("after hostile input: %v", err)
	}
}

// With credentials required, the credential is checked from the headers before the message
// is read: a caller without one gets UNAUTHENTICATED whatever it sends (never a decoding
// error that tells it about the schema), and a caller with one that sends millions of empty
// repeated entries is refused before they are decoded.
func TestCredentialsBeforeTheMessage(t *testing.T) {
	var reached atomic.Int32
	calls := &fakeCaller{CallFn: func(context.Context, string, string, proto.Message, rpcevents.CallOptions, proto.Message) error {
		reached.Add(1)
		return nil
	}}
	addr := guarded(t, Config{MaxMessageBytes: 4 << 20, Auth: AuthConfig{Tokens: mustTokens(t, testTokens)}}, &Server{Caller: calls})
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	badUTF8 := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), []byte{'t', 0xff})
	var flood []byte // 1.5 million empty agents (field 5): 3 MiB on the wire
	for range 1_500_000 {
		flood = append(flood, 0x2a, 0x00)
	}
	execute := pb.RayExecutorService_ExecuteDeliberation_FullMethodName
	for _, tc := range []struct {
		name string
		ctx  context.Context
		body []byte
		want codes.Code
		msg  string
	}{
		{"no token, undecodable", context.Background(), badUTF8, codes.Unauthenticated, "bearer token is required"},
		{"wrong token, undecodable", withToken("wrong-token-0123456789abcdef"), badUTF8, codes.Unauthenticated, "not valid"},
		{"no token, flood", context.Background(), flood, codes.Unauthenticated, "bearer token is required"},
		{"reader, flood", withToken(readerToken), flood, codes.PermissionDenied, "read access only"},
		{"writer, flood", withToken(writerToken), flood, codes.InvalidArgument, "fields in all"},
		{"writer, undecodable", withToken(writerToken), badUTF8, codes.InvalidArgument, "not a valid protobuf message"},
	} {
		var out []byte
		err := conn.Invoke(tc.ctx, execute, tc.body, &out, grpc.ForceCodec(rawCodec{}))
		if status.Code(err) != tc.want || !strings.Contains(status.Convert(err).Message(), tc.msg) {
			t.Errorf("%s: got %v, want %s saying %q", tc.name, err, tc.want, tc.msg)
		}
	}
	if n := reached.Load(); n != 0 {
		t.Errorf("%d calls reached a function", n)
	}
}

// An idle connection is closed after MAX_CONNECTION_IDLE (the client sees GOAWAY and goes
// idle), so clients that stop calling do not hold connections forever.
func TestIdleConnectionsAreClosed(t *testing.T) {
	addr := guarded(t, Config{MaxConnectionIdle: 300 * time.Millisecond}, &Server{})
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := pb.NewRayExecutorServiceClient(conn).GetDeliberationStatus(context.Background(),
		&pb.GetDeliberationStatusRequest{DeliberationId: "delib-abc"}); err != nil {
		t.Fatal(err)
	}
	if conn.GetState() != connectivity.Ready {
		t.Fatalf("after a call: %s, want READY", conn.GetState())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for conn.GetState() == connectivity.Ready {
		if !conn.WaitForStateChange(ctx, connectivity.Ready) {
			t.Fatal("the connection was still open 5 s after it went idle (MAX_CONNECTION_IDLE 300ms)")
		}
	}
}

// Health Watch streams need no credential and count against no caller: HEALTH_MAX_WATCHES
// bounds them per replica, and a closed one frees its place.
func TestHealthWatchesAreCapped(t *testing.T) {
	addr := guarded(t, Config{Limits: Limits{MaxInflight: 8, SubmitRate: 1, SubmitBurst: 1, MaxHealthWatches: 2},
		Auth: AuthConfig{Tokens: mustTokens(t, testTokens), OpenHealth: true}}, &Server{})
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	hc := healthpb.NewHealthClient(conn)
	watch := func() (context.CancelFunc, error) {
		ctx, cancel := context.WithCancel(context.Background())
		w, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{})
		if err == nil {
			_, err = w.Recv()
		}
		return cancel, err
	}
	var open []context.CancelFunc
	for i := range 2 {
		cancel, err := watch()
		if err != nil {
			t.Fatalf("watch %d: %v", i, err)
		}
		open = append(open, cancel)
	}
	cancel, err := watch()
	cancel()
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "HEALTH_MAX_WATCHES") {
		t.Errorf("a third watch: got %v, want ResourceExhausted naming HEALTH_MAX_WATCHES", err)
	}
	if _, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("Check beside the capped watches: %v", err)
	}
	open[0]()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		cancel, err := watch()
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a closed watch's place was not freed: %v", err)
		}
	}
	open[1]()
}
