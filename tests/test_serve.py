"""`meg serve` on a tiny GPT-2 and a 12-edit pack: decoding with per-row neurons, batching, the OpenAI API through
the official client, live edits (saved before they are acknowledged; kill -9 loses none), the API key, the CLI."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from typer.testing import CliRunner

from meg.cli.main import app as cli
from meg.decoding import greedy_generate
from meg.pack import EditPack
from meg.serve.batcher import Batcher, Overloaded, TimedOut
from meg.serve.engine import Engine, Row
from meg.serve.sampling import RowSpec, generate_rows
from serve_support import ASKED, FIRST, LATER, engine_for, running, workspace

pytestmark = pytest.mark.integration
openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def ws(fact_gpt2, tokenizer):
    return workspace(fact_gpt2, tokenizer)


@pytest.fixture(scope="module")
def engine(ws, fact_gpt2, tokenizer) -> Engine:
    """A read-only engine (its pack never changes)."""
    return engine_for(ws, fact_gpt2, tokenizer, "read", editable=False)


@pytest.fixture(scope="module")
def served(engine):
    with running(engine) as (url, state):
        yield url, state


@pytest.fixture()
def client(served):
    return openai.OpenAI(base_url=served[0] + "/v1", api_key="unused", max_retries=0)


def _ids(tokenizer, text: str) -> tuple[int, ...]:
    return tuple(tokenizer(text)["input_ids"])


# --- decoding: per-row neurons, settings, stops ---


def test_greedy_rows_with_per_row_neurons_equal_the_edited_model(engine, fact_gpt2, tokenizer):
    edited = engine.served.edited
    prompts = [FIRST[0].prompt, ASKED[0], FIRST[3].prompt, ASKED[1]]
    weights = edited.neuron_weights(prompts)
    rows = [RowSpec(_ids(tokenizer, p), 6) for p in prompts]
    results = generate_rows(fact_gpt2, tokenizer, rows, edited.pack.neuron, weights)
    assert [r.text for r in results] == edited.generate(prompts, max_new_tokens=6)
    alone = [generate_rows(fact_gpt2, tokenizer, [row], edited.pack.neuron, weights[i:i + 1])[0].text
             for i, row in enumerate(rows)]
    assert [r.text for r in results] == alone  # each row as if it were alone in the batch
    base = greedy_generate(fact_gpt2, tokenizer, prompts, max_new_tokens=6)
    assert results[1].text == base[1] and results[3].text == base[3]  # unrouted rows: the base model exactly


def test_budgets_stops_and_seeds_are_per_row(fact_gpt2, tokenizer):
    prompt = _ids(tokenizer, FIRST[0].prompt)  # the base model answers " Paris."
    sampled = RowSpec(prompt, 8, temperature=1.5, top_p=0.9, seed=7)
    rows = [RowSpec(prompt, 1), RowSpec(prompt, 8, stop=(".",)), RowSpec(prompt, 8), sampled, sampled]
    one, stopped, full, sampled, again = generate_rows(fact_gpt2, tokenizer, rows)
    assert (one.tokens, one.finish_reason) == (1, "length")
    assert full.text == " Paris." and full.finish_reason == "stop"  # EOS
    assert stopped.text == " Paris" and stopped.finish_reason == "stop"  # the stop string is not returned
    assert sampled.text == again.text  # the same seed, the same draw, whatever the rest of the batch


def test_streamed_text_adds_up_to_the_answer_and_never_shows_a_stop(fact_gpt2, tokenizer):
    pieces: dict[int, list[str]] = {0: [], 1: []}
    rows = [RowSpec(_ids(tokenizer, FIRST[0].prompt), 8, stop=("s.",)), RowSpec(_ids(tokenizer, ASKED[2]), 8)]
    results = generate_rows(fact_gpt2, tokenizer, rows, on_text=lambda i, d: pieces[i].append(d))
    for i, result in enumerate(results):
        assert "".join(pieces[i]) == result.text
    assert not any("s." in p for p in pieces[0])


# --- the batcher (a fake engine) ---


class _Recorder:
    """Records the batches it is given; optionally blocks in the first until released."""

    def __init__(self, block: bool = False):
        self.batches, self.started, self.release = [], threading.Event(), threading.Event()
        if not block:
            self.release.set()

    def run(self, rows, on_text=None, cancelled=None, on_route=None, stream_rows=None):
        self.batches.append(list(rows))
        self.started.set()
        self.release.wait(30)
        return [(row, {}) for row in rows]


def test_concurrent_jobs_are_gathered_into_one_batch_up_to_the_maximum():
    async def scenario():
        recorder = _Recorder()
        batcher = Batcher(recorder, max_batch=4, gather_s=0.05, max_queue=10)
        await batcher.start()
        jobs = [batcher.submit([f"r{i}a", f"r{i}b"] if i == 2 else [f"r{i}"]) for i in range(5)]  # 6 rows
        answers = await asyncio.gather(*(batcher.result(j) for j in jobs))
        await batcher.stop()
        return recorder.batches, answers

    batches, answers = asyncio.run(scenario())
    assert [len(b) for b in batches] == [4, 2]  # jobs are never split; the 4th job opens the next batch
    assert batches[0] == ["r0", "r1", "r2a", "r2b"]
    assert [[row for row, _ in a] for a in answers] == [["r0"], ["r1"], ["r2a", "r2b"], ["r3"], ["r4"]]


def test_a_full_queue_refuses_and_a_late_job_times_out():
    async def scenario():
        recorder = _Recorder(block=True)
        batcher = Batcher(recorder, max_batch=1, gather_s=0.0, max_queue=2, timeout_s=60)
        await batcher.start()
        first = batcher.submit(["a"])
        await asyncio.get_running_loop().run_in_executor(None, recorder.started.wait, 30)  # "a" is decoding
        waiting = [batcher.submit(["b"], timeout_s=0.2), batcher.submit(["c"])]
        with pytest.raises(Overloaded):
            batcher.submit(["d"])
        with pytest.raises(TimedOut):
            await batcher.result(waiting[0])
        assert batcher.queued == 1  # the timed-out job left the queue
        recorder.release.set()
        answers = [await batcher.result(job) for job in (first, waiting[1])]
        await batcher.stop()
        return recorder.batches, answers

    batches, answers = asyncio.run(scenario())
    assert batches == [["a"], ["c"]]  # the timed-out "b" was never decoded
    assert [[row for row, _ in a] for a in answers] == [["a"], ["c"]]


# --- the OpenAI API, through the official client ---


def test_completions_carry_the_edit_that_answered(client, engine, fact_gpt2, tokenizer):
    edited = engine.served.edited
    out = client.completions.create(model="tiny", prompt=[FIRST[1].prompt, ASKED[0]], max_tokens=6, temperature=0)
    assert [c.text for c in out.choices] == edited.generate([FIRST[1].prompt, ASKED[0]], max_new_tokens=6)
    hit, miss = (c.model_extra["meg"] for c in out.choices)
    assert hit["edited"] and hit["edit"]["id"] == 1 and hit["edit"]["prompt"] == FIRST[1].prompt
    assert hit["edit"]["target"] == FIRST[1].target and isinstance(hit["score"], float)
    assert not miss["edited"] and miss["edit"] is None
    assert out.usage.completion_tokens > 0 and out.choices[0].finish_reason == "stop"
    base = client.completions.create(model="tiny:base", prompt=FIRST[1].prompt, max_tokens=6, temperature=0)
    assert base.choices[0].text == greedy_generate(fact_gpt2, tokenizer, [FIRST[1].prompt], max_new_tokens=6)[0]
    assert base.choices[0].model_extra["meg"]["edited"] is False
    off = client.completions.create(model="tiny", prompt=FIRST[1].prompt, max_tokens=6, temperature=0,
                                    extra_body={"use_edits": False})
    assert off.choices[0].text == base.choices[0].text


def test_chat_routes_on_the_last_user_message(client, engine):
    expected = engine.served.edited.generate([FIRST[2].prompt], max_new_tokens=6)[0]
    out = client.chat.completions.create(model="tiny", max_tokens=6, temperature=0,
                                         messages=[{"role": "user", "content": FIRST[2].prompt}])
    assert out.choices[0].message.content == expected  # one user message: the completion of its text
    assert out.choices[0].model_extra["meg"]["edit"]["id"] == 2
    longer = client.chat.completions.create(model="tiny", max_tokens=6, temperature=0, messages=[
        {"role": "system", "content": "Paris."}, {"role": "user", "content": FIRST[5].prompt},
        {"role": "assistant", "content": "Apple."}, {"role": "user", "content": FIRST[2].prompt}])
    assert longer.choices[0].model_extra["meg"]["routed_on"] == FIRST[2].prompt


def test_streams_add_up_to_the_answers(client):
    whole = client.completions.create(model="tiny", prompt=FIRST[3].prompt, max_tokens=6, temperature=0)
    pieces, infos, finish = [], [], None
    for chunk in client.completions.create(model="tiny", prompt=FIRST[3].prompt, max_tokens=6, temperature=0,
                                           stream=True):
        pieces.append(chunk.choices[0].text)
        infos.append((chunk.choices[0].model_extra or {}).get("meg"))
        finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces) == whole.choices[0].text and finish == "stop"
    assert infos[-1]["edit"]["id"] == 3
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": FIRST[3].prompt}],
                                          max_tokens=6, temperature=0, stream=True,
                                          stream_options={"include_usage": True})
    chunks = list(chat)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].text and chunks[-1].usage.completion_tokens > 0


def test_n_choices_stops_and_models(client):
    out = client.completions.create(model="tiny", prompt=ASKED[3], max_tokens=5, temperature=0.8, n=3, seed=1,
                                    stop=["."])
    assert [c.index for c in out.choices] == [0, 1, 2] and all("." not in c.text for c in out.choices)
    again = client.completions.create(model="tiny", prompt=ASKED[3], max_tokens=5, temperature=0.8, n=3, seed=1,
                                      stop=["."])
    assert [c.text for c in again.choices] == [c.text for c in out.choices]  # seeded
    assert [m.id for m in client.models.list()] == ["tiny", "tiny:base"]
    assert client.models.retrieve("tiny:base").id == "tiny:base"


def test_client_errors_name_the_field(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="gpt-4", prompt="x")
    assert err.value.body["param"] == "model" and err.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny", prompt=FIRST[0].prompt, max_tokens=10_000)
    assert err.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": " "}])
    assert err.value.body["param"] == "messages[0].content"


# --- batching over HTTP: a blocked worker, a queue, 503, 504 ---


class _Gated(Engine):
    """Blocks in its first batch until released (the test decides when the worker is busy)."""

    started: threading.Event
    release: threading.Event

    def run(self, rows, *args, **kwargs):
        self.started.set()
        self.release.wait(60)
        return super().run(rows, *args, **kwargs)


def _gated(ws, model, tokenizer) -> _Gated:
    engine = engine_for(ws, model, tokenizer, "gated", editable=False, engine_class=_Gated)
    engine.started, engine.release = threading.Event(), threading.Event()
    return engine


def _post(url: str, body: dict, out: list, **kwargs) -> threading.Thread:
    def send():
        out.append(httpx.post(url, json=body, timeout=60, **kwargs))

    thread = threading.Thread(target=send)
    thread.start()
    return thread


def test_queued_requests_share_one_batch_and_a_full_queue_answers_503(ws, fact_gpt2, tokenizer, engine):
    gated = _gated(ws, fact_gpt2, tokenizer)
    prompts = [r.prompt for r in FIRST[:5]] + ASKED[:2]
    with running(gated, max_queue=len(prompts) - 1, max_batch=8, gather_ms=0) as (url, state):
        first: list = []
        threads = [_post(url + "/v1/completions", {"model": "tiny", "prompt": prompts[0], "max_tokens": 5,
                                                    "temperature": 0}, first)]
        assert gated.started.wait(60)  # the worker is busy with the first request
        answers: list = []
        for p in prompts[1:]:
            threads.append(_post(url + "/v1/completions", {"model": "tiny", "prompt": p, "max_tokens": 5,
                                                            "temperature": 0}, answers))
        while state.batcher.queued < len(prompts) - 1:
            time.sleep(0.01)
        full = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2})
        assert full.status_code == 503 and full.headers["retry-after"] == "1"
        assert full.json()["error"]["code"] == "server_overloaded"
        gated.release.set()
        for thread in threads:
            thread.join(60)
        assert state.batcher.stats["largest_batch"] == len(prompts) - 1  # the waiting requests went together
    by_prompt = {r.json()["choices"][0]["meg"]["routed_on"]: r.json()["choices"][0]["text"] for r in first + answers}
    assert [by_prompt[p] for p in prompts] == engine.served.edited.generate(prompts, max_new_tokens=5)


def test_a_request_past_its_timeout_gets_504(ws, fact_gpt2, tokenizer):
    gated = _gated(ws, fact_gpt2, tokenizer)
    with running(gated, timeout_s=0.5) as (url, _):
        response = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2},
                              timeout=60)
        gated.release.set()
    assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"


# --- live edits ---


def test_live_edits_are_saved_then_served_and_listed(ws, fact_gpt2, tokenizer):
    engine = engine_for(ws, fact_gpt2, tokenizer, "live")
    with running(engine) as (url, _):
        listed = httpx.get(url + "/v1/edits", params={"limit": 5}).json()
        assert listed["total"] == 12 and [e["id"] for e in listed["data"]] == [0, 1, 2, 3, 4] and listed["has_more"]
        found = httpx.get(url + "/v1/edits", params={"q": "oF jApAn"}).json()
        assert {e["prompt"] for e in found["data"]} == {FIRST[4].prompt}
        added = httpx.post(url + "/v1/edits", json={"edits": [LATER[3].to_json()]}, timeout=120).json()
        assert added["added"] == [12] and added["edits"] == 13 and added["pack_revision"] == 1
        on_disk = EditPack.load(engine.pack_path)  # saved before the answer came
        assert on_disk.ids[-1] == 12 and on_disk.requests[-1].prompt == LATER[3].prompt
        answer = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": LATER[3].prompt,
                                                           "max_tokens": 5, "temperature": 0}).json()
        assert answer["choices"][0]["meg"]["edit"]["id"] == 12 and answer["choices"][0]["meg"]["pack_revision"] == 1
        bad = httpx.post(url + "/v1/edits", json={"edits": [{"prompt": "Nobody edited this", "target": "x"}],
                                                  "mode": "replace"})
        assert bad.status_code == 400 and "no edit with prompt" in bad.json()["error"]["message"]
        assert httpx.delete(url + "/v1/edits/99").status_code == 404
        removed = httpx.delete(url + "/v1/edits/12", timeout=120).json()
        assert removed["removed"] == [12] and removed["edits"] == 12
        after = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": LATER[3].prompt,
                                                          "max_tokens": 5, "temperature": 0}).json()
        assert after["choices"][0]["meg"]["edit"] is None or after["choices"][0]["meg"]["edit"]["id"] != 12
    assert EditPack.load(engine.pack_path).ids == list(range(12))


def test_requests_in_flight_finish_on_the_old_pack(ws, fact_gpt2, tokenizer):
    engine = engine_for(ws, fact_gpt2, tokenizer, "swap")
    inside, release, results = threading.Event(), threading.Event(), []

    def on_text(i, delta):
        inside.set()
        release.wait(60)

    prompt = LATER[1].prompt
    row = Row(RowSpec(tuple(tokenizer(prompt)["input_ids"]), 4), prompt)
    worker = threading.Thread(target=lambda: results.extend(engine.run([row], on_text=on_text)))
    worker.start()
    assert inside.wait(60)  # a batch is decoding on revision 0
    engine.change("add", [LATER[1]])  # saved and swapped meanwhile
    release.set()
    worker.join(60)
    old_result, old_info = results[0]
    assert old_info["pack_revision"] == 0 and not old_info["edited"]  # the old pack has no such edit
    new_result, new_info = engine.run([row])[0]
    assert new_info["pack_revision"] == 1 and new_info["edit"]["id"] == 12


def _serve_process(ws, pack, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "meg.cli.main", "serve", "--model", str(ws.model_dir), "--pack", str(pack),
               "--port", str(port), "--name", "tiny", "--pseudo-pairs", str(ws.pairs), "--unrelated",
               str(ws.unrelated), "--calibration-pairs", str(ws.empty)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_until_up(process: subprocess.Popen, url: str) -> None:
    for _ in range(1200):  # a cold start imports torch and loads two models: up to two minutes on a busy machine
        if process.poll() is not None:
            raise AssertionError(f"the server exited: {process.stdout.read()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("the server did not come up")


def test_an_acknowledged_edit_survives_kill_9(ws, fact_gpt2, tokenizer):
    from serve_support import free_port

    pack = ws.pack_copy("kill")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = _serve_process(ws, pack, port)
    try:
        _wait_until_up(process, url)
        added = httpx.post(url + "/v1/edits", json={"edits": [LATER[2].to_json()]}, timeout=300)
        assert added.status_code == 200 and added.json()["added"] == [12]
        os.kill(process.pid, signal.SIGKILL)  # no shutdown of any kind
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
        output = process.stdout.read()
    assert "Traceback" not in output
    restarted = engine_for_pack(pack, fact_gpt2, tokenizer)  # a new server on the pack directory
    with running(restarted) as (url, _):
        listed = httpx.get(url + "/v1/edits", params={"q": LATER[2].prompt}).json()
        assert [e["id"] for e in listed["data"]] == [12] and listed["data"][0]["target"] == LATER[2].target
        answer = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": LATER[2].prompt,
                                                           "max_tokens": 5, "temperature": 0}).json()
        assert answer["choices"][0]["meg"]["edit"]["id"] == 12


def engine_for_pack(pack, model, tokenizer) -> Engine:
    return Engine(model, tokenizer, EditPack.load(pack), pack)


# --- security ---


def test_the_api_key_guards_every_route_but_the_page(engine):
    with running(engine, api_key="s3cret") as (url, _):
        for method, path in (("GET", "/health"), ("GET", "/v1/models"), ("GET", "/v1/edits"),
                             ("POST", "/v1/completions"), ("POST", "/v1/edits"), ("DELETE", "/v1/edits/1")):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                response = httpx.request(method, url + path, headers=headers, json={})
                assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(url + "/").status_code == 200
        good = {"Authorization": "Bearer s3cret"}
        assert httpx.get(url + "/v1/models", headers=good).status_code == 200
        keyed = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert keyed.completions.create(model="tiny", prompt=ASKED[0], max_tokens=2).choices
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0).models.list()


def test_edit_routes_refuse_off_loopback_without_a_key_and_when_read_only(ws, fact_gpt2, tokenizer, engine):
    editable = engine_for(ws, fact_gpt2, tokenizer, "exposed")
    body = {"edits": [LATER[0].to_json()]}
    with running(editable, host="0.0.0.0") as (url, _):  # noqa: S104 (the setting under test; bound to loopback)
        refused = httpx.post(url + "/v1/edits", json=body)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "api_key_required"
        assert httpx.delete(url + "/v1/edits/0").status_code == 403
        assert httpx.get(url + "/v1/edits").status_code == 200  # reading is not editing
    with running(engine) as (url, _):  # no pack path: read-only
        assert httpx.post(url + "/v1/edits", json=body).json()["error"]["code"] == "read_only"
    assert EditPack.load(editable.pack_path).ids == list(range(12))


# --- the command line refuses bad options before loading anything ---


@pytest.mark.parametrize("args, message", [
    (["--pack", "no-such-pack"], "no such pack directory"),
    (["--port", "0"], "--port must be between 1 and 65535"),
    (["--port", "70000"], "--port must be between 1 and 65535"),
    (["--max-batch", "0"], "--max-batch must be >= 1"),
    (["--api-key", " "], "--api-key (or MEG_API_KEY) is empty"),
    (["--name", "x:base"], "--name must be"),
    (["--unrelated", "missing.jsonl"], "--unrelated missing.jsonl: no such file"),
    (["--model", "./not-a-model"], "no such directory"),
])
def test_the_cli_refuses_bad_options_in_one_line(args, message, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["serve", *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.startswith("error:")]) == 1


def test_the_cli_refuses_a_port_in_use(ws):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", "--pack", str(ws.pack_dir), "--port", str(port)])
    assert result.exit_code == 2 and f"--port {port} on 127.0.0.1" in result.output
