"""Invariants of the familiarity network and its epsilon (meg.gate)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from meg.errors import InputError
from meg.files import load_tensors, save_tensors
from meg.gate import Calibration, FamiliarityGate, GateConfig, calibrate_epsilon, choose_epsilon, train_gate

DIM = 32
CONFIG = GateConfig(max_epochs=400, seed=3)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """This CPU is shared with other jobs: with 2 threads, OpenMP spin-waiting makes small ops ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _unit(n: int, seed: int) -> torch.Tensor:
    x = torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=1, keepdim=True)  # like the encoder's embeddings


@pytest.fixture(scope="module")
def trained() -> tuple[FamiliarityGate, object, torch.Tensor]:
    edits = _unit(50, seed=0)
    gate, log = train_gate(edits, CONFIG, progress=False)
    return gate, log, edits


def test_memorises_random_labels(trained):
    gate, log, edits = trained
    assert log.stopped_early and log.final_loss < CONFIG.stop_loss
    assert log.train_accuracy == 1.0 and log.epochs == len(log.losses) < CONFIG.max_epochs
    h = gate.entropy(edits)
    assert h.shape == (50,) and h.median() < 0.05 and h.max() < 0.3  # near-certain (the maximum is ln 10 = 2.30)
    assert not gate.training


def test_network_shape_follows_the_paper(trained):
    gate, _, _ = trained
    assert len(gate.blocks) == 5 and gate.head.out_features == 10
    assert gate.blocks[0].ffn[0].out_features == 4 * DIM


