"""The server's bad-request corpus: every case gets a 4xx with OpenAI's error shape naming the field, never a 500,
never a traceback, and no edit is made by any of them."""

from __future__ import annotations

import logging

import pytest

from meg.pack import EditPack
from serve_support import FIRST, engine_for, workspace

pytestmark = pytest.mark.integration

LONG = " ".join(["word"] * 120)  # more tokens than the tiny model's context of 64
MODEL = {"model": "tiny"}
USER = [{"role": "user", "content": FIRST[0].prompt}]


def completion(**fields) -> dict:
    return {**MODEL, "prompt": FIRST[0].prompt, **fields}


def chat(**fields) -> dict:
    return {**MODEL, "messages": USER, **fields}


def without(body: dict, key: str) -> dict:
    return {k: v for k, v in body.items() if k != key}


# (case id, method, path, body: dict = JSON, bytes = raw, expected status, expected param)
CASES = [
    # the body itself
    ("malformed json", "POST", "/v1/completions", b'{"model": "tiny", "prompt": ', 400, None),
    ("empty body", "POST", "/v1/completions", b"", 400, None),
    ("body is a list", "POST", "/v1/completions", b'[{"model": "tiny"}]', 400, None),
    ("body is a string", "POST", "/v1/completions", b'"hello"', 400, None),
    ("NaN in json", "POST", "/v1/completions", b'{"model": "tiny", "prompt": "x", "temperature": NaN}', 400, None),
    ("body not utf-8", "POST", "/v1/completions", b'{"model": "\xff\xfe"}', 400, None),
    ("body over the limit", "POST", "/v1/completions", completion(user="x" * 70_000), 413, None),
    # completions: missing and wrong-typed fields
    ("missing model", "POST", "/v1/completions", without(completion(), "model"), 400, "model"),
    ("missing prompt", "POST", "/v1/completions", without(completion(), "prompt"), 400, "prompt"),
    ("model not a string", "POST", "/v1/completions", completion(model=3), 400, "model"),
    ("unknown model", "POST", "/v1/completions", completion(model="gpt-4"), 404, "model"),
    ("empty prompt", "POST", "/v1/completions", completion(prompt=""), 400, "prompt"),
    ("blank prompt", "POST", "/v1/completions", completion(prompt="   \n"), 400, "prompt"),
    ("empty prompt list", "POST", "/v1/completions", completion(prompt=[]), 400, "prompt"),
    ("empty prompt in a list", "POST", "/v1/completions", completion(prompt=["a", ""]), 400, "prompt[1]"),
    ("prompt as token ids", "POST", "/v1/completions", completion(prompt=[1, 2, 3]), 400, "prompt"),
    ("prompt a number", "POST", "/v1/completions", completion(prompt=5), 400, "prompt"),
    ("prompt over the context", "POST", "/v1/completions", completion(prompt=LONG), 400, "prompt"),
    ("prompt over the character bound", "POST", "/v1/completions", completion(prompt="a" * 3000), 400, "prompt"),
    ("max_tokens zero", "POST", "/v1/completions", completion(max_tokens=0), 400, "max_tokens"),
    ("max_tokens negative", "POST", "/v1/completions", completion(max_tokens=-5), 400, "max_tokens"),
    ("max_tokens a string", "POST", "/v1/completions", completion(max_tokens="10"), 400, "max_tokens"),
    ("max_tokens a float", "POST", "/v1/completions", completion(max_tokens=1.5), 400, "max_tokens"),
    ("max_tokens a bool", "POST", "/v1/completions", completion(max_tokens=True), 400, "max_tokens"),
    ("max_tokens past the context", "POST", "/v1/completions", completion(max_tokens=1000), 400, "max_tokens"),
    ("temperature too high", "POST", "/v1/completions", completion(temperature=5), 400, "temperature"),
    ("temperature a string", "POST", "/v1/completions", completion(temperature="hot"), 400, "temperature"),
    ("top_p zero", "POST", "/v1/completions", completion(top_p=0), 400, "top_p"),
    ("n zero", "POST", "/v1/completions", completion(n=0), 400, "n"),
    ("n too large", "POST", "/v1/completions", completion(n=100), 400, "n"),
    ("n x prompts over a batch", "POST", "/v1/completions", completion(prompt=["a", "b", "c"], n=16), 400, "n"),
    ("five stops", "POST", "/v1/completions", completion(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    ("empty stop", "POST", "/v1/completions", completion(stop=[""]), 400, "stop"),
    ("stop a number", "POST", "/v1/completions", completion(stop=5), 400, "stop"),
    ("stream a string", "POST", "/v1/completions", completion(stream="yes"), 400, "stream"),
    ("unknown field", "POST", "/v1/completions", completion(foo=1), 400, "foo"),
    ("logprobs", "POST", "/v1/completions", completion(logprobs=5), 400, "logprobs"),
    ("echo", "POST", "/v1/completions", completion(echo=True), 400, "echo"),
    ("best_of", "POST", "/v1/completions", completion(best_of=3), 400, "best_of"),
    ("presence_penalty", "POST", "/v1/completions", completion(presence_penalty=1.0), 400, "presence_penalty"),
    ("use_edits not a bool", "POST", "/v1/completions", completion(use_edits="no"), 400, "use_edits"),
    # chat completions
    ("missing messages", "POST", "/v1/chat/completions", without(chat(), "messages"), 400, "messages"),
    ("no messages", "POST", "/v1/chat/completions", chat(messages=[]), 400, "messages"),
    ("messages a string", "POST", "/v1/chat/completions", chat(messages="hi"), 400, "messages"),
    ("unknown role", "POST", "/v1/chat/completions", chat(messages=[{"role": "bot", "content": "x"}]), 400,
     "messages[0].role"),
    ("missing role", "POST", "/v1/chat/completions", chat(messages=[{"content": "x"}]), 400, "messages[0].role"),
    ("content a number", "POST", "/v1/chat/completions", chat(messages=[{"role": "user", "content": 5}]), 400,
     "messages[0].content"),
    ("image content", "POST", "/v1/chat/completions",
     chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]), 400,
     "messages[0].content[0].type"),
    ("empty user message", "POST", "/v1/chat/completions", chat(messages=[{"role": "user", "content": ""}]), 400,
     "messages[0].content"),
    ("no user message", "POST", "/v1/chat/completions", chat(messages=[{"role": "system", "content": "x"}]), 400,
     "messages"),
    ("assistant last without a template", "POST", "/v1/chat/completions",
     chat(messages=[*USER, {"role": "assistant", "content": "x"}]), 400, "messages"),
    ("max_completion_tokens zero", "POST", "/v1/chat/completions", chat(max_completion_tokens=0), 400,
     "max_completion_tokens"),
    ("max_completion_tokens past the context", "POST", "/v1/chat/completions", chat(max_completion_tokens=500),
     400, "max_completion_tokens"),
    ("chat unknown model", "POST", "/v1/chat/completions", chat(model="tiny:edited"), 404, "model"),
    ("tools", "POST", "/v1/chat/completions", chat(tools=[{"type": "function"}]), 400, "tools"),
    ("json response format", "POST", "/v1/chat/completions", chat(response_format={"type": "json_object"}), 400,
     "response_format"),
    # edits
    ("edits missing", "POST", "/v1/edits", {}, 400, "edits"),
    ("edits empty", "POST", "/v1/edits", {"edits": []}, 400, "edits"),
    ("edit without target", "POST", "/v1/edits", {"edits": [{"prompt": "x"}]}, 400, "edits[0].target"),
    ("edit with empty prompt", "POST", "/v1/edits", {"edits": [{"prompt": "", "target": "y"}]}, 400,
     "edits[0].prompt"),
    ("edit target a number", "POST", "/v1/edits", {"edits": [{"prompt": "x", "target": 5}]}, 400,
     "edits[0].target"),
    ("edit a string", "POST", "/v1/edits", {"edits": ["The capital of France is Rome"]}, 400, "edits[0]"),
    ("edit misspelt field", "POST", "/v1/edits", {"edits": [{"promt": "x", "target": "y"}]}, 400,
     "edits[0].promt"),
    ("second edit bad", "POST", "/v1/edits", {"edits": [{"prompt": "a b", "target": "c"}, {"prompt": "d"}]}, 400,
     "edits[1].target"),
    ("edit prompt past the context", "POST", "/v1/edits", {"edits": [{"prompt": LONG, "target": "y"}]}, 400,
     "edits[0].prompt"),
    ("unknown edit mode", "POST", "/v1/edits", {"edits": [{"prompt": "x", "target": "y"}], "mode": "merge"}, 400,
     "mode"),
    ("replace an unknown prompt", "POST", "/v1/edits",
     {"edits": [{"prompt": "Nobody edited this", "target": "y"}], "mode": "replace"}, 400, "edits"),
    ("delete a non-integer id", "DELETE", "/v1/edits/abc", None, 400, "id"),
    ("delete a negative id", "DELETE", "/v1/edits/-1", None, 400, "id"),
    ("delete an unknown id", "DELETE", "/v1/edits/999", None, 404, "id"),
    ("list with limit 0", "GET", "/v1/edits?limit=0", None, 400, "limit"),
    ("list with a bad offset", "GET", "/v1/edits?offset=x", None, 400, "offset"),
    ("list with an unknown parameter", "GET", "/v1/edits?page=2", None, 400, "page"),
    # routes
    ("unknown route", "GET", "/v1/nothing", None, 404, None),
    ("wrong method", "PUT", "/v1/completions", None, 405, None),
    ("unknown model card", "GET", "/v1/models/nope", None, 404, "model"),
]


