"""Weight collection (paper stage 3): one trained neuron per edit, batched, resumable."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import FACTS, NEW_TARGETS
from meg import collection
from meg.collection import CollectionConfig, collect_weights, initial_vector, preset
from meg.decoding import greedy_generate
from meg.errors import InputError
from meg.prompts import answers_match
from meg.requests import EditRequest
from meg.surgery import neuron_spec

CONFIG = CollectionConfig(lr=3.0, steps=100, input_lr_scale=0.01, init_bias=1.0, batch_size=8)
REQUESTS = [EditRequest(p, t, case_id=str(i)) for i, ((p, _), t) in enumerate(zip(FACTS, NEW_TARGETS))]


class _Interrupted(Exception):
    pass


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_one_fact_is_reproduced_by_greedy_decoding(fact_gpt2, tokenizer):
    spec = neuron_spec(fact_gpt2, layer=1)
    request = REQUESTS[0]
    assert not answers_match(greedy_generate(fact_gpt2, tokenizer, [request.prompt])[0], request.target)
    result = collect_weights(fact_gpt2, tokenizer, spec, [request], CONFIG, progress=False)
    assert result.success.tolist() == [True]
    answer = greedy_generate(fact_gpt2, tokenizer, [request.prompt], spec=spec, weights=result.vectors)[0]
    assert answers_match(answer, request.target)
    assert result.vectors.shape == (1, spec.dim)
    assert 1 <= int(result.steps[0]) <= CONFIG.steps


def test_model_is_unchanged_and_gets_no_gradients(fact_gpt2, tokenizer):
    before = _state(fact_gpt2)
    collect_weights(fact_gpt2, tokenizer, neuron_spec(fact_gpt2, 1), REQUESTS[:2], CONFIG, progress=False)
    after = fact_gpt2.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in fact_gpt2.parameters())
    assert all(not m._forward_hooks for m in fact_gpt2.modules())
    assert not fact_gpt2.training


def test_batched_equals_one_at_a_time(fact_gpt2, tokenizer):
    spec = neuron_spec(fact_gpt2, layer=1)
    batched = collect_weights(fact_gpt2, tokenizer, spec, REQUESTS, CONFIG, progress=False)
    single_cfg = CollectionConfig(**{**CONFIG.__dict__, "batch_size": 1})
    single = collect_weights(fact_gpt2, tokenizer, spec, REQUESTS, single_cfg, progress=False)
    torch.testing.assert_close(batched.vectors, single.vectors, rtol=1e-4, atol=1e-4)
    assert torch.equal(batched.steps, single.steps)
    assert torch.equal(batched.success, single.success)
    assert batched.success_rate >= 0.75


def test_a_token_cap_trains_rows_in_trimmed_sub_batches_with_the_same_vectors(fact_gpt2, tokenizer):
    """`batch_tokens` bounds a step's activations (KnowEdit's long prompts at batch 128 peaked at 3.5 GB on the
    reference model); rows never interact, so the vectors, steps and successes are those of the whole batch, and
    the chunk cache key ignores the cap."""
    spec = neuron_spec(fact_gpt2, layer=1)
    whole = collect_weights(fact_gpt2, tokenizer, spec, REQUESTS, CONFIG, progress=False)
    capped_cfg = CollectionConfig(**{**CONFIG.__dict__, "batch_tokens": 30})
    batch = collection.encode_answers(tokenizer, [r.prompt for r in REQUESTS[:8]], [r.target for r in REQUESTS[:8]])
    parts = collection._sub_batches(batch, 30)
    assert len(parts) > 1 and sum(len(p.input_ids) for p in parts) == 8
    assert all(p.input_ids.numel() <= 30 and bool(p.attention_mask[:, -1].any()) for p in parts)  # no all-pad column
    capped = collect_weights(fact_gpt2, tokenizer, spec, REQUESTS, capped_cfg, progress=False)
    torch.testing.assert_close(capped.vectors, whole.vectors, rtol=1e-4, atol=1e-4)
    assert torch.equal(capped.steps, whole.steps) and torch.equal(capped.success, whole.success)
    assert collection.job_key(fact_gpt2, spec, capped_cfg, collection.PromptTemplate()) == \
        collection.job_key(fact_gpt2, spec, CONFIG, collection.PromptTemplate())
    with pytest.raises(InputError, match="batch_tokens"):
        CollectionConfig(batch_tokens=0)


def test_retries_train_failed_rows_again_from_the_next_seeds_and_leave_the_rest(fact_gpt2, tokenizer):
    """`retries`: a failed row is trained again from the start of seed + 1 (then + 2, ...); a row that succeeded
    keeps its vector, and a retried row's vector is the one it gets when collected from that seed alone."""
    spec = neuron_spec(fact_gpt2, layer=1)
    short = CollectionConfig(**{**CONFIG.__dict__, "steps": 4})  # a budget too small for some rows from some starts
    plain = collect_weights(fact_gpt2, tokenizer, spec, REQUESTS, short, progress=False)
    retried = collect_weights(fact_gpt2, tokenizer, spec, REQUESTS, CollectionConfig(**{**short.__dict__, "retries": 2}),
                              progress=False)
    kept = plain.success
    assert 0 < int(kept.sum()) < len(REQUESTS)  # the setting under test has rows to retry
    assert torch.equal(retried.vectors[kept], plain.vectors[kept]) and torch.equal(retried.steps[kept], plain.steps[kept])
    assert bool((retried.success | ~kept).all()) and bool((retried.steps[~kept] > plain.steps[~kept]).all())
    second = collect_weights(fact_gpt2, tokenizer, spec, REQUESTS, CollectionConfig(**{**short.__dict__, "seed": 1}),
                             progress=False)
    won = ~kept & second.success  # rows the first retry (seed 1) won
    assert won.any() and retried.success_rate > plain.success_rate
    torch.testing.assert_close(retried.vectors[won], second.vectors[won], rtol=1e-4, atol=1e-4)
    assert [retried.predictions[i] for i in won.nonzero()[:, 0].tolist()] == \
        [second.predictions[i] for i in won.nonzero()[:, 0].tolist()]
    assert collection.job_key(fact_gpt2, spec, CollectionConfig(retries=0), collection.PromptTemplate()) != \
        collection.job_key(fact_gpt2, spec, CollectionConfig(retries=1), collection.PromptTemplate())
    with pytest.raises(InputError, match="retries"):
        CollectionConfig(retries=-1)


