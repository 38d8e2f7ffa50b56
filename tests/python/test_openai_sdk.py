"""The official `openai` SDK as a client of a real gateway in front of the mock.

The mock's text is a pure function of the request (seed, prompt, max_tokens)
and is exactly `max_tokens` tokens long, so streamed and non-streamed answers
can be compared byte for byte.
"""

from __future__ import annotations

import asyncio

import openai
import pytest

from conftest import CLIENT_KEY, Gateway

MODEL = "gpt-4o"
ALIAS = "gpt4o"
TRICKLE = "gpt-4o-trickle"  # same target model, upstream writes 3 bytes at a time
UPSTREAM_MODEL = "gpt-4o-2024-08-06"
EMBEDDING_MODEL = "text-embedding-3-small"
EMBEDDING_ALIAS = "embed-small"  # no `model` in its target: upstream gets the name
MESSAGES = [
    {"role": "system", "content": "You are a test fixture."},
    {"role": "user", "content": "Say something deterministic."},
]
MAX_TOKENS = 17


def chat(client: openai.OpenAI, model: str = MODEL, max_tokens: int = MAX_TOKENS, **kwargs):
    return client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=max_tokens, **kwargs
    )


def choice_chunks(chunks) -> list:
    """Chunks carrying a choice (the include_usage chunk carries none)."""
    return [c for c in chunks if c.choices]


def joined_content(chunks) -> str:
    return "".join(c.choices[0].delta.content or "" for c in choice_chunks(chunks))


def assert_well_formed_stream(chunks, finish_reason: str) -> None:
    assert chunks, "empty stream"
    with_choice = choice_chunks(chunks)
    assert with_choice, "no chunk carried a choice"
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1, "chunk ids differ within one stream"
    assert {c.model for c in chunks} == {UPSTREAM_MODEL}
    assert with_choice[-1].choices[0].finish_reason == finish_reason
    assert all(c.choices[0].finish_reason is None for c in with_choice[:-1]), (
        "finish_reason before the last choice chunk"
    )


def content_deltas(chunks) -> list[str]:
    return [c.choices[0].delta.content for c in choice_chunks(chunks) if c.choices[0].delta.content]


# --- non-streaming chat -------------------------------------------------------


def test_chat_completion(client: openai.OpenAI, gateway: Gateway):
    before = gateway.mock_requests()
    resp = chat(client)

    assert resp.object == "chat.completion"
    assert resp.model == UPSTREAM_MODEL, "the gateway rewrites gpt-4o to its target model"
    assert len(resp.choices) == 1
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content, "empty content"
    assert choice.finish_reason in ("stop", "length")
    assert resp.usage is not None
    assert resp.usage.completion_tokens == MAX_TOKENS
    assert resp.usage.prompt_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + MAX_TOKENS
    # The mock only answers `upstream-secret`: success means the gateway
    # swapped the client's key, and the request really reached the mock.
    assert gateway.mock_requests() == before + 1


def test_chat_completion_alias(client: openai.OpenAI):
    by_name = chat(client, MODEL)
    by_alias = chat(client, ALIAS)

    assert by_alias.model == UPSTREAM_MODEL
    assert by_alias.choices[0].message.content == by_name.choices[0].message.content
    assert by_alias.usage.completion_tokens == MAX_TOKENS


@pytest.mark.parametrize("max_tokens", [1, 5, 64, 200])
def test_chat_completion_tokens(client: openai.OpenAI, max_tokens: int):
    resp = chat(client, max_tokens=max_tokens)
    assert resp.choices[0].message.content
    assert resp.usage.completion_tokens == max_tokens


# --- streaming chat -----------------------------------------------------------


def test_chat_stream_matches_non_stream(client: openai.OpenAI):
    expected = chat(client)
    chunks = list(chat(client, stream=True))

    assert_well_formed_stream(chunks, expected.choices[0].finish_reason)
    # The mock sends one token per event; the gateway must neither drop nor merge events.
    assert len(content_deltas(chunks)) == MAX_TOKENS
    assert joined_content(chunks) == expected.choices[0].message.content
    assert all(c.usage is None for c in chunks), "usage sent without include_usage"
    assert len(choice_chunks(chunks)) == len(chunks), "a choiceless chunk without include_usage"


