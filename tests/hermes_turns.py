"""Real chat turns through a real Hermes gateway (hermes-agent 0.19.0), offline: for tests that must prove
what happens to a turn in flight (a drain, a restart, a take-over).

The pieces, each usable on its own:

- `hermes_api_venv`: a session fixture, the `hermes_venv` of tests/test_hermes_agent.py with `aiohttp`
  (the api_server's one extra dependency, pinned as hermes-agent's `messaging` extra pins it) installed into
  it once, under a file lock; skipped with pip's reason when that cannot be had (offline). A test module
  imports both fixtures: `from test_hermes_agent import hermes_venv` and `from hermes_turns import
  hermes_api_venv`.
- `FakeModel`: an OpenAI-compatible model server on 127.0.0.1, a thread of this test process. It answers
  `GET /api/v1/models` and `/v1/models` (Hermes asks), and holds every chat completion `hold` seconds before
  answering `answer` (streamed as Hermes asks for it, or as one JSON body). `chats` counts the completions
  it received, `answered` when it finished each.
- `configure_api_profile(home, model)`: the profile's `.env` (the api_server on a free loopback port, with a
  key) and `config.yaml` (the model at the fake server, `model.context_length` set so Hermes fetches no
  metadata from the internet). Returns the `ApiServer` to talk to.
- `start_turn(api, message)`: a chat turn (`POST /v1/chat/completions`, not streamed) in a thread;
  `.result(timeout)` gives its `TurnResult` (HTTP status, body, answer, error code, when it started and
  ended). `chat(...)` is the same, waited for. `api_health(api)` reads `/health/detailed` (the gateway's pid
  and state), or None while nothing answers.

Example (a fleet from tests/fleet_harness.py running the real `hermes`, see test_hermes_idle_drain.py):

    def test_turn(fleet, hermes_api_venv):
        fleet.command = [str(hermes_api_venv / "bin" / "hermes")]
        home = fleet.profile_home("alpha")
        home.mkdir(parents=True)
        with FakeModel(hold=20.0) as model:
            api = configure_api_profile(home, model)
            fleet.write_manifest({"alpha": None}, drain_timeout="120s")
            fleet.apply()
            wait_until(lambda: api_health(api), 90)
            turn = start_turn(api, "hello")
            model.wait_for_chats(1, timeout=60)       # the turn is in the agent now
            ...                                       # restart, drain, take over
            result = turn.result(timeout=120)
            assert result.status == 200 and result.answer == model.answer

Everything a test starts here ends with it: `FakeModel.close()` (or leaving its `with`) releases the answers
it holds and stops its server thread; a turn's thread ends with its HTTP request, bounded by its timeout.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

AIOHTTP = "aiohttp==3.14.1"  # hermes-agent 0.19.0's pin (its `messaging` extra)
MODEL = "fake-model"
CONTEXT_LENGTH = 131072
API_KEY = "hermes-fleet-test-key-0123456789"  # the api_server refuses keys under 16 characters
DEFAULT_ANSWER = "Idle means idle under a drain: this answer came back whole."


# -- the api_server's dependency ------------------------------------------------------------------------

@pytest.fixture(scope="session")
def hermes_api_venv(hermes_venv: Path) -> Path:
    """The hermes venv with aiohttp, so a profile can enable Hermes' api_server."""
    return ensure_aiohttp(hermes_venv)


def ensure_aiohttp(hermes_venv: Path) -> Path:
    python = hermes_venv / "bin" / "python"
    marker = hermes_venv / f".installed-{AIOHTTP.replace('==', '-')}"
    if marker.exists():
        return hermes_venv
    from filelock import FileLock
    with FileLock(str(hermes_venv.parent / f".{hermes_venv.name}-aiohttp.lock")):  # parallel workers install once
        if not marker.exists():
            _install_aiohttp(python)
            marker.write_text(f"{AIOHTTP}\n")
    return hermes_venv