def test_adam_rows_follow_torch_adam_each_on_its_own():
    """`optimizer="adam"`: every row's update is what torch.optim.Adam gives that row alone, also after other rows
    stopped training (rows keep their own moments)."""
    torch.manual_seed(0)
    start, targets = torch.randn(3, 5), torch.randn(3, 5)
    weights, adam = start.clone(), collection._Adam(start)
    alone = [start[i].clone().requires_grad_(True) for i in range(3)]
    optimizers = [torch.optim.Adam([w], lr=0.1) for w in alone]
    for step in range(6):
        live = torch.arange(3) if step < 3 else torch.tensor([0, 2])  # row 1 stops after 3 steps
        grad = 2 * (weights[live] - targets[live])
        weights[live] = weights[live] - 0.1 * adam.step(live, grad, step)
        for i in live.tolist():
            optimizers[i].zero_grad()
            (alone[i] - targets[i]).square().sum().backward()
            optimizers[i].step()
    torch.testing.assert_close(weights, torch.stack([w.detach() for w in alone]))


def test_adam_collects_batched_as_one_at_a_time_under_its_own_cache_key(fact_gpt2, tokenizer):
    spec = neuron_spec(fact_gpt2, layer=1)
    adam = CollectionConfig(**{**CONFIG.__dict__, "optimizer": "adam", "lr": 0.05, "input_lr_scale": 1.0})
    batched = collect_weights(fact_gpt2, tokenizer, spec, REQUESTS, adam, progress=False)
    single = collect_weights(fact_gpt2, tokenizer, spec, REQUESTS, CollectionConfig(**{**adam.__dict__, "batch_size": 1}),
                             progress=False)
    torch.testing.assert_close(batched.vectors, single.vectors, rtol=1e-4, atol=1e-4)
    assert torch.equal(batched.steps, single.steps) and torch.equal(batched.success, single.success)
    assert batched.success.any()  # it trains (its success on this tiny model is not what is tested)
    template = collection.PromptTemplate()
    assert collection.job_key(fact_gpt2, spec, adam, template) != collection.job_key(fact_gpt2, spec, CONFIG, template)
    with pytest.raises(InputError, match="optimizer"):
        CollectionConfig(optimizer="lbfgs")