def test_chat_stream_include_usage(client: openai.OpenAI):
    expected = chat(client)
    chunks = list(chat(client, stream=True, stream_options={"include_usage": True}))

    assert_well_formed_stream(chunks, expected.choices[0].finish_reason)
    assert joined_content(chunks) == expected.choices[0].message.content
    last = chunks[-1]
    assert last.choices == [], "the usage chunk must come last and carry no choice"
    assert last.usage is not None
    assert last.usage.completion_tokens == MAX_TOKENS
    assert last.usage.prompt_tokens == expected.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_stream_alias(client: openai.OpenAI):
    expected = chat(client, MODEL)
    with chat(client, ALIAS, stream=True) as stream:
        chunks = list(stream)
    assert_well_formed_stream(chunks, expected.choices[0].finish_reason)
    assert joined_content(chunks) == expected.choices[0].message.content


@pytest.mark.parametrize("include_usage", [False, True])
def test_chat_stream_trickled_upstream(client: openai.OpenAI, include_usage: bool):
    """Upstream bytes arrive 3 at a time: the client still sees whole events."""
    expected = chat(client, MODEL, max_tokens=40)
    assert chat(client, TRICKLE, max_tokens=40).choices[0].message.content == (
        expected.choices[0].message.content
    )
    chunks = list(
        chat(
            client,
            TRICKLE,
            max_tokens=40,
            stream=True,
            stream_options={"include_usage": include_usage},
        )
    )
    assert_well_formed_stream(chunks, expected.choices[0].finish_reason)
    assert joined_content(chunks) == expected.choices[0].message.content
    assert len(content_deltas(chunks)) == 40
    if include_usage:
        assert chunks[-1].usage.completion_tokens == 40
    else:
        assert all(c.usage is None for c in chunks)


def test_chat_stream_closed_early_then_reused(client: openai.OpenAI):
    """Leaving a stream after the first chunk must not break the next call."""
    expected = chat(client, max_tokens=200)
    with chat(client, stream=True, max_tokens=200) as stream:
        first = next(iter(stream))
        assert first.object == "chat.completion.chunk"
    again = chat(client, max_tokens=200)
    assert again.choices[0].message.content == expected.choices[0].message.content


# --- other endpoints ----------------------------------------------------------


def test_models_list(client: openai.OpenAI):
    ids = [m.id for m in client.models.list()]
    assert {MODEL, ALIAS, EMBEDDING_MODEL} <= set(ids), ids


def test_embeddings(client: openai.OpenAI):
    # The SDK asks for base64 unless told otherwise; test both encodings.
    for kwargs in ({}, {"encoding_format": "float"}):
        resp = client.embeddings.create(
            model=EMBEDDING_MODEL, input=["first text", "second text"], **kwargs
        )
        assert resp.object == "list"
        assert [d.index for d in resp.data] == [0, 1]
        for d in resp.data:
            assert d.object == "embedding"
            assert len(d.embedding) > 0
            assert all(isinstance(x, float) for x in d.embedding)
        assert len(resp.data[0].embedding) == len(resp.data[1].embedding)
        assert resp.data[0].embedding != resp.data[1].embedding
        assert resp.usage.prompt_tokens > 0


def test_embeddings_alias(client: openai.OpenAI):
    """A target without `model` sends the model's own name upstream: an alias
    reaches the provider under the real name, never as the alias."""
    raw = client.embeddings.with_raw_response.create(
        model=EMBEDDING_ALIAS, input="text", encoding_format="float"
    )
    assert raw.headers.get("x-tollgate-upstream") == "mock"
    assert raw.headers.get("x-tollgate-model") == EMBEDDING_MODEL
    resp = raw.parse()
    assert resp.model == EMBEDDING_MODEL  # the mock echoes the model it was sent
    assert len(resp.data) == 1 and resp.data[0].embedding


def test_legacy_completions(client: openai.OpenAI):
    resp = client.completions.create(model=ALIAS, prompt="Once upon a time", max_tokens=9)
    assert resp.object == "text_completion"
    assert resp.model == UPSTREAM_MODEL
    assert resp.choices[0].text
    assert resp.usage.completion_tokens == 9


