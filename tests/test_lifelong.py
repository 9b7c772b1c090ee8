"""Lifelong editing on a tiny GPT-2: add, replace and remove edits of a pack, recomputing only what changed."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from conftest import FACTS, NEW_TARGETS, PSEUDO_PAIRS, SUBJECTS, UNRELATED, tiny_config
from meg import editor as editor_module
from meg import lifelong
from meg.cli.main import app
from meg.decoding import greedy_generate
from meg.diffusion.generator import CONFIGS, WeightGenerator
from meg.diffusion.train import train_generator
from meg.edited_model import EditedModel
from meg.editor import MegEditor
from meg.errors import InputError
from meg.pack import EditPack
from meg.prompts import answers_match
from meg.requests import EditRequest, PseudoPair
from meg.surgery import mount_neuron

pytestmark = pytest.mark.integration

REQUESTS = [EditRequest(p, t, subject=s, case_id=str(i))
            for i, ((p, _), t, s) in enumerate(zip(FACTS, NEW_TARGETS, SUBJECTS))]
FIRST, LATER = REQUESTS[:12], REQUESTS[12:]
PAIRS = [PseudoPair(q, p, s) for q, p, s in PSEUDO_PAIRS]
CALIBRATION, ASKED = UNRELATED[20:], UNRELATED[:20]
# No shipped calibration pairs: encoding 3,000 of them is most of a tiny fit's time.
OPTIONS = {"pseudo_pairs": PAIRS, "unrelated": CALIBRATION, "calibration_pairs": [], "progress": False}


def _editor(model, tokenizer, config) -> MegEditor:
    return MegEditor(model, tokenizer, config)


@pytest.fixture(scope="module")
def retrieved(fact_gpt2, tokenizer) -> EditPack:
    """12 edits, collected vectors served directly (no generator: the cheap pack for bookkeeping tests)."""
    return _editor(fact_gpt2, tokenizer, tiny_config(weights="retrieved")).fit(FIRST, **OPTIONS)


@pytest.fixture(scope="module")
def generated(fact_gpt2, tokenizer) -> EditPack:
    """12 edits with a generator trained 300 steps (the mechanics of a fine-tune, in seconds)."""
    generator = replace(CONFIGS["small-gpt2"], sampling_steps=4, max_steps=300, eval_every=100)
    return _editor(fact_gpt2, tokenizer, tiny_config(generator=generator)).fit(FIRST, **OPTIONS)


def _relative_l2(pack: EditPack, rows: list[int]) -> float:
    """Mean ||generated - collected|| / ||collected|| of the pack's generator on edit rows `rows`."""
    ok = [r for r in rows if pack.collection.success[r]]
    generated = pack.generator.sample(pack.edit_embeddings[ok], generator=torch.Generator().manual_seed(0))
    collected = pack.collection.vectors[ok]
    return float(((generated - collected).norm(dim=1) / collected.norm(dim=1)).mean())


def _answers(model, tokenizer, pack, requests) -> list[bool]:
    outputs = EditedModel(model, tokenizer, pack).generate([r.prompt for r in requests], max_new_tokens=5)
    return [answers_match(o, r.target) for o, r in zip(outputs, requests)]


