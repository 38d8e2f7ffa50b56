"""Token accounting seen through the official openai SDK.

The `gpt-4o-bytewise` model is served by a mock that writes every response
one byte at a time with CRLF line endings, so the gateway's SSE scanner and
chunked decoder meet every possible split. The mock's text is deterministic
and its usage exact, so content and usage can be compared for equality.
"""

import time

import openai

from conftest import Gateway

SERVED = "gpt-4o-2024-08-06"
MESSAGES = [
    {"role": "system", "content": "You count tokens."},
    {"role": "user", "content": "Résumé: 日本語, emoji 👩‍👩‍👧‍👦, code `x = 1\t\t# tab`."},
]


def wait_total(gw: Gateway, kind: str, source: str, want: int) -> int:
    """Polls /metrics until the counter reaches `want` (usage records are
    written when the response ends, just after the client has read it)."""
    deadline = time.monotonic() + 5
    value = gw.token_total(SERVED, kind, source)
    while value < want and time.monotonic() < deadline:
        time.sleep(0.02)
        value = gw.token_total(SERVED, kind, source)
    return value


def test_bytewise_stream_content_and_usage_match_the_provider(client: openai.OpenAI, gateway: Gateway):
    reference = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=23)
    before = gateway.token_total(SERVED, "completion", "provider")

    parts, usage = [], None
    for chunk in client.chat.completions.create(
        model="gpt-4o-bytewise",
        messages=MESSAGES,
        max_tokens=23,
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            parts.append(c.delta.content or "")
    assert "".join(parts) == reference.choices[0].message.content
    assert usage is not None, "the usage chunk the client asked for did not arrive"
    assert usage.completion_tokens == 23
    assert usage.prompt_tokens == reference.usage.prompt_tokens
    # The usage record the gateway wrote matches the provider's numbers.
    after = wait_total(gateway, "completion", "provider", before + 23)
    assert after == before + 23


def test_stream_without_include_usage_hides_the_injected_usage(client: openai.OpenAI, gateway: Gateway):
    before = gateway.token_total(SERVED, "completion", "provider")
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-bytewise", messages=MESSAGES, max_tokens=12, stream=True
        )
    )
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks), "a usage-only chunk reached a client that did not ask"
    assert sum(1 for c in chunks if c.choices[0].delta.content) == 12
    # ...yet the gateway billed exactly what the provider reported.
    assert wait_total(gateway, "completion", "provider", before + 12) == before + 12


def test_prompt_estimate_header_equals_provider_usage(client: openai.OpenAI):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES, max_tokens=3
    )
    resp = raw.parse()
    assert int(raw.headers["x-tollgate-prompt-tokens"]) == resp.usage.prompt_tokens
