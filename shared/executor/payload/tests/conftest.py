import os
import sys

import pytest

PAYLOAD_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
for path in (TESTS_DIR, PAYLOAD_DIR):
    if path not in sys.path:
        sys.path.insert(0, path)

from llm_stub import StubLLM  # noqa: E402


@pytest.fixture
def stub():
    s = StubLLM()
    yield s
    s.close()


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@pytest.fixture(scope="session")
def _nats_session(tmp_path_factory):
    """The session's NATS server (see nats_server.py), or the reason there is none."""
    import nats_server as ns

    binary = ns.binary_path()
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        yield None, ns.missing_binary_message(binary)
        return
    server = ns.NatsServer(binary, str(tmp_path_factory.mktemp("nats"))).start()
    try:
        yield server, ""
    finally:
        server.stop()


@pytest.fixture
def nats_server(_nats_session):
    """A real NATS server with JetStream and the two streams. Without the binary the test
    is skipped, except under CI=true, where it fails."""
    server, reason = _nats_session
    if server is None:
        if _ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return server


@pytest.fixture
def optional_nats_server(_nats_session):
    """Like nats_server, but outside CI a missing binary gives None (the test then runs
    without its NATS checks) instead of a skip."""
    server, reason = _nats_session
    if server is None:
        if _ci():
            pytest.fail(reason, pytrace=False)
        import warnings

        warnings.warn(f"NATS checks skipped: {reason}")
    return server


@pytest.fixture
def otlp_sink():
    """A real OTLP receiver (bin/otlp-sink, the OpenTelemetry Collector's) for one test. A
    missing binary fails the test, in CI and out of it: `make otlp-sink` builds it."""
    import otlp_sink as sink_mod

    s = sink_mod.start()
    if s is None:
        pytest.fail(sink_mod.missing_binary_message(sink_mod.binary_path()), pytrace=False)
    try:
        yield s
    finally:
        s.stop()
