"""API keys and limits as the official openai SDK sees them: its own
exception types for 401/403/429, and OpenAI's rate-limit headers on raw
responses. A gateway of its own (keys configured) with the embedded mock."""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path

import openai
import pytest

from conftest import Process, distinct_free_ports, wait_ready, STARTUP_TIMEOUT_S

KEY = "tg-python-sdk-key-0123456789"

CONFIG = """\
[server]
listen = "127.0.0.1:{port}"
workers = 2

[log]
access = false

[mock]
listen = "127.0.0.1:{mock_port}"

[[upstreams]]
name = "mock"
base_url = "http://127.0.0.1:{mock_port}/v1"

[[models]]
name = "gpt-4o"
targets = [{{ upstream = "mock" }}]

[[models]]
name = "claude-3"
targets = [{{ upstream = "mock" }}]

[[keys]]
id = "sdk"
tenant = "python"
key_sha256 = "{sha}"
models = ["gpt-4o"]
limits = {{ rpm = 4 }}
"""


@pytest.fixture(scope="module")
def keyed(tollgate_bin: str):
    with tempfile.TemporaryDirectory(prefix="tollgate-pytest-auth-") as tmp:
        workdir = Path(tmp)
        port, mock_port = distinct_free_ports(2)
        config = workdir / "tollgate.toml"
        config.write_text(
            CONFIG.format(port=port, mock_port=mock_port, sha=hashlib.sha256(KEY.encode()).hexdigest())
        )
        gw = Process("gateway", [tollgate_bin, "serve", "--config", str(config)], workdir, dict(os.environ))
        try:
            wait_ready(gw, f"http://127.0.0.1:{port}/healthz", time.monotonic() + STARTUP_TIMEOUT_S, [])
            yield f"http://127.0.0.1:{port}/v1", gw
            assert gw.popen.poll() is None, gw.output()
        finally:
            gw.stop()


def sdk(base_url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=base_url,
        api_key=key,
        max_retries=0,
        timeout=30.0,
        http_client=openai.DefaultHttpxClient(trust_env=False),
    )


MSG = [{"role": "user", "content": "hi"}]


def test_sdk_errors_and_rate_limit_headers(keyed):
    base_url, gw = keyed
    with pytest.raises(openai.AuthenticationError) as e:
        sdk(base_url, "tg-wrong").chat.completions.create(model="gpt-4o", messages=MSG)
    assert e.value.status_code == 401
    assert e.value.code == "invalid_api_key"

    client = sdk(base_url, KEY)
    # Per-minute windows are UTC minutes: start early in one so it cannot
    # roll over between the requests below.
    if time.time() % 60 > 50:
        time.sleep(61 - time.time() % 60)
    with pytest.raises(openai.PermissionDeniedError) as e:
        client.chat.completions.create(model="claude-3", messages=MSG)
    assert e.value.code == "model_not_allowed"

    # Four per minute (the 403 above did not count): remaining 3, 2, 1, 0.
    for left in (3, 2, 1, 0):
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MSG, max_tokens=3)
        assert raw.headers["x-ratelimit-limit-requests"] == "4"
        assert raw.headers["x-ratelimit-remaining-requests"] == str(left)
        assert raw.parse().choices[0].message.content
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="gpt-4o", messages=MSG)
    assert e.value.code == "rate_limit_exceeded"
    assert 1 <= int(e.value.response.headers["retry-after"]) <= 60
    assert KEY not in gw.output()
