"""Harness for the `openai` SDK end-to-end tests.

Starts two real `tollgate mock`s (one plain, one writing 3 bytes at a time)
requiring the upstream key, and a real `tollgate serve` in front of them, all
on free ports, once per session. The mocks answer 401 to any key but `UPSTREAM_KEY`, so every successful SDK call
also proves the gateway replaced the client's key with the configured one.

Binary: `$TOLLGATE_BIN`, or `<repo>/target/debug/tollgate` (run `cargo build`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

REPO = Path(__file__).resolve().parents[2]
UPSTREAM_KEY = "upstream-secret"
CLIENT_KEY = "client-key-not-forwarded"
STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0

# No proxy from the environment: every request here goes to 127.0.0.1.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1 (released before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def distinct_free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        p = free_port()
        if p not in ports:
            ports.append(p)
    return ports


def http_get_json(url: str, timeout: float = 2.0) -> tuple[int, dict]:
    """GET `url`; (status, parsed JSON body). HTTP errors are returned, not raised."""
    try:
        with _HTTP.open(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            return e.code, json.loads(body)
        except ValueError:
            return e.code, {"raw": body.decode("utf-8", "replace")}


class Process:
    """A child process whose stdout/stderr go to files, so a chatty child
    never blocks on a full pipe and the output is there for failure messages."""

    def __init__(self, name: str, argv: list[str], workdir: Path, env: dict[str, str]):
        self.name = name
        self.argv = argv
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=REPO
            )

    def output(self) -> str:
        def tail(path: Path) -> str:
            try:
                text = path.read_text("utf-8", "replace")
            except OSError as e:
                return f"<unreadable: {e}>"
            return text[-8000:] if text else "<empty>"

        return (
            f"--- {self.name}: {' '.join(self.argv)} (exit code {self.popen.poll()})\n"
            f"--- stderr:\n{tail(self.stderr_path)}\n--- stdout:\n{tail(self.stdout_path)}"
        )

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=STOP_TIMEOUT_S)


def wait_ready(proc: Process, url: str, deadline: float, others: list[Process]) -> None:
    """Poll `url` until it answers 200; fail with the children's output if the
    process exits or `deadline` (time.monotonic()) passes first."""
    last = "no attempt"
    delay = 0.01
    while True:
        if proc.popen.poll() is not None:
            pytest.fail(
                f"{proc.name} exited before it was ready ({url}: {last})\n"
                + "\n".join(p.output() for p in [proc, *others]),
                pytrace=False,
            )
        try:
            status, body = http_get_json(url, timeout=1.0)
            if status == 200:
                return
            last = f"HTTP {status}: {body}"
        except (OSError, ValueError) as e:  # refused, reset, timeout, bad JSON
            last = repr(e)
        if time.monotonic() >= deadline:
            pytest.fail(
                f"{proc.name} not ready after {STARTUP_TIMEOUT_S:.0f} s ({url}: {last})\n"
                + "\n".join(p.output() for p in [proc, *others]),
                pytrace=False,
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


@dataclass
class Gateway:
    """A running gateway and the mock behind it."""

    port: int
    mock_port: int
    gateway: Process
    mock: Process
    admin_port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    stats_reads: int = 0

    def mock_requests(self) -> int:
        """Requests the mock has served, not counting reads of its stats
        (`/mock/stats` counts itself). Only differences are meaningful."""
        status, body = http_get_json(f"http://127.0.0.1:{self.mock_port}/mock/stats")
        assert status == 200, body
        self.stats_reads += 1
        return body["requests"] - self.stats_reads

    def token_total(self, model: str, kind: str, source: str) -> int:
        """One `tollgate_tokens_total` counter from the admin `/metrics`."""
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=2) as r:
            text = r.read().decode()
        key = f'tollgate_tokens_total{{model="{model}",kind="{kind}",source="{source}"}} '
        for line in text.splitlines():
            if line.startswith(key):
                return int(line[len(key):])
        return 0

    def client(self, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.base_url,
            api_key=CLIENT_KEY,
            max_retries=0,  # a retry would hide the first answer
            timeout=30.0,
            http_client=openai.DefaultHttpxClient(trust_env=False),
            **kwargs,
        )

    def async_client(self, **kwargs) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=CLIENT_KEY,
            max_retries=0,
            timeout=30.0,
            http_client=openai.DefaultAsyncHttpxClient(trust_env=False),
            **kwargs,
        )


CONFIG = """\
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin_port}"
workers = 2