def _install_aiohttp(python: Path) -> None:
    if subprocess.run([str(python), "-c", "import aiohttp"], capture_output=True, timeout=120).returncode == 0:
        return
    pip = subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", AIOHTTP],
                         capture_output=True, text=True, timeout=600)
    if pip.returncode != 0:
        tail = "\n".join((pip.stderr + pip.stdout).strip().splitlines()[-10:])
        pytest.skip(f"pip install {AIOHTTP} into {python.parent.parent} failed (Hermes' api_server needs it): {tail}")


# -- the fake model -------------------------------------------------------------------------------------

class FakeModel:
    """An OpenAI-compatible model on 127.0.0.1 that holds each chat completion `hold` seconds (settable at
    any time; a held answer keeps the hold it started with)."""

    def __init__(self, *, hold: float = 0.0, answer: str = DEFAULT_ANSWER):
        self.hold = hold
        self.answer = answer
        self.chats: list[float] = []  # when each chat completion arrived (time.time())
        self.answered: list[float] = []  # when the answer to each was completely sent
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-model", daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def wait_for_chats(self, n: int, timeout: float) -> float:
        """When the n-th chat completion arrived; fails the test if it has not within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.chats) >= n:
                    return self.chats[n - 1]
            time.sleep(0.05)
        raise AssertionError(f"the model got {len(self.chats)} chat completion(s) in {timeout}s, not {n}")

    def close(self) -> None:
        """Release every held answer, stop serving and end the server thread."""
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> FakeModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # called from the handler threads
    def _arrived(self) -> float:
        with self._lock:
            self.chats.append(time.time())
            return self.hold

    def _done(self) -> None:
        with self._lock:
            self.answered.append(time.time())


def _handler(model: FakeModel) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args) -> None:  # quiet: no line per request
            pass

        def do_GET(self) -> None:
            if self.path.split("?")[0].rstrip("/") in ("/api/v1/models", "/v1/models"):
                self._json(200, {"object": "list", "data": [
                    {"id": MODEL, "object": "model", "owned_by": "hermes-fleet-tests", "created": 0,
                     "context_length": CONTEXT_LENGTH}]})
            else:
                self._json(404, {"error": {"message": f"no {self.path}", "type": "not_found"}})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                body = {}
            if not self.path.rstrip("/").endswith("/chat/completions"):
                self._json(404, {"error": {"message": f"no {self.path}", "type": "not_found"}})
                return
            model._closing.wait(model._arrived())
            if body.get("stream"):
                self._stream(model.answer)
            else:
                self._json(200, {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                                 "model": MODEL, "choices": [{"index": 0, "finish_reason": "stop",
                                                              "message": {"role": "assistant", "content": model.answer}}],
                                 "usage": _USAGE})
            model._done()

        def _json(self, code: int, doc: dict) -> None:
            data = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _stream(self, answer: str) -> None:
            """The answer word by word as server-sent chunks, then the finish and [DONE]."""
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            words = answer.split(" ")
            deltas = [{"role": "assistant", "content": words[0]}] + [{"content": " " + w} for w in words[1:]]
            for delta in deltas:
                self._event(_chunk(delta, None))
            self._event({**_chunk({}, "stop"), "usage": _USAGE})
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            self.close_connection = True

        def _event(self, doc: dict) -> None:
            self.wfile.write(b"data: " + json.dumps(doc).encode() + b"\n\n")

    return Handler


_USAGE = {"prompt_tokens": 7, "completion_tokens": 11, "total_tokens": 18}


def _chunk(delta: dict, finish: str | None) -> dict:
    return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()), "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


# -- the profile ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ApiServer:
    """Where a profile's api_server listens, and its key."""
    port: int
    key: str = API_KEY
    host: str = "127.0.0.1"

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def configure_api_profile(home: Path, model: FakeModel, *, port: int | None = None, key: str = API_KEY) -> ApiServer:
    """Write `home/.env` (the api_server on 127.0.0.1:`port`, a free one by default) and `home/config.yaml`
    (the model at `model`, its context length given) for a Hermes profile whose home is `home`."""
    api = ApiServer(port=port or free_port(), key=key)
    home.mkdir(parents=True, exist_ok=True)
    (home / ".env").write_text(f"API_SERVER_ENABLED=true\nAPI_SERVER_HOST={api.host}\nAPI_SERVER_PORT={api.port}\n"
                               f"API_SERVER_KEY={api.key}\n")
    (home / "config.yaml").write_text(
        "model:\n"
        f"  default: {MODEL}\n"
        "  provider: custom\n"
        f"  base_url: {model.base_url}\n"
        "  api_key: fake-model-key-0123456789\n"
        f"  context_length: {CONTEXT_LENGTH}\n")
    return api


