"""Weight-editing baselines (meg.baselines): they edit, they leave the caller's model alone, their caches and
configs behave.

The tiny fact model is too small for subject keys to steer it (its 2 layers memorise each fact at the prompt's
last token), so MEMIT and AlphaEdit edit it through the documented fallback: edits without a subject use the
prompt's last token. Subject positions are tested on their own below.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from conftest import FACTS, NEW_TARGETS, SUBJECTS
from meg.baselines import covariance
from meg.baselines.alphaedit import AlphaEditConfig, alphaedit_update, null_space_projector
from meg.baselines.base import resolve_config
from meg.baselines.covariance import accumulate_second_moments, corpus_for_model, second_moments
from meg.baselines.ft import PRESETS as FT_PRESETS
from meg.baselines.ft import FTConfig
from meg.baselines.memit import MEMITConfig, prepare_edits
from meg.errors import InputError
from meg.methods import METHODS, EditContext, get_method, with_statistics_data
from meg.prompts import PromptTemplate, answers_match
from meg.requests import EditRequest
from meg.surgery import ffn_output_projection, linear_weight

ROWS = [0, 1, 2, 3, 4, 5, 7, 8]  # facts whose new target differs from the true answer
CORPUS_TEXTS = 1500  # shipped asset texts sampled for the key statistics: fast on the tiny model


def _requests(with_subject: bool) -> list[EditRequest]:
    return [EditRequest(FACTS[i][0], NEW_TARGETS[i], subject=SUBJECTS[i] if with_subject else None) for i in ROWS]


def _reliability(lm, requests) -> int:
    return sum(answers_match(g, r.target) for g, r in zip(lm.generate([r.prompt for r in requests], 4), requests))


@pytest.fixture(scope="module")
def stats_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("stats"))


def _configs(stats_dir: str) -> dict:
    located = dict(layers=[0, 1], clamp_norm_factor=4.0, mom2_n_texts=CORPUS_TEXTS, stats_dir=stats_dir)
    return {
        "ft": {"layer": 1, "lr": 1e-2, "steps": 20, "loss_tokens": "answer"},
        "memit": {**located, "mom2_update_weight": 15000.0},
        "alphaedit": {**located, "l2": 1.0},
    }


@pytest.mark.parametrize("method", ["ft", "memit", "alphaedit"])
def test_baseline_edits_and_leaves_the_model_bit_identical(method, fact_gpt2, tokenizer, stats_dir):
    requests = _requests(with_subject=False)
    before = {k: v.clone() for k, v in fact_gpt2.state_dict().items()}
    flags = [p.requires_grad for p in fact_gpt2.parameters()]
    context = EditContext(config=_configs(stats_dir)[method], progress=False)
    lm = get_method(method)(fact_gpt2, tokenizer, requests, context)
    unedited = get_method("unedited")(fact_gpt2, tokenizer, requests, context)
    assert _reliability(lm, requests) >= 3 > _reliability(unedited, requests)
    after = fact_gpt2.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [p.requires_grad for p in fact_gpt2.parameters()] == flags
    assert not fact_gpt2.training
    stats = lm.stats()
    assert stats["method"] == method and stats["edit_seconds"] > 0 and isinstance(stats["config"], dict)


def test_methods_are_registered():
    assert {"ft", "memit", "alphaedit"} <= set(METHODS)
    for name in ("ft", "memit", "alphaedit"):
        assert callable(get_method(name))


def test_statistics_data_goes_only_to_methods_whose_config_reads_it():
    fields = {"preset": "reference"}
    for method in ("memit", "alphaedit"):  # their key statistics read text from the shared data directory
        assert with_statistics_data(method, fields, "/data") == {**fields, "data_dir": "/data"}
    for method in ("ft", "meg", "knn", "unedited"):
        assert with_statistics_data(method, fields, "/data") == fields


def test_template_is_applied_as_plainlm_does(fact_gpt2, tokenizer):
    template = PromptTemplate("Fact: {prompt}")
    requests = _requests(with_subject=False)[:4]
    config = {"layer": 1, "lr": 1e-2, "steps": 20, "loss_tokens": "answer"}
    lm = get_method("ft")(fact_gpt2, tokenizer, requests, EditContext(template=template, config=config))
    assert lm.template == template and _reliability(lm, requests) >= 2


def test_subject_positions_follow_the_template_and_fall_back_to_the_last_token(tokenizer):
    template = PromptTemplate("Fact: {prompt}")
    requests = [EditRequest("The capital of France is", "Rome", subject="France"),
                EditRequest("The capital of France is", "Rome", subject="Spain")]  # fmt: skip
    edits = prepare_edits(tokenizer, requests, template, None)
    ids = tokenizer(template.format(requests[0].prompt))["input_ids"]
    france = len(tokenizer("Fact: The capital of France")["input_ids"]) - 1
    assert tokenizer.decode(ids[france]).strip() == "France"
    assert edits.positions.tolist() == [france, len(ids) - 1]
    assert edits.fallbacks == 1 and edits.kl_weight.tolist() == [1.0, 0.0]


def test_covariance_is_cached_once_and_reused(fact_gpt2, tokenizer, tmp_path, monkeypatch):
    texts = corpus_for_model(max_texts=300)
    first = second_moments(fact_gpt2, tokenizer, [0, 1], texts, tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2 and len(list(tmp_path.glob("*.json"))) == 2
    meta = covariance.files.read_json(next(tmp_path.glob("*layer00*.json")))
    assert meta["layer"] == 0 and meta["corpus_hash"] == covariance.corpus_hash(texts) and meta["tokens"] > 0
    assert meta["fingerprint"]["config"]["model_type"] == "gpt2"

    def fail(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(covariance, "accumulate_second_moments", fail)
    again = second_moments(fact_gpt2, tokenizer, [1, 0], texts, tmp_path)
    assert all(torch.equal(first[k], again[k]) for k in (0, 1)) and first[0].dtype == torch.float64
    with pytest.raises(AssertionError, match="recomputed"):
        second_moments(fact_gpt2, tokenizer, [0], texts[:-1], tmp_path)  # another corpus: not reused


def test_target_values_are_cached_and_shared_by_memit_and_alphaedit(fact_gpt2, tokenizer, stats_dir, tmp_path,
                                                                     monkeypatch):
    from meg.baselines import memit

    requests = _requests(with_subject=False)
    config = {**_configs(stats_dir)["memit"], "batch_size": 2}  # chunks of 2 edits, each cached on its own
    fresh = get_method("memit")(fact_gpt2, tokenizer, requests, EditContext(config=config, progress=False))
    context = EditContext(config=config, progress=False, work_dir=tmp_path)
    optimise, calls = memit._optimise_rows, []

    def interrupted(*args):
        if len(calls) == 1:
            raise KeyboardInterrupt  # after the first chunk was optimised and saved
        calls.append(args[2])
        return optimise(*args)

    monkeypatch.setattr(memit, "_optimise_rows", interrupted)
    with pytest.raises(KeyboardInterrupt):
        get_method("memit")(fact_gpt2, tokenizer, requests, context)
    assert len(list(tmp_path.glob("locate-targets-*.safetensors"))) == 1
    monkeypatch.setattr(memit, "_optimise_rows", lambda *args: calls.append(args[2]) or optimise(*args))
    first = get_method("memit")(fact_gpt2, tokenizer, requests, context)  # resumes at the second chunk
    chunks = -(-len(requests) // 2)
    assert calls == [slice(i * 2, min(i * 2 + 2, len(requests))) for i in range(chunks)]
    assert len(list(tmp_path.glob("locate-targets-*.safetensors"))) == chunks

    def fail(*args, **kwargs):
        raise AssertionError("targets recomputed although cached")

    monkeypatch.setattr(memit, "_optimise_rows", fail)
    again = get_method("memit")(fact_gpt2, tokenizer, requests, context)
    weights = lambda lm: lm.model.state_dict()  # noqa: E731
    assert all(torch.equal(weights(fresh)[k], weights(first)[k]) for k in weights(fresh))
    assert all(torch.equal(weights(first)[k], weights(again)[k]) for k in weights(first))
    # AlphaEdit with the same step-1 settings reads MEMIT's targets; other v settings would not.
    alphaedit = {**_configs(stats_dir)["alphaedit"], "batch_size": 2}
    get_method("alphaedit")(fact_gpt2, tokenizer, requests, replace(context, config=alphaedit))
    with pytest.raises(AssertionError, match="recomputed"):
        get_method("memit")(fact_gpt2, tokenizer, requests, replace(context, config={**config, "v_lr": 1.0}))


def test_second_moment_counts_no_padding(fact_gpt2, tokenizer):
    texts = ["The capital of France is Paris.", "BBC One, by", "Toko Yasuda plays the guitar every day."]
    batched, count = accumulate_second_moments(fact_gpt2, tokenizer, texts, [1], batch_size=3)
    alone = [accumulate_second_moments(fact_gpt2, tokenizer, [t], [1], batch_size=1) for t in texts]
    assert count == sum(n for _, n in alone) == sum(len(tokenizer(t)["input_ids"]) for t in texts)
    expected = sum(m[1] * n for m, n in alone) / count
    torch.testing.assert_close(batched[1], expected, rtol=1e-5, atol=1e-7)


def test_alphaedit_update_is_orthogonal_to_the_preserved_keys(fact_gpt2, tokenizer, stats_dir):
    config = AlphaEditConfig.from_dict(_configs(stats_dir)["alphaedit"])
    lm = get_method("alphaedit")(fact_gpt2, tokenizer, _requests(False), EditContext(config=config, progress=False))
    moments = second_moments(fact_gpt2, tokenizer, [0, 1], corpus_for_model(max_texts=CORPUS_TEXTS), stats_dir)
    for layer in (0, 1):
        eigenvalues, eigenvectors = torch.linalg.eigh(moments[layer])
        principal = eigenvectors[:, eigenvalues >= config.nullspace_threshold]  # (m, r) preserved subspace
        assert 0 < principal.shape[1] < principal.shape[0]
        old = linear_weight(ffn_output_projection(fact_gpt2, layer)).double()
        delta = linear_weight(ffn_output_projection(lm.model, layer)).double() - old  # (d, m)
        # float32 weights round the difference at ~1e-7 * |W|; the update itself is > 1e-3 * |W|
        assert (delta @ principal).norm() < 1e-3 * delta.norm()


def test_alphaedit_solve_is_exactly_in_the_null_space():
    generator = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(12, 12, generator=generator, dtype=torch.float64))[0]
    cov = basis @ torch.diag(torch.tensor([5.0] * 4 + [1e-4] * 8, dtype=torch.float64)) @ basis.T
    projector, dims = null_space_projector(cov, threshold=1e-2)
    keys, resid = torch.randn(12, 3, generator=generator, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    update = alphaedit_update(keys, resid, projector, l2=1.0)  # (6, 12)
    assert dims == 8 and update.shape == (6, 12)
    assert (update @ basis[:, :4]).abs().max() < 1e-10 < update.abs().max()


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: FTConfig(lr=-1.0), r"FTConfig\.lr must be > 0, got -1\.0"),
        (lambda: FTConfig(params="all"), r"FTConfig\.params must be one of: ffn, ffn_out, got 'all'"),
        (lambda: MEMITConfig(v_steps=0), r"MEMITConfig\.v_steps must be >= 1, got 0"),
        (lambda: MEMITConfig(layers=[]), r"MEMITConfig\.layers must be a non-empty list of layers"),
        (lambda: AlphaEditConfig(nullspace_threshold=0.0), r"AlphaEditConfig\.nullspace_threshold must be > 0"),
        (lambda: MEMITConfig.from_dict({"v_lr": 0.1, "lr": 1}), r"unknown MEMITConfig fields: lr"),
        (lambda: resolve_config(FTConfig, "huge", FT_PRESETS), r"unknown FTConfig preset 'huge'; choose one of"),
    ],
)
def test_config_errors_are_one_line_naming_the_field(build, message):
    with pytest.raises(InputError, match=message) as error:
        build()
    assert "\n" not in str(error.value)


def test_config_from_none_dict_object_and_preset():
    assert resolve_config(FTConfig, None, FT_PRESETS) == FTConfig()
    assert resolve_config(FTConfig, {"lr": 0.1}, FT_PRESETS) == FTConfig(lr=0.1)
    assert resolve_config(FTConfig, FTConfig(steps=3), FT_PRESETS).steps == 3
    preset = resolve_config(FTConfig, {"preset": "reference", "steps": 2}, FT_PRESETS)
    assert preset.steps == 2 and preset.lr == FT_PRESETS["reference"].lr
    assert MEMITConfig.from_dict(MEMITConfig(layers=[1, 2]).to_dict()) == MEMITConfig(layers=(1, 2))


def test_context_prefixes_are_sampled_once_per_seed_and_wrap_every_edit(fact_gpt2, tokenizer):
    from meg.baselines.memit import context_prefixes

    config = MEMITConfig(context_templates=3, context_tokens=6)
    prefixes = context_prefixes(fact_gpt2, tokenizer, config)
    assert prefixes[0] == "" and len(prefixes) == 4 and all(p.endswith(". ") for p in prefixes[1:])
    assert all(p.startswith(start) for p, start in zip(prefixes[1:], ("The", "Therefore", "Because")))
    assert context_prefixes(fact_gpt2, tokenizer, config) == prefixes  # seeded
    assert context_prefixes(fact_gpt2, tokenizer, replace(config, context_templates=0)) == [""]
    requests = _requests(with_subject=True)[:3]
    edits = prepare_edits(tokenizer, requests, PromptTemplate(), None, prefixes=prefixes)
    assert edits.per_edit == 4 and edits.batch.input_ids.shape[0] == 12 and edits.kl_ids.shape[0] == 3
    for row, (i, prefix) in enumerate((i, p) for i in range(3) for p in prefixes):  # edit-major rows
        ids = edits.batch.input_ids[row].tolist()
        assert tokenizer.decode(ids[: int(edits.positions[row]) + 1]).endswith(requests[i].subject)
        assert tokenizer.decode(ids).startswith(prefix.strip())
    bare = edits.bare()
    assert bare.per_edit == 1 and bare.positions.tolist() == edits.positions[::4].tolist()
    plain = prepare_edits(tokenizer, requests, PromptTemplate(), None)
    assert torch.equal(bare.batch.input_ids, plain.batch.input_ids)
    with pytest.raises(InputError, match="first context prefix must be ''"):
        prepare_edits(tokenizer, requests, PromptTemplate(), None, prefixes=["Then. "])


def test_early_stop_freezes_each_edit_on_its_own(fact_gpt2, tokenizer):
    from meg.baselines.memit import gather_at, optimise_targets

    model = fact_gpt2  # its parameters require gradients: step 1 must still leave none on them (checked below)
    requests = _requests(with_subject=False)[:4]
    edits = prepare_edits(tokenizer, requests, PromptTemplate(), None)
    h = gather_at(model, edits.batch, edits.positions, 1, "block", 4)
    base = MEMITConfig(v_steps=8, v_lr=0.5, clamp_norm_factor=4.0, kl_factor=0.0, batch_size=4)
    frozen, _ = optimise_targets(model, edits, 1, replace(base, early_stop_loss=1e9))  # every loss is below
    torch.testing.assert_close(frozen, h)
    together, _ = optimise_targets(model, edits, 1, replace(base, early_stop_loss=2.0))
    alone = torch.cat([optimise_targets(model, prepare_edits(tokenizer, [r], PromptTemplate(), None), 1,
                                        replace(base, early_stop_loss=2.0, batch_size=1))[0] for r in requests])  # fmt: skip
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)  # the batch equals per-edit runs
    assert not torch.allclose(together, h)
    assert all(p.grad is None for p in model.parameters())


def test_kl_is_read_at_the_subject_token_or_after_is_a(fact_gpt2, tokenizer):
    from meg.baselines.memit import _kl_logprobs

    edits = prepare_edits(tokenizer, _requests(with_subject=True)[:2], PromptTemplate(), None)
    rows = slice(0, 2)
    logits = fact_gpt2(input_ids=edits.kl_ids, attention_mask=edits.kl_mask).logits.float()
    for kl_at, where in (("subject", edits.kl_positions), ("end", edits.kl_last)):
        expected = torch.log_softmax(logits[torch.arange(2), where], -1)
        torch.testing.assert_close(_kl_logprobs(fact_gpt2, edits, rows, 1, None, kl_at), expected)
    assert not torch.equal(edits.kl_positions, edits.kl_last)


@pytest.mark.parametrize("method", ["memit", "alphaedit"])
def test_stats_record_step1_success_and_the_context_prefixes(method, fact_gpt2, tokenizer, stats_dir):
    requests = _requests(with_subject=False)
    config = {**_configs(stats_dir)[method], "context_templates": 2, "context_tokens": 5}
    stats = get_method(method)(fact_gpt2, tokenizer, requests, EditContext(config=config, progress=False)).stats()
    assert len(stats["context_prefixes"]) == 2
    # At the prompt's last token (the fallback of subject-less edits) a residual delta reaches every target.
    assert stats["step1_success"] == 1.0


def test_bench_tables_state_step1_success_of_the_rows_that_have_it():
    from meg.benchmarks.compare import bench_markdown
    from meg.evaluation.metrics import COLUMNS

    metrics = {c: 50.0 for c in COLUMNS}
    row = {"metrics": metrics, "edit_seconds": 1.0, "peak_rss_mb": 1.0, "queries_per_second": 1.0}
    bench = {"setup": {"data": "d", "n_used": 2, "model": "m", "filter": None},
             "results": [{**row, "method": "memit", "stats": {"step1_success": 0.5}}, {**row, "method": "knn", "stats": {}}]}  # fmt: skip
    text = bench_markdown(bench, "meg bench ...")
    assert "- memit: 50.0%" in text and "- knn" not in text
    assert "Step-1" not in bench_markdown({**bench, "results": bench["results"][1:]}, "meg bench ...")


def test_clean_locality_leaves_out_prompts_that_ask_an_edited_fact():
    from meg.benchmarks.compare import bench_markdown, clean_locality
    from meg.evaluation.metrics import COLUMNS

    records = [{"index": i, "locality": {"ag": ag, "tf": tf}} for i, (ag, tf) in enumerate([(True, 1.0), (False, 0.0),
                                                                                              (True, 0.5)])]
    records.append({"index": 3, "locality": None})  # an edit without a locality prompt counts nowhere
    assert clean_locality(records, [False, True, False, False]) == {"loc_ag": 100.0, "loc_tf": 75.0, "prompts": 2}
    assert clean_locality(records, [True] * 4)["loc_ag"] is None
    row = {"method": "knn", "metrics": {c: 50.0 for c in COLUMNS}, "edit_seconds": 1.0, "peak_rss_mb": 1.0,
           "queries_per_second": 1.0, "stats": {}, "clean_locality": clean_locality(records, [False, True, False, False])}
    bench = {"setup": {"data": "d", "n_used": 4, "model": "m", "filter": None, "conflicting_locality": 1}, "results": [row]}
    assert "1 of 4 locality prompts" in bench_markdown(bench, "meg bench ...")
    assert "- knn: Loc-AG 100.00, Loc-TF 75.00" in bench_markdown(bench, "meg bench ...")
    no_conflicts = {**bench, "setup": {**bench["setup"], "conflicting_locality": 0}}
    assert "clean prompts" not in bench_markdown(no_conflicts, "meg bench ...")

