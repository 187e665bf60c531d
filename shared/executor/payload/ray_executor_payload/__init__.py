"""ray-executor payload: the standing executor (specs/records.md).

The Go side (shared/executor) embeds this package as the working_dir of one long-lived Ray
job, `python -u -m ray_executor_payload.executor`. Its replicas pull deliberations from the
NATS JetStream work queue, run each one's agents concurrently, each calling an
OpenAI-compatible (vLLM) chat completions endpoint, and write the outcome to the
deliberation's record.

Modules: executor (the driver, its Replica actors and their Worker), records (the record,
its state machine, the store, the counters and the terminal event), request (the work
message's request), prompts, agents (an agent's job and failed result, logging), allm (the
asyncio LLM client and retries), llm (the client's pure parts, and a synchronous post_chat
for the benchmarks), result (the outcome), telemetry (spans and metrics), nats_events (the NATS settings, the lifecycle
events and compatible agent responses, specs/nats.md).
Only the standard library, ray, nats-py and aiohttp are used, and OpenTelemetry's SDK and
OTLP exporters (telemetry: spans and metrics) when an OTLP endpoint is set and they are
installed.
"""

__version__ = "1"