def test_add_collects_and_embeds_only_the_new_edits(retrieved, fact_gpt2, tokenizer, monkeypatch):
    collected = []
    collect = editor_module.collect_weights
    monkeypatch.setattr(editor_module, "collect_weights",
                        lambda model, tok, spec, requests, *a, **k: collected.append(list(requests)) or
                        collect(model, tok, spec, requests, *a, **k))
    after = retrieved.add(LATER, _editor(fact_gpt2, tokenizer, tiny_config()), **OPTIONS)
    assert collected == [LATER]
    assert after.ids == list(range(16)) and after.next_id == 16 and after.requests == REQUESTS
    # Old rows carry over bit for bit; the old pack object is untouched.
    assert torch.equal(after.collection.vectors[:12], retrieved.collection.vectors)
    assert torch.equal(after.edit_embeddings[:12], retrieved.edit_embeddings)
    assert len(retrieved) == 12 and len(retrieved.history) == 1 and retrieved.next_id == 12
    entry = after.history[-1]
    assert (entry["operation"], entry["count"], entry["added"], entry["generator"]) == ("add", 4, [12, 13, 14, 15],
                                                                                        "none")
    assert entry["date"] and entry["meg_version"] and entry["conflicts"] == []
    assert sum(_answers(fact_gpt2, tokenizer, after, REQUESTS)) >= 15
    assert not any(d["routed"] for d in EditedModel(fact_gpt2, tokenizer, after).describe(ASKED))


def test_a_change_reuses_the_calibration_queries_embeddings_the_pack_keeps(retrieved, fact_gpt2, tokenizer, tmp_path,
                                                                           monkeypatch):
    from meg.encoder import QueryEncoder

    assert list(retrieved.query_embeddings) == list(dict.fromkeys(CALIBRATION))
    loaded = EditPack.load(retrieved.save(tmp_path / "pack"))
    assert all(torch.equal(loaded.query_embeddings[q], e) for q, e in retrieved.query_embeddings.items())
    encoded: list[str] = []
    encode = QueryEncoder.encode
    monkeypatch.setattr(QueryEncoder, "encode", lambda self, texts, *a, **k: encoded.extend(texts) or
                        encode(self, texts, *a, **k))
    extra = "A calibration query the pack has not seen"
    after = loaded.add(LATER, _editor(fact_gpt2, tokenizer, tiny_config()), **{**OPTIONS,
                                                                              "unrelated": [*CALIBRATION, extra]})
    assert extra in encoded and not set(CALIBRATION) & set(encoded)  # only the new query is encoded
    assert torch.equal(after.query_embeddings[CALIBRATION[0]], retrieved.query_embeddings[CALIBRATION[0]])
    assert extra in after.query_embeddings


def test_the_router_is_refitted_with_the_pack_encoder(retrieved, fact_gpt2, tokenizer):
    after = retrieved.add(LATER, _editor(fact_gpt2, tokenizer, tiny_config()), **OPTIONS)
    assert after.encoder_state is retrieved.encoder_state  # reused, never retrained
    routes = EditedModel(fact_gpt2, tokenizer, after).describe([r.prompt for r in REQUESTS])
    assert [d["edit"] for d in routes] == list(range(16)) and all(d["routed"] for d in routes)
    assert after.router_fitted["calibration"]["subject_edits"] == 16


def test_an_edit_of_an_edited_prompt_replaces_it_keeping_its_id(retrieved, fact_gpt2, tokenizer, caplog):
    new = EditRequest(FIRST[3].prompt, "Rome", subject=FIRST[3].subject)
    with caplog.at_level(logging.WARNING, logger="meg"):
        after = retrieved.add([new, LATER[0]], _editor(fact_gpt2, tokenizer, tiny_config()), **OPTIONS)
    assert "replace earlier edits of the same prompt (ids 3)" in caplog.text
    assert after.ids == [*range(12), 12] and after.requests[3] == new
    assert after.history[-1]["replaced"] == [3] and after.history[-1]["added"] == [12]
    assert after.history[-1]["collection_rows"] == 2  # the replaced edit and the added one
    assert torch.equal(after.edit_embeddings[3], retrieved.edit_embeddings[3])  # same prompt: same embedding
    assert _answers(fact_gpt2, tokenizer, after, [new]) == [True]


def test_replace_needs_an_edited_prompt_and_skips_unchanged_edits(retrieved, fact_gpt2, tokenizer):
    editor = _editor(fact_gpt2, tokenizer, tiny_config())
    with pytest.raises(InputError, match=r"^replace: no edit with prompt 'The capital of Spain is' in the pack; use add$"):
        retrieved.replace([EditRequest("The capital of Spain is", "Rome")], editor, **OPTIONS)
    change = lifelong.plan_add(retrieved.requests, retrieved.ids, retrieved.next_id,
                               [FIRST[0], replace(FIRST[1], target="Rome")], operation="replace")
    assert change.unchanged == [0] and change.replaced == [1] and change.recollect == [1]