[log]
access = false

[[upstreams]]
name = "mock"
base_url = "http://127.0.0.1:{mock_port}/v1"
api_key_env = "MOCK_UPSTREAM_KEY"

# The same mock behaviour, but every response written 3 bytes at a time with
# a pause between stream events: exercises reassembly in the gateway.
[[upstreams]]
name = "trickle"
base_url = "http://127.0.0.1:{trickle_port}/v1"
api_key_env = "MOCK_UPSTREAM_KEY"

# Every byte its own write, CRLF line endings: SSE framing and chunked
# framing split at every possible point.
[[upstreams]]
name = "bytewise"
base_url = "http://127.0.0.1:{bytewise_port}/v1"
api_key_env = "MOCK_UPSTREAM_KEY"

[[models]]
name = "gpt-4o-bytewise"
targets = [{{ upstream = "bytewise", model = "gpt-4o-2024-08-06" }}]

[[models]]
name = "gpt-4o"
aliases = ["gpt4o"]
targets = [{{ upstream = "mock", model = "gpt-4o-2024-08-06" }}]

[[models]]
name = "gpt-4o-trickle"
targets = [{{ upstream = "trickle", model = "gpt-4o-2024-08-06" }}]

[[models]]
name = "text-embedding-3-small"
aliases = ["embed-small"]
targets = [{{ upstream = "mock" }}]
"""


@pytest.fixture(scope="session")
def tollgate_bin() -> str:
    path = Path(os.environ.get("TOLLGATE_BIN") or REPO / "target" / "debug" / "tollgate")
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"tollgate binary not found at {path}: run `cargo build` or set TOLLGATE_BIN",
            pytrace=False,
        )
    return str(path)


@pytest.fixture(scope="session")
def gateway(tollgate_bin: str):
    with tempfile.TemporaryDirectory(prefix="tollgate-pytest-") as tmp:
        workdir = Path(tmp)
        port, mock_port, trickle_port, bytewise_port, admin_port = distinct_free_ports(5)
        config = workdir / "tollgate.toml"
        config.write_text(
            CONFIG.format(
                port=port,
                mock_port=mock_port,
                trickle_port=trickle_port,
                bytewise_port=bytewise_port,
                admin_port=admin_port,
            )
        )

        env = dict(os.environ)
        env["MOCK_UPSTREAM_KEY"] = UPSTREAM_KEY
        env.setdefault("RUST_BACKTRACE", "1")

        procs: list[Process] = []
        try:
            mock = Process(
                "mock",
                [
                    tollgate_bin, "mock",
                    "--listen", f"127.0.0.1:{mock_port}",
                    "--api-key", UPSTREAM_KEY,
                ],
                workdir,
                env,
            )
            procs.append(mock)
            trickle = Process(
                "trickle",
                [
                    tollgate_bin, "mock",
                    "--listen", f"127.0.0.1:{trickle_port}",
                    "--api-key", UPSTREAM_KEY,
                    "--split", "3",
                    "--chunk-delay-ms", "1",
                ],
                workdir,
                env,
            )
            procs.append(trickle)
            bytewise = Process(
                "bytewise",
                [
                    tollgate_bin, "mock",
                    "--listen", f"127.0.0.1:{bytewise_port}",
                    "--api-key", UPSTREAM_KEY,
                    "--split", "1",
                    "--crlf",
                ],
                workdir,
                env,
            )
            procs.append(bytewise)
            gw = Process("gateway", [tollgate_bin, "serve", "--config", str(config)], workdir, env)
            procs.append(gw)

            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            for p, url in [
                (mock, f"http://127.0.0.1:{mock_port}/mock/stats"),
                (trickle, f"http://127.0.0.1:{trickle_port}/mock/stats"),
                (bytewise, f"http://127.0.0.1:{bytewise_port}/mock/stats"),
                (gw, f"http://127.0.0.1:{port}/healthz"),
            ]:
                wait_ready(p, url, deadline, [q for q in procs if q is not p])

            yield Gateway(
                port=port, mock_port=mock_port, gateway=gw, mock=mock, admin_port=admin_port
            )

            # A child that died mid-session is a failure even if every test passed.
            for p in procs:
                assert p.popen.poll() is None, f"{p.name} exited during the session\n{p.output()}"
        finally:
            for p in reversed(procs):
                p.stop()


@pytest.fixture
def client(gateway: Gateway) -> openai.OpenAI:
    c = gateway.client()
    yield c
    c.close()
