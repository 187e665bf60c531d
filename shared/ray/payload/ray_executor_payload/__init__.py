"""ray-executor payload: the driver of a deliberation Ray job.

The Go gateway (shared/ray) embeds this package as the job's working_dir and runs
`python -u -m ray_executor_payload`, the request JSON in a package of its own named in the
job's runtime_env.py_modules (RAY_EXECUTOR_REQUEST_MODULE names its module). The payload runs one Ray task per agent, each calling an OpenAI-compatible (vLLM) chat
completions endpoint, and prints one line `RAY_EXECUTOR_RESULT {json}` on stdout.

Modules: request (input contract), prompts, llm (HTTP client, retries), runner (Ray tasks),
result (output contract), events (publisher hooks), nats_events (NATS JetStream publisher,
specs/nats.md), __main__ (entrypoint).
Only the standard library and ray are used, plus nats-py for events when it is installed.
"""

from .request import REQUEST_MODULE_ENV  # noqa: F401
from .result import RESULT_MARKER  # noqa: F401

__version__ = "1"