def test_a_second_edit_of_the_same_fact_is_kept_and_reported(retrieved, fact_gpt2, tokenizer, caplog):
    # "Danielle Darrieux's mother tongue is" asks what edit 1 ("The mother tongue of Danielle Darrieux is") edits.
    other = EditRequest("Danielle Darrieux's mother tongue is", "Paris", subject="Danielle Darrieux")
    with caplog.at_level(logging.WARNING, logger="meg"):
        after = retrieved.add([other], _editor(fact_gpt2, tokenizer, tiny_config()), **OPTIONS)
    assert len(after) == 13 and after.requests[1] == FIRST[1]  # both kept
    assert after.history[-1]["conflicts"] == [lifelong.conflict(12, other, 1, FIRST[1])]
    assert "may conflict with earlier edits of the same fact" in caplog.text
    # The same prompt with the SAME target is no conflict; another subject's edit is none either.
    same = replace(other, target=FIRST[1].target)
    assert retrieved.add([same], _editor(fact_gpt2, tokenizer, tiny_config()), **OPTIONS).history[-1]["conflicts"] == []


def test_a_removed_edit_is_answered_exactly_as_by_the_base_model(retrieved, fact_gpt2, tokenizer):
    victim = FIRST[5]  # "Apple A5 was created by"
    after = retrieved.remove([victim.prompt, 7], _editor(fact_gpt2, tokenizer, tiny_config()), **OPTIONS)
    assert [i for i in retrieved.ids if i not in after.ids] == [5, 7] and after.next_id == 12
    assert after.history[-1]["removed"] == [5, 7] and after.history[-1]["generator"] == "none"
    edited = EditedModel(fact_gpt2, tokenizer, after)
    prompts = [victim.prompt, FIRST[7].prompt]
    assert not any(d["routed"] for d in edited.describe(prompts))
    weights = edited.neuron_weights(prompts)
    assert not weights.any()
    texts = [after.template.format(p) for p in prompts]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        base = fact_gpt2(**batch).logits
        with mount_neuron(fact_gpt2, after.neuron, weights):
            mounted = fact_gpt2(**batch).logits
    assert torch.equal(mounted, base)
    assert edited.generate(prompts) == greedy_generate(fact_gpt2, tokenizer, prompts)
    # The rest still route to their own edit (rows shift, ids stay).
    routes = edited.describe([r.prompt for r in after.requests])
    assert [after.ids[d["edit"]] for d in routes] == after.ids


def test_removing_an_edit_that_does_not_exist_is_a_one_line_error(retrieved, fact_gpt2, tokenizer):
    editor = _editor(fact_gpt2, tokenizer, tiny_config())
    with pytest.raises(InputError, match=r"^remove: no edit with id 99 in the pack$"):
        retrieved.remove([99], editor, **OPTIONS)
    with pytest.raises(InputError, match=r"^remove: no edit with prompt 'The capital of Spain is' in the pack$"):
        retrieved.remove(["The capital of Spain is"], editor, **OPTIONS)
    with pytest.raises(InputError, match="would remove all 12 edits"):
        retrieved.remove(retrieved.ids, editor, **OPTIONS)