def test_training_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    config = GateConfig(max_epochs=5, seed=7)
    first, _ = train_gate(_unit(20, seed=1), config, progress=False)
    second, _ = train_gate(_unit(20, seed=1), config, progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def test_state_round_trip_gives_identical_entropies(trained, tmp_path):
    gate, _, edits = trained
    save_tensors(tmp_path / "gate.safetensors", gate.state_dict())
    (tmp_path / "gate.json").write_text(json.dumps(gate.config.to_dict()))
    config = GateConfig.from_dict(json.loads((tmp_path / "gate.json").read_text()))
    rebuilt = FamiliarityGate(DIM, config)
    rebuilt.load_state_dict(load_tensors(tmp_path / "gate.safetensors"))
    queries = torch.cat([edits, _unit(30, seed=9)])
    assert torch.equal(rebuilt.entropy(queries), gate.entropy(queries))


def test_calibration_hits_a_known_quantile():
    # Unrelated entropies uniform on [0, ln 10]: the 2% quantile is 0.02 * ln 10, and a fresh draw's rate
    # below the calibrated epsilon should be close to 2%.
    top, target = math.log(10), 0.02
    calibration = torch.rand(4000, generator=torch.Generator().manual_seed(0)) * top
    held_out = torch.rand(50000, generator=torch.Generator().manual_seed(1)) * top
    epsilon = calibrate_epsilon(calibration, target)
    assert epsilon == pytest.approx(target * top, rel=0.15)
    achieved = (calibration < epsilon).float().mean().item()
    assert target - 2 / len(calibration) <= achieved <= target
    assert abs((held_out < epsilon).float().mean().item() - target) < 0.005


def test_calibration_on_a_trained_gate_reaches_its_target(trained):
    gate, _, _ = trained
    config = GateConfig(target_unrelated_rate=0.05)
    unrelated, held_out = gate.entropy(_unit(2000, seed=11)), gate.entropy(_unit(2000, seed=12))
    result = choose_epsilon(config, unrelated)
    assert result.method == "calibrated" and result.queries == 2000 and result.target_rate == 0.05
    assert 0.045 <= result.achieved_rate <= 0.05
    assert abs((held_out < result.epsilon).float().mean().item() - 0.05) < 0.02
    assert Calibration.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def test_ties_and_small_samples():
    # A saturated gate gives many identical entropies: strict "<" keeps the rate at or below target.
    ties = torch.cat([torch.zeros(500), torch.linspace(0.5, 1.0, 500)])
    epsilon = calibrate_epsilon(ties, 0.02)
    assert epsilon == 0.0 and (ties < epsilon).float().mean() == 0.0
    with pytest.raises(InputError, match="need at least 49") as err:
        calibrate_epsilon(torch.rand(10), 0.02)
    assert "\n" not in str(err.value)
    assert calibrate_epsilon(torch.arange(49.0), 0.02) == 0.0  # smallest sample that supports 2%


def test_fixed_epsilon_is_honoured(trained):
    gate, _, edits = trained
    config = GateConfig(epsilon=0.3)
    unrelated = gate.entropy(_unit(200, seed=5))
    result = choose_epsilon(config, unrelated)
    assert (result.epsilon, result.method, result.target_rate) == (0.3, "fixed", None)
    assert result.achieved_rate == pytest.approx((unrelated < 0.3).double().mean().item())
    assert choose_epsilon(config).epsilon == 0.3  # no unrelated queries needed
    assert torch.equal(gate.route(edits, 0.3), gate.entropy(edits) < 0.3)
    with pytest.raises(InputError, match="unrelated queries are needed"):
        choose_epsilon(GateConfig())


@pytest.mark.parametrize(
    "field, value",
    [("stop_loss", -1.0), ("lr", 0.0), ("blocks", -1), ("seed", -1), ("epsilon", -0.1),
     ("target_unrelated_rate", 0.0), ("target_unrelated_rate", 1.0), ("batch_size", 0), ("max_epochs", 2.5)],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(InputError) as err:
        GateConfig(**{field: value})
    assert f"GateConfig.{field} must be" in str(err.value) and "\n" not in str(err.value)


def test_config_round_trips_and_rejects_unknown_fields():
    config = GateConfig(epsilon=0.2, batch_size=128)
    assert GateConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(InputError, match="unknown GateConfig fields"):
        GateConfig.from_dict({"epsilom": 0.2})


def test_duplicate_queries_share_one_label_and_training_converges():
    from meg.gate import GateConfig, _shared_by_duplicates, random_labels, train_gate

    x = torch.nn.functional.normalize(torch.randn(40, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    config = GateConfig(max_epochs=400)
    assert torch.equal(_shared_by_duplicates(x, random_labels(40, config)), random_labels(40, config))
    doubled = torch.cat([x, x[:10]])  # ten prompts edited twice
    labels = _shared_by_duplicates(doubled, random_labels(50, config))
    assert torch.equal(labels[40:], labels[:10])
    _, log = train_gate(doubled, config, progress=False)
    assert log.stopped_early and log.train_accuracy == 1.0


def _same_gate(a: FamiliarityGate, b: FamiliarityGate) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_interrupted_training_resumes_to_the_uninterrupted_gate(tmp_path):
    """A run stopped after 3 epochs (here: capped) and continued to 7 equals a straight run of 7, tensor for
    tensor: the checkpoint holds the weights, the AdamW moments, the batch order and the dropout generator."""
    edits, path = _unit(30, seed=4), tmp_path / "gate-training.safetensors"
    straight, straight_log = train_gate(edits, GateConfig(max_epochs=7, seed=5), progress=False)
    train_gate(edits, GateConfig(max_epochs=3, seed=5), progress=False, checkpoint=path, save_every=2)
    resumed, log = train_gate(edits, GateConfig(max_epochs=7, seed=5), progress=False, checkpoint=path, save_every=2)
    assert log.resumed_from_epoch == 3 and log.losses == straight_log.losses and log.epochs == 7
    assert _same_gate(resumed, straight)
    again, again_log = train_gate(edits, GateConfig(max_epochs=7, seed=5), progress=False, checkpoint=path)
    assert again_log.resumed_from_epoch == 7 and again_log.losses == straight_log.losses and _same_gate(again, straight)


def test_a_finished_checkpoint_is_loaded_and_a_longer_one_is_left_alone(tmp_path):
    edits, path = _unit(20, seed=6), tmp_path / "gate-training.safetensors"
    config = GateConfig(max_epochs=400, seed=2)
    first, first_log = train_gate(edits, config, progress=False, checkpoint=path)
    assert first_log.stopped_early and first_log.epochs < 400
    loaded, log = train_gate(edits, config, progress=False, checkpoint=path)
    assert log.stopped_early and log.resumed_from_epoch == first_log.epochs and _same_gate(loaded, first)
    stamp = path.stat().st_mtime_ns
    short, short_log = train_gate(edits, GateConfig(max_epochs=2, seed=2), progress=False, checkpoint=path)
    assert short_log.resumed_from_epoch == 0 and short_log.epochs == 2 and path.stat().st_mtime_ns == stamp


def test_trained_gate_keys_its_checkpoint_by_inputs(tmp_path):
    from meg.gate import trained_gate

    edits = _unit(20, seed=8)
    trained_gate(GateConfig(max_epochs=2, seed=1), edits, tmp_path, progress=False)
    trained_gate(GateConfig(max_epochs=4, seed=1, epsilon=0.3), edits, tmp_path, progress=False)  # continues
    trained_gate(GateConfig(max_epochs=2, seed=2), edits, tmp_path, progress=False)  # another seed: another file
    assert len(list(tmp_path.glob("gate-training-*.safetensors"))) == 2
    _, log = trained_gate(GateConfig(max_epochs=4, seed=1), edits, tmp_path, progress=False)
    assert log.resumed_from_epoch == 4


def test_a_file_that_is_not_a_training_checkpoint_is_refused(tmp_path):
    path = tmp_path / "gate-training.safetensors"
    save_tensors(path, {"x": torch.zeros(1)})
    with pytest.raises(InputError, match="not a training checkpoint"):
        train_gate(_unit(10, seed=0), GateConfig(max_epochs=2), progress=False, checkpoint=path)


def test_the_shipped_config_files_are_valid_and_name_the_papers_epsilons():
    """configs/*.json are what the results pages pass to `meg bench --configs`: each must pass the bench's own
    check, and the meg-paper-eps files must be exactly the paper's named thresholds."""
    from pathlib import Path

    from meg.benchmarks.routing import VARIANTS
    from meg.gate import PAPER_EPSILONS
    from meg.methods import check_methods

    root = Path(__file__).resolve().parents[1] / "configs"
    for path in sorted(root.glob("*.json")):
        configs = json.loads(path.read_text())
        check_methods(tuple(configs), configs, command=path.name)
    shipped = sorted(json.loads(p.read_text())["meg-paper"]["gate"]["epsilon"] for p in root.glob("meg-paper-eps*.json"))
    assert shipped == sorted(PAPER_EPSILONS.values())
    fixed = {v.gate_config["epsilon"] for k, v in VARIANTS.items() if k.startswith("paper-gate/tuned-eps")}
    assert fixed == set(PAPER_EPSILONS.values())


def test_a_configs_file_may_configure_methods_a_run_does_not_bench(caplog):
    """One configs file serves every method of a model (configs/bench-reference-2.json) when a run benches a subset:
    the unused configs are still checked, and named in a warning; a config for no method of the command is refused."""
    import logging

    from meg.methods import check_methods

    configs = {"ft": {"preset": "reference-2"}, "memit": {"preset": "reference-2"}}
    with caplog.at_level(logging.WARNING, logger="meg.methods"):
        check_methods(("unedited", "ft"), configs, command="bench")
    assert "configs for memit not used" in caplog.text
    with pytest.raises(InputError, match=r"MEMITConfig\.v_lr"):
        check_methods(("ft",), {"memit": {"v_lr": 0}}, command="bench")
    with pytest.raises(InputError, match=r"^configs given for 'rome', not a method of bench; choose from"):
        check_methods(("ft",), {"rome": {}}, command="bench")
