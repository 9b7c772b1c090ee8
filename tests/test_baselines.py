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
from meg.methods import METHODS, EditContext, get_method
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
    configs = _configs(stats_dir)
    fresh = get_method("memit")(fact_gpt2, tokenizer, requests, EditContext(config=configs["memit"], progress=False))
    context = EditContext(config=configs["memit"], progress=False, work_dir=tmp_path)
    first = get_method("memit")(fact_gpt2, tokenizer, requests, context)
    assert len(list(tmp_path.glob("locate-targets-*.safetensors"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("targets recomputed although cached")

    monkeypatch.setattr(memit, "optimise_targets", fail)
    again = get_method("memit")(fact_gpt2, tokenizer, requests, context)
    weights = lambda lm: lm.model.state_dict()  # noqa: E731
    assert all(torch.equal(weights(fresh)[k], weights(first)[k]) for k in weights(fresh))
    assert all(torch.equal(weights(first)[k], weights(again)[k]) for k in weights(first))
    # AlphaEdit with the same step-1 settings reads MEMIT's targets; other v settings would not.
    get_method("alphaedit")(fact_gpt2, tokenizer, requests, replace(context, config=configs["alphaedit"]))
    with pytest.raises(AssertionError, match="recomputed"):
        get_method("memit")(fact_gpt2, tokenizer, requests, replace(context, config={**configs["memit"], "v_lr": 1.0}))


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
