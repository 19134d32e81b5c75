"""The official `openai` Python client, unchanged, against the real server (tiny model, engine, waitress)."""

from __future__ import annotations

import pytest
import serving_fixtures
from serving_fixtures import MODEL_NAME

served = serving_fixtures.served
PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def client(served):
    from openai import OpenAI

    return OpenAI(base_url=f"{served.url}/v1", api_key="x", max_retries=0, timeout=60)


def test_models(client):
    assert [model.id for model in client.models.list()] == [MODEL_NAME]


def test_completion(client):
    answer = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=8, temperature=0)
    assert answer.object == "text_completion"
    assert answer.choices[0].finish_reason == "length" and answer.choices[0].text
    assert answer.usage.completion_tokens == 8
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 8


def test_chat_completion(client):
    answer = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "Hello"}],
                                            max_tokens=6, temperature=0, seed=1)
    assert answer.choices[0].message.role == "assistant"
    assert isinstance(answer.choices[0].message.content, str)
    assert answer.choices[0].finish_reason in ("stop", "length")


def test_streams_equal_the_whole_answers(client):
    whole = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=12, temperature=0)
    pieces = [chunk.choices[0].text for chunk in client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=12, temperature=0, stream=True)]
    assert len(pieces) > 2 and "".join(pieces) == whole.choices[0].text

    messages = [{"role": "user", "content": "Tell me a story"}]
    chat = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=12, temperature=0)
    stream = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == chat.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens


def test_bad_request_raises_the_clients_error(client):
    from openai import BadRequestError

    with pytest.raises(BadRequestError) as caught:
        client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=-1)
    assert "max_tokens" in caught.value.message
