"""Pack format 2 and the migration of format-1 packs (tests/fixtures/format1, written by meg-edit 0.1.0)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from meg import files
from meg.edited_model import EditedModel
from meg.errors import PackError
from meg.pack import FORMAT_VERSION, EditPack

FIXTURES = Path(__file__).parent / "fixtures" / "format1"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


@pytest.fixture(scope="module")
def fixture_model():
    model = AutoModelForCausalLM.from_pretrained(FIXTURES / "model").eval()
    return model, PreTrainedTokenizerFast.from_pretrained(FIXTURES / "model")


def _answers(model, tokenizer, pack: EditPack, prompts: list[str]):
    edited = EditedModel(model, tokenizer, pack)
    return edited.generate(prompts, max_new_tokens=4), edited.describe(prompts)


def _same_routes(described: list[dict], expected: list[dict]) -> bool:
    """Routes, edits and score names exactly; scores to float32 rounding: since 2026-12-01 routing encodes a
    query's texts in one encoder pass (issue 19), so a text may sit in another padded batch than when the fixture
    was written."""
    def same(a, b):
        return a == pytest.approx(b, abs=1e-6) if isinstance(b, float) else a == b

    return all(d.keys() == e.keys() and all(same(d[k], e[k]) for k in e) for d, e in zip(described, expected, strict=True))


@pytest.mark.parametrize("name", ["retrieval", "paper-gate"])
def test_a_format_1_pack_loads_and_answers_exactly_as_when_it_was_written(fixture_model, name):
    model, tokenizer = fixture_model
    pack = EditPack.load(FIXTURES / f"pack-{name}")
    expected = EXPECTED[name]
    generated, described = _answers(model, tokenizer, pack, expected["prompts"])
    assert generated == expected["generated"]
    assert _same_routes(described, expected["describe"])
    # migrated: ids by line, one history entry, every setting once and resolved
    assert pack.ids == list(range(8)) and pack.next_id == 8
    assert [h["operation"] for h in pack.history] == ["fit"] and pack.history[0]["migrated_from_format"] == 1
    assert pack.config.layer == 1 and pack.config.collection is not None and pack.config.router == name
    assert pack.config.generator_vectors == "successful"  # what its generator learned; new packs: "all"


@pytest.mark.parametrize("name", ["retrieval", "paper-gate"])
def test_a_migrated_pack_saved_as_format_2_stores_each_setting_once_and_answers_the_same(fixture_model, tmp_path, name):
    model, tokenizer = fixture_model
    pack = EditPack.load(FIXTURES / f"pack-{name}")
    pack.save(tmp_path / "v2")
    meta = files.read_json(tmp_path / "v2" / files.PACK_CONFIG)
    assert meta["format_version"] == FORMAT_VERSION == 2
    assert set(meta["router"]) <= {"thresholds", "calibration", "training"}  # what the fit produced, no settings
    assert not (tmp_path / "v2" / files.PACK_GENERATOR_CONFIG).exists()  # the generator's settings live in "meg"
    lines = (tmp_path / "v2" / files.PACK_EDITS).read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == list(range(8))
    again = EditPack.load(tmp_path / "v2")
    assert again.config == pack.config and again.ids == pack.ids and again.history == pack.history
    expected = EXPECTED[name]
    generated, described = _answers(model, tokenizer, again, expected["prompts"])
    assert generated == expected["generated"] and _same_routes(described, expected["describe"])


def test_a_format_1_pack_with_a_setting_that_became_fixed_is_refused_by_name(tmp_path):
    copy = tmp_path / "pack"
    shutil.copytree(FIXTURES / "pack-paper-gate", copy)
    meta = files.read_json(copy / files.PACK_CONFIG)
    meta["router"]["config"]["gate"]["hidden_mult"] = 2  # the router block is what format 1 loaded the gate from
    files.atomic_write_json(copy / files.PACK_CONFIG, meta)
    with pytest.raises(PackError, match="gate.hidden_mult, which is fixed at 4"):
        EditPack.load(copy)


def test_a_pack_from_a_newer_format_is_refused(tmp_path):
    copy = tmp_path / "pack"
    shutil.copytree(FIXTURES / "pack-paper-gate", copy)
    meta = files.read_json(copy / files.PACK_CONFIG)
    meta["format_version"] = 99
    files.atomic_write_json(copy / files.PACK_CONFIG, meta)
    with pytest.raises(PackError, match="pack format 99 is newer"):
        EditPack.load(copy)


def test_format_2_edit_ids_must_be_distinct_integers(tmp_path, fixture_model):
    pack = EditPack.load(FIXTURES / "pack-paper-gate")
    pack.save(tmp_path / "v2")
    edits = tmp_path / "v2" / files.PACK_EDITS
    rows = [json.loads(line) for line in edits.read_text().splitlines()]
    rows[1]["id"] = rows[0]["id"]
    edits.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(PackError, match="edits.jsonl: corrupted, its sha256 differs"):
        EditPack.load(tmp_path / "v2")  # the manifest notices first
    files.write_manifest(tmp_path / "v2")
    with pytest.raises(PackError, match="distinct integer id"):
        EditPack.load(tmp_path / "v2")