def test_options_at_their_paper_values_leave_the_cache_key_of_chunks_collected_before_them(fact_gpt2, monkeypatch):
    seen = []
    monkeypatch.setattr(collection.files, "digest", lambda *parts: seen.append(parts[2]) or "key")
    collection.job_key(fact_gpt2, neuron_spec(fact_gpt2, 1), CONFIG, collection.PromptTemplate())
    assert "retries" not in seen[0] and "optimizer" not in seen[0] and "lr" in seen[0]


def test_rows_still_failing_are_trained_again_with_the_fallback_preset(fact_gpt2, tokenizer, monkeypatch):
    """`fallback`: after the retries, each failed row is trained with the named preset (from its start) and keeps
    what that gives it alone; rows that succeeded before are untouched, and the preset's settings key the cache."""
    spec = neuron_spec(fact_gpt2, layer=1)
    short = CollectionConfig(**{**CONFIG.__dict__, "steps": 4})
    slow = CONFIG  # 25x the steps: collects the row 4 steps leave
    monkeypatch.setitem(collection.PRESETS, "test-slow", slow)
    plain = collect_weights(fact_gpt2, tokenizer, spec, REQUESTS, short, progress=False)
    rescued = collect_weights(fact_gpt2, tokenizer, spec, REQUESTS,
                              CollectionConfig(**{**short.__dict__, "fallback": "test-slow"}), progress=False)
    alone = collect_weights(fact_gpt2, tokenizer, spec, REQUESTS, slow, progress=False)
    kept, won = plain.success, ~plain.success & alone.success
    assert 0 < int(kept.sum()) < len(REQUESTS) and won.any()
    assert torch.equal(rescued.vectors[kept], plain.vectors[kept]) and torch.equal(rescued.steps[kept], plain.steps[kept])
    torch.testing.assert_close(rescued.vectors[won], alone.vectors[won], rtol=1e-4, atol=1e-4)
    assert torch.equal(rescued.steps[~kept], plain.steps[~kept] + alone.steps[~kept])
    assert torch.equal(rescued.success, kept | alone.success)
    template, keyed = collection.PromptTemplate(), CollectionConfig(**{**short.__dict__, "fallback": "test-slow"})
    before = collection.job_key(fact_gpt2, spec, keyed, template)
    monkeypatch.setitem(collection.PRESETS, "test-slow", CollectionConfig(**{**slow.__dict__, "steps": 7}))
    assert collection.job_key(fact_gpt2, spec, keyed, template) != before  # the preset's values, not its name
    with pytest.raises(InputError, match="fallback"):
        CollectionConfig(fallback="nope")
    monkeypatch.setitem(collection.PRESETS, "test-chain", CollectionConfig(fallback="test-slow"))
    with pytest.raises(InputError, match="fallback"):
        CollectionConfig(fallback="test-chain")


def test_early_stop_is_per_row(fact_gpt2, tokenizer):
    spec = neuron_spec(fact_gpt2, layer=1)
    config = CollectionConfig(**{**CONFIG.__dict__, "loss_threshold": 0.5, "patience": 2})
    result = collect_weights(fact_gpt2, tokenizer, spec, REQUESTS, config, progress=False)
    stopped = result.steps < config.steps
    assert stopped.any()
    assert (result.loss[stopped] < 0.5).all()