# -- turns ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TurnResult:
    status: int | None  # the HTTP status; None when no answer came (refused, reset, timed out)
    body: dict | None  # the JSON body, when it was JSON
    text: str  # the raw body, or what went wrong
    started_at: float  # time.time() when the request was sent
    ended_at: float  # time.time() when the answer (or the failure) came

    @property
    def answer(self) -> str | None:
        """The assistant's message of a 200 answer."""
        try:
            return self.body["choices"][0]["message"]["content"]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            return None

    @property
    def error_code(self) -> str | None:
        """The OpenAI-style error code (`gateway_draining`, ...)."""
        try:
            return self.body["error"]["code"]  # type: ignore[index]
        except (KeyError, TypeError):
            return None


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


def _request(api: ApiServer, method: str, path: str, doc: dict | None, timeout: float) -> TurnResult:
    data = None if doc is None else json.dumps(doc).encode()
    req = urllib.request.Request(api.url(path), data=data, method=method,
                                 headers={"Authorization": f"Bearer {api.key}", "Content-Type": "application/json"})
    started = time.time()
    try:
        with _NO_PROXY.open(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (OSError, ValueError) as exc:  # refused, reset, timed out, a broken answer
        return TurnResult(None, None, f"{type(exc).__name__}: {exc}", started, time.time())
    text = raw.decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    return TurnResult(status, body if isinstance(body, dict) else None, text, started, time.time())


def chat(api: ApiServer, message: str = "hello", *, timeout: float = 120.0) -> TurnResult:
    """One chat turn through the gateway's API, waited for."""
    return _request(api, "POST", "/v1/chat/completions",
                    {"model": "hermes-agent", "messages": [{"role": "user", "content": message}]}, timeout)


class Turn:
    """A chat turn running in a thread of this process."""

    def __init__(self, api: ApiServer, message: str, timeout: float):
        self._result: TurnResult | None = None
        self._thread = threading.Thread(target=self._run, args=(api, message, timeout), daemon=True,
                                        name=f"turn-{message[:20]}")
        self._thread.start()

    def _run(self, api: ApiServer, message: str, timeout: float) -> None:
        self._result = chat(api, message, timeout=timeout)

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, timeout: float) -> TurnResult:
        """The turn's result; fails the test if it has not ended within `timeout` seconds."""
        self._thread.join(timeout)
        if self._result is None:
            raise AssertionError(f"the turn has not ended within {timeout}s")
        return self._result


def start_turn(api: ApiServer, message: str = "hello", *, timeout: float = 180.0) -> Turn:
    """Start a chat turn through the gateway's API; its HTTP request gives up after `timeout` seconds."""
    return Turn(api, message, timeout)


def api_health(api: ApiServer) -> dict | None:
    """`GET /health/detailed` (gateway_state, active_agents, pid, ...), or None while nothing answers it."""
    got = _request(api, "GET", "/health/detailed", None, timeout=5.0)
    return got.body if got.status == 200 and got.body is not None else None


__all__ = ["AIOHTTP", "API_KEY", "ApiServer", "FakeModel", "Turn", "TurnResult", "api_health", "chat",
           "configure_api_profile", "free_port", "hermes_api_venv", "start_turn"]
