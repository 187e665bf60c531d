package ingress

import (
	"context"
	"errors"
	"sync"

	"github.com/fleet-ai/ray-executor/shared/rpcevents"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	protov2 "google.golang.org/protobuf/proto"
)

// grpc-go reports a request it cannot decode (invalid UTF-8 in a string, a truncated field)
// as INTERNAL, which tells a caller the server failed. It is the caller's input, so the
// ingress answers INVALID_ARGUMENT: its codec records the decoding error against the (reset)
// message instead of failing, and the outermost interceptor, which sees every decoded
// request first, answers the error and forgets it.

// undecodable holds, per request message that failed to decode, the reason.
var undecodable sync.Map // proto message pointer -> error

// tolerantCodec is the protobuf codec, except that a request it cannot decode is handed on
// empty, with the reason in undecodable.
type tolerantCodec struct{ encoding.CodecV2 }

func newTolerantCodec() tolerantCodec {
	return tolerantCodec{encoding.GetCodecV2(proto.Name)}
}

func (c tolerantCodec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(protov2.Message)
	if !ok {
		return c.CodecV2.Unmarshal(data, v)
	}
	// The shape first, read off the frames the message came in: a message of millions of
	// tiny repeated entries is refused before it is copied into one buffer or decoded into
	// millions of structs (rpcevents.CheckWireShape).
	r := data.Reader()
	err := rpcevents.CheckWireShape(r, data.Len(), m.ProtoReflect().Descriptor())
	r.Close()
	if err == nil {
		buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
		err = protov2.Unmarshal(buf.ReadOnlyData(), m)
		buf.Free()
	}
	if err == nil {
		return nil
	}
	protov2.Reset(m)
	undecodable.Store(m, err)
	return nil
}

// decodeError answers a request that failed to decode, forgetting it.
func decodeError(req any) error {
	if v, ok := undecodable.LoadAndDelete(req); ok {
		err := v.(error)
		if se := (*rpcevents.ShapeError)(nil); errors.As(err, &se) {
			return status.Error(codes.InvalidArgument, se.Error())
		}
		return status.Errorf(codes.InvalidArgument, "the request is not a valid protobuf message: %v", err)
	}
	return nil
}

func decodeUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := decodeError(req); err != nil {
		return nil, err
	}
	return h(ctx, req)
}

func decodeStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	return h(srv, decodingStream{ss})
}

type decodingStream struct{ grpc.ServerStream }

func (s decodingStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return decodeError(m)
}