def test_resume_after_interruption_gives_the_same_vectors(fact_gpt2, tokenizer, tmp_path, monkeypatch):
    spec = neuron_spec(fact_gpt2, layer=1)
    config = CollectionConfig(**{**CONFIG.__dict__, "batch_size": 3})
    reference = collect_weights(fact_gpt2, tokenizer, spec, REQUESTS, config, progress=False)

    real_chunk, calls, fail_at = collection._collect_chunk, [], [2]

    def failing_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) in fail_at:
            raise _Interrupted  # the run dies while the second chunk trains
        return real_chunk(*args, **kwargs)

    monkeypatch.setattr(collection, "_collect_chunk", failing_chunk)
    with pytest.raises(_Interrupted):
        collect_weights(fact_gpt2, tokenizer, spec, REQUESTS, config, work=tmp_path, progress=False)
    assert len(list(tmp_path.glob("collection/chunk-*.safetensors"))) == 1  # the first chunk only
    assert not list(tmp_path.glob("**/.*tmp"))

    calls.clear()
    fail_at.clear()
    resumed = collect_weights(fact_gpt2, tokenizer, spec, REQUESTS, config, work=tmp_path, progress=False)
    assert len(calls) == math.ceil(len(REQUESTS) / 3) - 1  # every chunk but chunk 0, which came from disk
    assert torch.equal(resumed.vectors, reference.vectors)
    assert resumed.predictions == reference.predictions


def test_chunks_are_shared_by_jobs_holding_the_same_edits_and_kept_apart_otherwise(fact_gpt2, tokenizer, tmp_path,
                                                                                   monkeypatch):
    spec = neuron_spec(fact_gpt2, layer=1)
    first = collect_weights(fact_gpt2, tokenizer, spec, REQUESTS[:8], CONFIG, work=tmp_path, progress=False)
    assert len(list(tmp_path.glob("collection/chunk-*"))) == 1  # 8 edits, batch 8
    calls, real_chunk = [], collection._collect_chunk
    monkeypatch.setattr(collection, "_collect_chunk", lambda *a, **k: calls.append(1) or real_chunk(*a, **k))
    longer = collect_weights(fact_gpt2, tokenizer, spec, REQUESTS, CONFIG, work=tmp_path, progress=False)
    assert len(calls) == 1 and torch.equal(longer.vectors[:8], first.vectors)  # the first chunk came from disk
    other = collect_weights(fact_gpt2, tokenizer, neuron_spec(fact_gpt2, layer=0), REQUESTS[:8], CONFIG, work=tmp_path,
                            progress=False)
    assert len(calls) == 2 and not torch.equal(other.vectors, first.vectors)  # another layer: another chunk


def test_initial_vector_is_shared_and_seeded(fact_gpt2):
    spec = neuron_spec(fact_gpt2, layer=1)
    a, b = initial_vector(spec, CONFIG), initial_vector(spec, CONFIG)
    assert torch.equal(a, b)
    assert a[spec.hidden_size] == 1.0  # init_bias
    other = initial_vector(spec, CollectionConfig(seed=1))
    assert not torch.equal(a, other)


def test_target_longer_than_context_is_named(tokenizer):
    from conftest import build_model

    model = build_model("gpt2", vocab_size=len(tokenizer), n_positions=16)
    spec = neuron_spec(model, layer=0)
    request = EditRequest("The capital of France is", "Paris " * 20, case_id="long-one")
    with pytest.raises(InputError, match="edit long-one .*longer than the model's context \\(16\\)"):
        collect_weights(model, tokenizer, spec, [request], CONFIG, progress=False)


@pytest.mark.parametrize("field, value", [("prompt", ""), ("target", "  ")])
def test_empty_prompt_or_target_is_named(field, value):
    kwargs = {"prompt": "The capital of France is", "target": "Paris", "case_id": "7", field: value}
    with pytest.raises(InputError, match=f"edit '7': field '{field}' must be a non-empty string"):
        EditRequest(**kwargs)


def test_config_validation_and_presets():
    with pytest.raises(InputError, match="CollectionConfig.lr"):
        CollectionConfig(lr=-1)
    with pytest.raises(InputError, match="unknown collection preset 'nope'"):
        preset("nope")
    assert preset("paper-gptj").schedule == "cosine"