def test_generated_pack_add_fine_tunes_and_remove_keeps_the_generator(generated, fact_gpt2, tokenizer, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setattr(lifelong, "FINE_TUNE_STEPS", 100)
    editor = _editor(fact_gpt2, tokenizer, tiny_config())
    after = generated.add(LATER, editor, **OPTIONS)
    entry = after.history[-1]
    assert entry["generator"] == "fine-tune" and entry["generator_steps"] <= 100
    # The fine-tuned generator learned the new vectors (the pack's own had never seen them).
    before = replace(after, generator=generated.generator)
    assert _relative_l2(after, [12, 13, 14, 15]) < 0.8 * _relative_l2(before, [12, 13, 14, 15])
    removed = after.remove([0], editor, **OPTIONS)
    assert removed.generator is after.generator and removed.history[-1]["generator"] == "keep"
    # Saved and loaded, the history and ids survive; the original pack directory is untouched.
    generated.save(tmp_path / "p0")
    removed.save(tmp_path / "p2")
    loaded = EditPack.load(tmp_path / "p2")
    assert loaded.ids == removed.ids and loaded.next_id == 16
    assert [e["operation"] for e in loaded.history] == ["fit", "add", "remove"]
    assert len(EditPack.load(tmp_path / "p0")) == 12


def test_an_add_whose_generator_stops_holding_falls_back_as_a_fit_does(generated, fact_gpt2, tokenizer, tmp_path,
                                                                        monkeypatch, caplog):
    """weights="auto" is resolved again after every fine-tune: a generator that no longer reproduces its vectors
    (here: a criterion of 1e-6 that 2 steps cannot reach) gives way to the collected vectors, as in a fit."""
    monkeypatch.setattr(lifelong, "FINE_TUNE_STEPS", 2)
    strict = replace(generated.config, generator=replace(generated.config.generator, stop_threshold=1e-6))
    assert generated.weights_requested == "generated"  # tiny_config asks for the generator's path
    pack = replace(generated, config=strict, history=[{**generated.history[0], "weights": "auto"}])
    assert pack.config.weights == "generated"
    editor = _editor(fact_gpt2, tokenizer, tiny_config())
    with caplog.at_level(logging.WARNING, logger="meg"):
        after = pack.add(LATER, editor, **OPTIONS)
    assert "so the pack answers with the collected vectors" in caplog.text
    assert after.config.weights == "retrieved" and after.generator is None
    assert (after.history[-1]["generator"], after.history[-1]["weights"]) == ("fine-tune", "retrieved")
    assert sum(_answers(fact_gpt2, tokenizer, after, REQUESTS)) >= 15
    after.save(tmp_path / "p")
    loaded = EditPack.load(tmp_path / "p")
    assert loaded.weights_requested == "auto" and loaded.config.weights == "retrieved"
    assert loaded.remove([0], editor, **OPTIONS).history[-1]["generator"] == "none"  # no generator work any more
    # A pack fitted with weights="generated" keeps its generator, with a warning, as a fit does.
    kept = replace(generated, config=strict).add(LATER, editor, **OPTIONS)
    assert kept.config.weights == "generated" and kept.generator is not None and kept.history[-1]["weights"] == "generated"


@pytest.mark.parametrize("name", ["retrieval", "paper-gate"])
def test_a_format_1_pack_takes_lifelong_operations(name, monkeypatch):
    """The packs meg-edit 0.1.0 wrote (tests/fixtures/format1, ids by line): ids continue after the migrated
    `next_id`; the paper's gate is retrained by a remove, the retrieval router re-calibrated."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    fixtures = Path(__file__).parent / "fixtures" / "format1"
    model = AutoModelForCausalLM.from_pretrained(fixtures / "model").eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(fixtures / "model")
    pack = EditPack.load(fixtures / f"pack-{name}")
    editor = MegEditor(model, tokenizer)
    removed = editor.remove(pack, [0], pseudo_pairs=PAIRS, unrelated=UNRELATED, calibration_pairs=[], progress=False)
    assert removed.ids == list(range(1, 8)) and removed.next_id == 8
    assert [h["operation"] for h in removed.history] == ["fit", "remove"]
    if name == "paper-gate":  # retrained on the 7 edits left
        assert any(not torch.equal(v, pack.router_state[k]) for k, v in removed.router_state.items())
    else:
        assert not EditedModel(model, tokenizer, removed).describe([pack.requests[0].prompt])[0]["routed"]
        monkeypatch.setattr(lifelong, "FINE_TUNE_STEPS", 30)
        added = editor.add(removed, [REQUESTS[9]], pseudo_pairs=PAIRS, unrelated=UNRELATED, calibration_pairs=[],
                           progress=False)
        few = int(removed.collection.success.sum()) < lifelong.RETRAIN_BELOW  # 7 edits, fewer collected
        assert added.ids == [*range(1, 8), 8] and added.history[-1]["generator"] == ("retrain" if few else "fine-tune")


def test_generator_rule_fine_tunes_small_changes_and_retrains_large_ones():
    config = CONFIGS["small-gpt2"]
    small = lifelong.plan_add(FIRST, list(range(12)), 12, LATER)
    large = lifelong.plan_add(FIRST[:2], [0, 1], 2, FIRST[2:])
    mode, training = lifelong.generator_plan(small, config, 12)
    assert mode == "fine-tune" and training.max_steps == lifelong.FINE_TUNE_STEPS
    assert training.warmup_steps < training.max_steps and training.lr == config.lr
    assert training.eval_every == lifelong.FINE_TUNE_EVAL_EVERY
    assert lifelong.generator_plan(large, config, 2) == ("retrain", config)
    assert lifelong.generator_plan(small, config, 1) == ("retrain", config)  # a normalisation fitted on one vector
    assert lifelong.generator_plan(small, None, 12)[0] == "none"
    assert lifelong.generator_plan(lifelong.plan_remove(FIRST, list(range(12)), 12, [0]), config, 12)[0] == "keep"


def test_train_generator_from_init_starts_from_its_weights():
    torch.manual_seed(0)
    vectors, conds = torch.randn(8, 9), torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
    config = replace(CONFIGS["small-gpt2"], max_steps=20, warmup_steps=2, eval_every=10, sampling_steps=2)
    first, _ = train_generator(vectors, conds, config, progress=False)
    tuned, log = train_generator(vectors * 3, conds, replace(config, lr=1e-12), progress=False, init=first)
    # A vanishing learning rate leaves the starting weights, and the normalisation is the init's, not refitted.
    assert torch.equal(tuned.norm_scale, first.norm_scale) and log.steps == 20
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(tuned.state_dict().values(), first.state_dict().values()))
    with pytest.raises(InputError, match="init generator"):
        train_generator(vectors[:, :5], conds, config, progress=False, init=WeightGenerator(config, 9, 4))


def test_diff_and_read_removals(retrieved, tmp_path):
    changed = lifelong.plan_add(retrieved.requests, retrieved.ids, 12, [replace(FIRST[2], target="Rome"), LATER[0]])
    after = replace(retrieved, requests=changed.requests, ids=changed.ids, next_id=changed.next_id)
    after = replace(after, requests=after.requests[1:], ids=after.ids[1:])
    result = lifelong.diff(retrieved, after)
    assert [i for i, _ in result["added"]] == [12] and [i for i, _ in result["removed"]] == [0]
    assert [(i, new.target) for i, _, new in result["replaced"]] == [(2, "Rome")] and result["same_lineage"]
    path = tmp_path / "remove.jsonl"
    path.write_text('3\n"The capital of France is"\n{"id": 4}\n{"prompt": "BBC One, by", "target": "x"}\n')
    assert lifelong.read_removals(path) == [3, "The capital of France is", 4, "BBC One, by"]
    path.write_text("[1, 2]\n")
    with pytest.raises(InputError, match=r"remove.jsonl record 0: expected an edit id"):
        lifelong.read_removals(path)


# --- the command line ---

runner = CliRunner()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, fact_gpt2, tokenizer, retrieved):
    root = tmp_path_factory.mktemp("lifelong-cli")
    fact_gpt2.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    retrieved.save(root / "pack")
    (root / "add.jsonl").write_text("".join(json.dumps(r.to_json()) + "\n" for r in LATER))
    (root / "remove.jsonl").write_text('0\n"BBC One, by"\n')
    (root / "replace.jsonl").write_text(json.dumps(replace(FIRST[3], target="Rome").to_json()) + "\n")
    (root / "pairs.jsonl").write_text("".join(json.dumps({"question": q, "paraphrase": p, "subject": s}) + "\n"
                                              for q, p, s in PSEUDO_PAIRS))
    (root / "unrelated.jsonl").write_text("".join(json.dumps({"prompt": q}) + "\n" for q in CALIBRATION))
    return root


def _cli(w, *args):
    common = ("--model", w / "model", "--pseudo-pairs", w / "pairs.jsonl", "--unrelated", w / "unrelated.jsonl")
    return runner.invoke(app, [str(a) for a in ("edit", *args, *common)])


def test_cli_add_remove_show_and_diff(workspace, monkeypatch):
    w = workspace
    monkeypatch.setattr(editor_module, "_routing_inputs", _no_shipped_calibration(editor_module._routing_inputs))
    result = _cli(w, "--pack", w / "pack", "--add", w / "add.jsonl", "--out", w / "added")
    assert result.exit_code == 0, result.output
    assert "add: 4 added, 0 replaced, 0 removed; 16 edits now (next id 16)" in result.output
    assert "added ids: 12-15" in result.output
    result = _cli(w, "--pack", w / "added", "--remove", w / "remove.jsonl", "--out", w / "removed")
    assert result.exit_code == 0, result.output
    assert "removed ids: 0, 2" in result.output
    shown = runner.invoke(app, ["pack", "show", str(w / "removed")])
    assert shown.exit_code == 0, shown.output
    assert "14 edits (ids 1, 3-15, next id 16)" in shown.output and "remove 2 edits" in shown.output
    assert "calibration:" in shown.output and "add 4 edits" in shown.output
    result = _cli(w, "--pack", w / "removed", "--replace", w / "replace.jsonl", "--out", w / "replaced")
    assert result.exit_code == 0, result.output
    assert "replace: 0 added, 1 replaced, 0 removed" in result.output and "replaced ids: 3" in result.output
    diff = runner.invoke(app, ["pack", "diff", str(w / "pack"), str(w / "replaced"), "--json"])
    assert diff.exit_code == 0, diff.output
    result = json.loads(diff.stdout)
    assert [r["id"] for r in result["added"]] == [12, 13, 14, 15] and [r["id"] for r in result["removed"]] == [0, 2]
    assert [(r["id"], r["after"]["target"]) for r in result["replaced"]] == [(3, "Rome")] and result["same_lineage"]
    text = runner.invoke(app, ["pack", "diff", str(w / "pack"), str(w / "replaced")]).output
    assert "4 added, 2 removed, 1 replaced" in text and "~ 3: 'Toko Yasuda plays the'" in text
    assert len(EditPack.load(w / "pack")) == 12  # the input pack is untouched


def test_cli_mode_errors_are_one_line(workspace):
    w = workspace
    result = _cli(w, "--pack", w / "pack", "--out", w / "x")
    assert result.exit_code == 2 and "--pack needs exactly one of --add, --replace, --remove" in result.output
    result = _cli(w, "--pack", w / "pack", "--remove", w / "add.jsonl", "--out", w / "x")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: remove: no edit with prompt")
    result = _cli(w, "--add", w / "add.jsonl", "--out", w / "x")
    assert result.exit_code == 2 and "give it with --pack" in result.output


def _no_shipped_calibration(routing_inputs):
    """The CLI has no --calibration-pairs option; in these tests the shipped 3,000 would be most of the time."""
    def wrapped(config, requests, pseudo_pairs, unrelated, calibration_pairs):
        return routing_inputs(config, requests, pseudo_pairs, unrelated, [])
    return wrapped