# --- errors -------------------------------------------------------------------


def test_unknown_model_is_404(client: openai.OpenAI, gateway: Gateway):
    before = gateway.mock_requests()
    with pytest.raises(openai.NotFoundError) as info:
        chat(client, "no-such-model")
    err = info.value

    assert err.status_code == 404
    assert err.code == "model_not_found"
    assert isinstance(err.body, dict), err.body
    assert err.body.get("code") == "model_not_found"
    assert err.body.get("message"), err.body
    assert "type" in err.body and "param" in err.body, err.body
    assert err.response.headers.get("x-request-id")
    assert gateway.mock_requests() == before, "an unknown model reached the upstream"


def test_unknown_model_stream_is_404(client: openai.OpenAI):
    with pytest.raises(openai.NotFoundError) as info:
        chat(client, "no-such-model", stream=True)
    assert info.value.code == "model_not_found"


def test_missing_model_is_400(client: openai.OpenAI):
    # The typed methods require `model`; post the body through the SDK's
    # generic request path so its error mapping is still exercised.
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/chat/completions", body={"messages": MESSAGES}, cast_to=object)
    assert info.value.status_code == 400
    assert info.value.code == "missing_model"


def test_mock_rejects_the_client_key(gateway: Gateway):
    """The premise of the key tests: the mock refuses any other key."""
    direct = openai.OpenAI(
        base_url=f"http://127.0.0.1:{gateway.mock_port}/v1",
        api_key=CLIENT_KEY,
        max_retries=0,
        http_client=openai.DefaultHttpxClient(trust_env=False),
    )
    with direct, pytest.raises(openai.AuthenticationError):
        direct.chat.completions.create(model=UPSTREAM_MODEL, messages=MESSAGES, max_tokens=3)


# --- headers ------------------------------------------------------------------


def test_raw_response_headers(client: openai.OpenAI):
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS
    )
    assert raw.status_code == 200
    assert raw.headers.get("x-request-id")
    assert raw.headers.get("x-tollgate-upstream") == "mock"
    assert raw.headers.get("x-tollgate-model") == UPSTREAM_MODEL
    parsed = raw.parse()
    assert parsed.usage.completion_tokens == MAX_TOKENS

    other = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS
    )
    assert other.headers.get("x-request-id") != raw.headers.get("x-request-id")


def test_client_request_id_is_echoed(client: openai.OpenAI):
    rid = "pytest-6f1c2a0e-request-id"
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=MAX_TOKENS,
        extra_headers={"x-request-id": rid},
    )
    assert raw.headers.get("x-request-id") == rid
    assert raw.headers.get("x-tollgate-upstream") == "mock"


def test_streaming_raw_response_headers(client: openai.OpenAI):
    with client.chat.completions.with_streaming_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS, stream=True
    ) as resp:
        assert resp.headers.get("x-request-id")
        assert resp.headers.get("x-tollgate-upstream") == "mock"
        assert resp.headers.get("content-type", "").startswith("text/event-stream")
        chunks = list(resp.parse())
    assert joined_content(chunks)


# --- async client -------------------------------------------------------------


def test_async_stream(gateway: Gateway, client: openai.OpenAI):
    expected = {n: chat(client, max_tokens=n).choices[0].message.content for n in (3, 17, 40)}

    async def one(aclient: openai.AsyncOpenAI, max_tokens: int) -> tuple[str, list]:
        stream = await aclient.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=max_tokens,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
        return joined_content(chunks), chunks

    async def main():
        async with gateway.async_client() as aclient:
            single = await one(aclient, MAX_TOKENS)
            # Several streams at once over the same client (pooled connections).
            many = await asyncio.gather(*(one(aclient, n) for n in (3, 17, 40) * 3))
            return single, many

    (text, chunks), many = asyncio.run(main())
    assert text == expected[MAX_TOKENS]
    assert chunks[-1].usage.completion_tokens == MAX_TOKENS
    for n, (text, chunks) in zip((3, 17, 40) * 3, many):
        assert text == expected[n]
        assert chunks[-1].usage.completion_tokens == n
