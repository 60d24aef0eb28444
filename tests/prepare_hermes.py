"""Install, ahead of a test run, the real hermes-agent (with aiohttp) that the `hermes` tests use. Their fixtures do
the same on first use; .ci/run calls this first, so the suite's time is the tests' own. Says why when it cannot
(the tests then skip, saying so too)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest
from hermes_turns import ensure_aiohttp
from test_hermes_agent import ensure_hermes_venv

if __name__ == "__main__":
    try:
        print(f"hermes-agent ready: {ensure_aiohttp(ensure_hermes_venv())}")
    except pytest.skip.Exception as exc:
        print(f"the hermes tests will skip: {exc}")
