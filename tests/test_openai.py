"""The OpenAI-compatible API (gateway/openai.py) through the real `openai` client against the
real server on the tiny model: the same seed gives the same text on every route, streamed or
not; stop strings, n, usage, errors and the API key behave as OpenAI's clients expect."""

import httpx
import openai
import pytest

from bench.servers import bentoml_serve

pytestmark = pytest.mark.slow
CHAT = [{"role": "system", "content": "You write backstories."},
        {"role": "user", "content": "Who is Ember?"}]


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_lists_the_served_model(client):
    (model,) = client.models.list().data
    assert model.id and model.object == "model"


def test_chat_completion_is_seeded_and_counts_tokens(client):
    def ask(**kw):
        return client.chat.completions.create(model="any", messages=CHAT, max_tokens=12, seed=7,
                                              **kw)

    a, b = ask(), ask()
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.choices[0].message.role == "assistant"
    assert a.choices[0].finish_reason in ("length", "stop") and a.object == "chat.completion"
    assert 0 < a.usage.completion_tokens <= 12 and a.usage.prompt_tokens > 10
    assert a.usage.total_tokens == a.usage.prompt_tokens + a.usage.completion_tokens
    two = ask(n=2)
    assert len(two.choices) == 2 and two.choices[0].message.content == a.choices[0].message.content
    assert [c.index for c in two.choices] == [0, 1]


def test_streamed_chat_is_the_same_text_in_openai_chunks(client):
    whole = client.chat.completions.create(model="any", messages=CHAT, max_tokens=16, seed=3)
    chunks = list(client.chat.completions.create(model="any", messages=CHAT, max_tokens=16,
                                                 seed=3, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_completions_continue_raw_text_streamed_or_not(client):
    kw = {"model": "any", "prompt": "Once upon a time", "max_tokens": 10, "seed": 11}
    whole = client.completions.create(**kw)
    assert whole.object == "text_completion" and whole.choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(**kw, stream=True))
    assert streamed == whole.choices[0].text
    many = client.completions.create(**{**kw, "prompt": ["A", "B"]})
    assert len(many.choices) == 2


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings_cut_the_text(client, stream):
    kw = {"model": "any", "messages": CHAT, "max_tokens": 40, "seed": 5}
    free = client.chat.completions.create(**kw).choices[0].message.content
    stop = next(c for c in free[1:] if c.isalpha())  # a letter the free text has past its start
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in
                       client.chat.completions.create(**kw, stop=[stop], stream=True))
    else:
        reply = client.chat.completions.create(**kw, stop=stop)
        text = reply.choices[0].message.content
        assert reply.choices[0].finish_reason == "stop"
    assert text == free[: free.index(stop)]


def test_bad_requests_are_422_in_openai_shape(client, server):
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.chat.completions.create(model="any", messages=[], max_tokens=4)
    assert e.value.body["param"] == "messages"
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.completions.create(model="any", prompt="x", logprobs=2)
    assert "logprobs" in e.value.message
    r = httpx.post(f"{server}/v1/chat/completions", content=b"{nope", timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_the_api_key_guards_v1_like_api(tiny_model):
    with bentoml_serve(str(tiny_model), env={"BACKSTORY_API_KEY": "s3cret"}) as url:
        wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as e:
            wrong.models.list()
        assert "API key" in e.value.body["message"]
        right = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0)
        reply = right.chat.completions.create(model="any", messages=CHAT, max_tokens=4)
        assert reply.choices[0].message.content is not None