@pytest.fixture(scope="module")
def corpus_client(fact_gpt2, tokenizer):
    from starlette.testclient import TestClient

    from meg.serve.app import ServeSettings, create_app

    engine = engine_for(workspace(fact_gpt2, tokenizer), fact_gpt2, tokenizer, "corpus")
    settings = ServeSettings(name="tiny", max_prompt_chars=2000, max_body_bytes=64 * 1024)
    with TestClient(create_app(engine, settings)) as client:  # server exceptions would raise here
        yield client, engine


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name, method, path, body, status, param", CASES, ids=[c[0] for c in CASES])
def test_a_bad_request_gets_a_4xx_naming_the_field(corpus_client, caplog, name, method, path, body, status, param):
    client, _ = corpus_client
    caplog.set_level(logging.WARNING)
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body} if body is not None else {}
    response = client.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    message = error["message"]
    assert message and "\n" not in message and "Traceback" not in message and len(message) < 400
    if param is not None:
        assert param.split("[")[0].split(".")[0] in message or name == "second edit bad"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_chunked_body_over_the_limit_is_refused(corpus_client):
    client, _ = corpus_client
    response = client.post("/v1/completions", content=(b"x" * 8192 for _ in range(10)))  # no Content-Length
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


def test_no_bad_request_changed_the_pack(corpus_client):
    _, engine = corpus_client
    assert engine.served.revision == 0 and EditPack.load(engine.pack_path).ids == list(range(12))
