"""Scale-out with accelerate: `accelerate launch --multi_gpu --num_processes 2` (CPU processes over gloo) against one process on a tiny model.

What must hold (meg/distributed.py): the collected vectors are exactly the one-process vectors (a chunk's rows never
meet another chunk's); the generator trained with DDP matches the one-process generator within float32 summation
order (each step's gradient is the same batch's, summed in another order; the tolerance is measured below, 1e-4 on
weights after 60 AdamW steps); rank 0 alone writes the pack; evaluation shards give the same records.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import FACTS, NEW_TARGETS, tiny_config, write_edit_files

from meg.benchmarks.scaleout import launch_command
from meg.distributed import SINGLE, Ranks
from meg.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def test_round_robin_shares_cover_every_item_once():
    for world in (1, 2, 3, 5):
        taken = sorted(i for rank in range(world) for i in Ranks(rank, world).mine(11))
        assert taken == list(range(11))
    assert list(SINGLE.mine(3)) == [0, 1, 2] and SINGLE.main and not SINGLE.distributed


def test_device_per_rank():
    assert Ranks(1, 2, 1).device("cuda") == "cuda:1" and Ranks(1, 2, 1).device("cpu") == "cpu"
    assert SINGLE.device("cuda:3") == "cuda:3"
    with pytest.raises(InputError, match="names one device"):
        Ranks(0, 2, 0).device("cuda:0")


def test_generator_loss_shares_add_up_to_the_batch_loss():
    """The ranks' scaled shares average to the one-process MSE, and so do their gradients (what DDP all-reduces)."""
    from meg.diffusion.generator import CONFIGS, WeightGenerator

    gen = WeightGenerator(CONFIGS["small-gpt2"], 20, 8)
    inputs = torch.Generator().manual_seed(0)
    x0, cond = torch.randn(7, 20, generator=inputs), torch.randn(7, 8, generator=inputs)
    whole = gen.loss(x0, cond, torch.Generator().manual_seed(3))
    whole.backward()
    expected = [p.grad.clone() for p in gen.parameters()]
    gen.zero_grad()
    shares = [gen.loss(x0, cond, torch.Generator().manual_seed(3), share=(rank, 3)) for rank in range(3)]
    (sum(shares) / 3).backward()
    assert torch.allclose(sum(shares) / 3, whole, rtol=1e-5)
    for p, g in zip(gen.parameters(), expected):  # equal up to float32 summation order, relative to the tensor
        assert float((p.grad - g).abs().max()) <= 1e-5 * float(g.abs().max()) + 1e-8


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, fact_gpt2, tokenizer):
    """A saved tiny model, 12 edits in chunks of 2 (6 chunks over the ranks), a short generator training."""
    from dataclasses import replace

    from meg.encoder import EncoderConfig

    root = write_edit_files(tmp_path_factory.mktemp("dist"), fact_gpt2, tokenizer, edits=12)
    config = tiny_config(encoder=EncoderConfig())  # the shipped encoder: no tuning in the test
    config = replace(config, collection=replace(config.collection, batch_size=2),
                     generator=replace(config.generator, max_steps=60, warmup_steps=10, eval_every=30,
                                                       stop_threshold=0.0))
    (root / "config.json").write_text(json.dumps(config.to_dict()))
    return root


def _launch(root: Path, processes: int, *args: str, cache: Path, ok: bool = True) -> subprocess.CompletedProcess:
    """`python ARGS` in one process, or under `accelerate launch` in `processes` CPU processes (gloo)."""
    env = {**os.environ, "MEG_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    command = launch_command(processes, list(args))
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert (result.returncode == 0) == ok, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _edit(root: Path, processes: int, name: str) -> Path:
    shutil.rmtree(root / f"cache-{name}", ignore_errors=True)
    _launch(root, processes, "-m", "meg.cli.main", "edit", "--model", str(root / "model"), "--edits", str(root / "edits.jsonl"),
         "--pseudo-pairs", str(root / "pairs.jsonl"), "--unrelated", str(root / "unrelated.jsonl"),
         "--config", str(root / "config.json"), "--work-dir", str(root / f"work-{name}"), "--out",
         str(root / f"pack-{name}"), cache=root / f"cache-{name}")
    return root / f"pack-{name}"


@pytest.mark.integration
def test_two_processes_give_the_one_process_pack(workspace):
    from meg.pack import EditPack

    one, two = _edit(workspace, 1, "one"), _edit(workspace, 2, "two")
    a, b = EditPack.load(one), EditPack.load(two)
    assert torch.equal(a.collection.vectors, b.collection.vectors)  # exactly: the same chunks, collected alone
    assert torch.equal(a.collection.success, b.collection.success) and a.collection.predictions == b.collection.predictions
    assert [r.prompt for r in a.requests] == [r.prompt for r in b.requests]
    assert a.router_fitted == b.router_fitted
    for key, value in a.router_state.items():
        assert torch.equal(value, b.router_state[key]), key
    sa, sb = a.generator.state_dict(), b.generator.state_dict()
    worst = max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)
    print("generator max |difference|", worst)
    assert worst < 1e-4, worst  # DDP: the same batches, gradients summed in another order
    # rank 0 alone wrote: one pack, and the work directory holds the chunks of both ranks (6 chunks)
    chunks = sorted((workspace / "work-two" / "collection").glob("*.safetensors"))
    assert len(chunks) == 6
    assert sorted(p.name for p in (workspace / "work-one" / "collection").glob("*.safetensors")) == \
        [p.name for p in chunks]


