// Package rpcevents carries the RayExecutorService RPCs as CloudEvents over HTTP: the
// catalogue of event types (specs/cloudevents.md describes it for people), the server side
// every function uses to decode a request event and reply with a response event, and the
// client side the ingress uses. A request event's data is the RPC's request message as
// protobuf JSON; the reply's type is the response message's full name and its data the
// response as protobuf JSON.
package rpcevents

import (
	"github.com/google/uuid"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// TypePrefix starts every request type; the RPC name follows it.
const TypePrefix = "fleet.ray_executor.v1."

// Request event types, one per RPC a function handles.
const (
	TypeExecuteDeliberation              = TypePrefix + "ExecuteDeliberation"
	TypeExecuteBacklogReviewDeliberation = TypePrefix + "ExecuteBacklogReviewDeliberation"
	TypeCancelDeliberation               = TypePrefix + "CancelDeliberation"
	TypeGetDeliberationStatus            = TypePrefix + "GetDeliberationStatus"
	TypeGetActiveJobs                    = TypePrefix + "GetActiveJobs"
	TypeGetStatus                        = TypePrefix + "GetStatus"
	// TypeReconcile asks the list function to publish the lifecycle events NATS lacks.
	TypeReconcile = TypePrefix + "Reconcile"
	// TypePing is what a Knative PingSource sends; the list function reconciles on it.
	TypePing = "dev.knative.sources.ping"
)

// Extension attributes a request may carry (CloudEvents attribute names are lower-case
// alphanumerics only).
const (
	// ExtIdempotencyKey overrides source+id as the key that makes a submission idempotent.
	ExtIdempotencyKey = "idempotencykey"
	// ExtTraceparent is the W3C trace context (CloudEvents distributed-tracing extension).
	ExtTraceparent = "traceparent"
	// ExtCaller and ExtCallerRole name the caller the ingress authenticated and its role
	// ("admin" or absent). A function believes them only from a request that carried the
	// internal credential (Request.Caller).
	ExtCaller     = "rexcaller"
	ExtCallerRole = "rexrole"
)

// ContentTypeProtobuf is binary protobuf event data, which functions accept besides
// protobuf JSON and send back to callers whose Accept header names it.
const ContentTypeProtobuf = "application/protobuf"

// ReplyType is the CloudEvent type of a reply carrying msg: its full protobuf name.
func ReplyType(msg proto.Message) string {
	return string(msg.ProtoReflect().Descriptor().FullName())
}

// Marshalling options. Requests tolerate unknown fields so that a newer caller's additions
// reach an older function without being refused (protobuf's own rule); replies emit the
// original field names (task_id, not taskId), the form callers of the original expect.
var (
	unmarshalOptions = protojson.UnmarshalOptions{DiscardUnknown: true}
	marshalOptions   = protojson.MarshalOptions{UseProtoNames: true}
)

// KeyFor returns the idempotency key of a request event: its idempotencykey extension when
// set, otherwise its source and id, which CloudEvents requires to be unique per event, so a
// redelivery of the same event (Knative delivers at least once) names the same key.
func KeyFor(source, id, idempotencyKey string) string {
	if idempotencyKey != "" {
		return "key\x00" + idempotencyKey
	}
	return "event\x00" + source + "\x00" + id
}

func init() {
	// Every request and reply event gets a random id; buffer the randomness rather than
	// make a getrandom system call per id.
	uuid.EnableRandPool()
}
