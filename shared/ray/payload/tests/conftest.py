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