@pytest.mark.integration
def test_sharded_evaluation_gives_the_one_process_records(workspace):
    """The unedited model's outputs (chunks of 3) and the evaluation (chunks of 2) spread over 2 processes: the
    same records, in order, written once by rank 0."""
    from meg.evaluation.harness import read_records

    pack = workspace / "pack-one"
    if not pack.is_dir():
        _edit(workspace, 1, "one")
    outs = {}
    for processes in (1, 2):
        out = workspace / f"eval-{processes}"
        shutil.rmtree(out, ignore_errors=True)
        _launch(workspace, processes, str(ROOT / "tests" / "distributed_eval.py"), str(workspace / "model"), str(pack),
                str(workspace / "edits.jsonl"), str(out), cache=workspace / "cache-eval")
        outs[processes] = out
    one, two = (read_records(outs[k] / "records.jsonl") for k in (1, 2))
    assert len(one) == 12 and [r["index"] for r in two] == list(range(12))
    assert one == two
    assert read_records(outs[1] / "pre_edit.jsonl") == read_records(outs[2] / "pre_edit.jsonl")


@pytest.mark.slow  # two more fits (about 2 minutes); the CI tier checks the fit and the evaluation separately above
def test_meg_run_on_two_processes_reports_what_one_process_does(workspace):
    """`meg run` end to end (fit, pre-edit outputs, evaluation, report) under `accelerate launch`."""
    reports = {}
    for processes in (1, 2):
        out = workspace / f"run-{processes}"
        shutil.rmtree(out, ignore_errors=True)
        _launch(workspace, processes, "-m", "meg.cli.main", "run", "--model", str(workspace / "model"), "--data",
                str(workspace / "edits.jsonl"), "--config", str(workspace / "config.json"), "--out", str(out),
                cache=workspace / f"cache-run-{processes}")
        reports[processes] = json.loads((out / "report.json").read_text())
    assert reports[1]["metrics"] == reports[2]["metrics"]


@pytest.mark.integration
def test_a_baseline_is_refused_on_several_processes(workspace):
    """One-line error before any model loads or anything is written."""
    refused = _launch(workspace, 2, "-m", "meg.cli.main", "run", "--method", "memit", "--model", str(workspace / "model"),
                      "--data", str(workspace / "edits.jsonl"), "--out", str(workspace / "run-memit"),
                      cache=workspace / "cache-refused", ok=False)
    assert "method 'memit' edits in one process" in refused.stdout + refused.stderr
    assert not (workspace / "run-memit" / "run_config.json").exists()


@pytest.mark.integration
def test_bf16_edit_keeps_float32_vectors_and_generator(workspace, monkeypatch, tmp_path):
    """`meg edit --dtype bfloat16`: collection in the bf16 model, the generator under bf16 autocast; the pack holds
    float32 vectors and generator weights, and it loads on the float32 model (fingerprints are dtype-stable)."""
    from typer.testing import CliRunner

    from meg.cli.main import app
    from meg.edited_model import EditedModel
    from meg.models import load_causal_lm
    from meg.pack import EditPack

    monkeypatch.setenv("MEG_CACHE_DIR", str(tmp_path / "cache"))
    w = workspace
    result = CliRunner().invoke(app, [str(a) for a in (
        "edit", "--model", w / "model", "--edits", w / "edits.jsonl", "--pseudo-pairs", w / "pairs.jsonl",
        "--unrelated", w / "unrelated.jsonl", "--config", w / "config.json", "--dtype", "bfloat16",
        "--out", tmp_path / "pack")])
    assert result.exit_code == 0, result.output
    pack = EditPack.load(tmp_path / "pack")
    assert pack.collection.vectors.dtype == torch.float32 and pack.collection.success.any()
    assert all(v.dtype == torch.float32 for v in pack.generator.state_dict().values() if v.is_floating_point())
    model, tokenizer = load_causal_lm(str(w / "model"))  # float32
    EditedModel(model, tokenizer, pack).generate([FACTS[0][0]])


def test_bad_dtype_and_device_are_refused_before_loading(workspace, tmp_path):
    from typer.testing import CliRunner

    from meg.cli.main import app

    w = workspace
    for option, value, message in (("--dtype", "fp8", "--dtype must be float32 or bfloat16"),
                                   ("--device", "tpu:9", "is not a torch device")):
        result = CliRunner().invoke(app, [str(a) for a in ("edit", "--model", w / "model", "--edits", w / "edits.jsonl",
                                                           option, value, "--out", tmp_path / "p")])
        assert result.exit_code != 0 and message in result.output, result.output
    assert not (tmp_path / "p").exists()


def test_device_auto_loads_with_a_device_map_and_edits(workspace):
    """`--device auto` (device_map="auto"): on this machine every layer lands on the CPU, but the load path, the
    neuron on the layer's own device and a collection through accelerate's placement hooks all run."""
    from meg.collection import collect_weights, preset
    from meg.models import load_causal_lm
    from meg.requests import EditRequest
    from meg.surgery import neuron_spec

    model, tokenizer = load_causal_lm(str(workspace / "model"), device="auto")
    assert {p.device.type for p in model.parameters()} == {"cpu"}  # all that this machine has
    spec = neuron_spec(model, 1)
    result = collect_weights(model, tokenizer, spec, [EditRequest(FACTS[0][0], NEW_TARGETS[0])],
                             preset("small-gpt2"), progress=False)
    assert result.vectors.shape == (1, spec.dim) and bool(result.success[0])
