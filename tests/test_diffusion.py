"""The conditional diffusion generator (meg.diffusion): sampler against a reference, invariants, a tiny fit."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from meg.diffusion import GeneratorConfig, NoiseSchedule, TrainingLog, WeightGenerator, train_generator
from meg.diffusion.dit import DiT1D
from meg.diffusion.mlp import ResidualMLP
from meg.diffusion.train import lr_factor
from meg.errors import InputError

D, C = 65, 16  # a 65-dim vector is two 64-patches, the second padded with 63 zeros


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models are dominated by per-op overhead; one thread is faster and immune to a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny(**overrides) -> GeneratorConfig:
    base = dict(preset="tiny", lr=3e-3, batch_size=8, max_steps=300, eval_every=100, sampling_steps=10)
    return GeneratorConfig(**{**base, **overrides})


# --- (a) the DDIM loop against a reference written from the formulas ---


def _stub_v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed 'denoiser': a known function of x_t (B, D) and t (B,)."""
    return torch.tanh(x) * (t.to(x.dtype)[:, None] / 1000) + 0.1 * torch.cos(x)


def _reference_ddim(noise: torch.Tensor, steps: int, spacing: str, T: int = 1000) -> torch.Tensor:
    """DDIM, eta = 0, v-prediction, in float64 from the definitions (Song et al. eq. 12)."""
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    if spacing == "trailing":
        grid = [round(T - i * T / steps) - 1 for i in range(steps)]
    else:  # leading
        grid = [i * (T // steps) for i in range(steps)][::-1]
    x = noise.double()
    for i, t in enumerate(grid):
        a_t, s_t = abar[t].sqrt(), (1 - abar[t]).sqrt()
        ab_prev = abar[grid[i + 1]] if i + 1 < len(grid) else torch.tensor(1.0, dtype=torch.float64)
        v = _stub_v(x, torch.full((x.shape[0],), t))
        x0 = a_t * x - s_t * v
        eps = a_t * v + s_t * x
        x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
    return x


@pytest.mark.parametrize("spacing", ["trailing", "leading"])
@pytest.mark.parametrize("steps", [50, 4])
def test_ddim_loop_matches_reference(steps, spacing):
    noise = torch.randn(3, 37, generator=torch.Generator().manual_seed(0))
    schedule = NoiseSchedule(timestep_spacing=spacing)
    out = schedule.sample(_stub_v, noise, steps=steps)
    torch.testing.assert_close(out.double(), _reference_ddim(noise, steps, spacing), atol=1e-5, rtol=1e-5)


def test_trailing_grid_starts_at_the_last_timestep():
    assert NoiseSchedule().timesteps(50)[0].item() == 999
    assert NoiseSchedule().timesteps(50)[-1].item() == 19


# --- (c) training targets ---


def test_velocity_and_noising_follow_the_formulas():
    schedule = NoiseSchedule()
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(5, 9, generator=g), torch.randn(5, 9, generator=g)
    t = torch.tensor([0, 1, 250, 700, 999])
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)[t][:, None]
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    torch.testing.assert_close(schedule.velocity(x0, eps, t).double(), alpha * eps - sigma * x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(schedule.add_noise(x0, eps, t).double(), alpha * x0 + sigma * eps, atol=1e-5, rtol=1e-5)


# --- (b) pinned numbers: a seeded tiny DiT, random weights, full sampling loop ---


def _randomised(model: WeightGenerator, seed: int = 0) -> WeightGenerator:
    """Replace every parameter (the zero-initialised ones too) by seeded noise, so the output depends on all of
    them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def test_pinned_sampling_values():
    model = _randomised(WeightGenerator(_tiny(), D, C))
    g = torch.Generator().manual_seed(0)
    cond, noise = torch.randn(2, C, generator=g), torch.randn(2, D, generator=g)
    z = model.normalize(model.sample(cond, steps=20, noise=noise))  # x100: diffusion space, values ~0.1-1
    pinned = torch.tensor([[-0.446672, -0.663262, 0.243141], [-1.510653, 0.549064, -0.109253]])
    torch.testing.assert_close(z[:, [0, 32, 64]], pinned, atol=1e-4, rtol=1e-4)


# --- (d) determinism and independent rows ---


def test_sampling_is_deterministic_and_rows_are_independent():
    model = _randomised(WeightGenerator(_tiny(), D, C), seed=3)
    cond = torch.randn(4, C, generator=torch.Generator().manual_seed(1))
    a = model.sample(cond, steps=8, generator=torch.Generator().manual_seed(7))
    b = model.sample(cond, steps=8, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    noise = torch.randn(4, D, generator=torch.Generator().manual_seed(7))
    assert torch.equal(model.sample(cond, steps=8, noise=noise), a)  # the generator only draws x_T
    for i in range(4):
        alone = model.sample(cond[i : i + 1], steps=8, noise=noise[i : i + 1])
        torch.testing.assert_close(alone, a[i : i + 1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("net", [DiT1D, ResidualMLP])
def test_untrained_denoiser_predicts_zero(net):
    """adaLN-Zero: every block starts as the identity and the output layer at zero."""
    model = net(D, C, "tiny")
    out = model(torch.randn(3, D), torch.tensor([0, 500, 999]), torch.randn(3, C))
    assert out.shape == (3, D) and torch.equal(out, torch.zeros_like(out))


# --- (e) + (h): a tiny generator fits 8 vectors, and +DA maps unrelated queries to ~0 ---


@pytest.fixture(scope="module")
def fitted():
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(8, D, generator=g) * 0.05  # |x| ~ 0.4, like a small model's neuron
    conds, zero_conds = torch.randn(8, C, generator=g), torch.randn(16, C, generator=g)
    # stop_threshold 0: the paper's absolute 0.5 would stop at once for vectors this short (|x| ~ 0.4)
    model, log = train_generator(vectors, conds, _tiny(stop_threshold=0.0), zero_conds=zero_conds, progress=False)
    return vectors, conds, zero_conds, model, log


def test_tiny_generator_reproduces_its_training_vectors(fitted):
    vectors, conds, _, model, log = fitted
    out = model.sample(conds, generator=torch.Generator().manual_seed(0))
    rel = (out - vectors).norm(dim=1) / vectors.norm(dim=1)
    assert rel.mean() < 0.35, rel
    assert log.losses[-1] < 0.5 * log.losses[0]
    assert [e["step"] for e in log.evals] == [100, 200, 300] and log.stop_reason == "max_steps"


def test_da_maps_zero_conditions_to_near_zero(fitted):
    vectors, _, zero_conds, model, _ = fitted
    out = model.sample(zero_conds, generator=torch.Generator().manual_seed(0))
    assert out.norm(dim=1).mean() < 0.35 * vectors.norm(dim=1).mean()


def test_training_stops_at_the_criterion():
    g = torch.Generator().manual_seed(0)
    vectors, conds = torch.randn(4, D, generator=g) * 0.05, torch.randn(4, C, generator=g)
    _, log = train_generator(vectors, conds, _tiny(max_steps=200, eval_every=20, stop_threshold=10.0), progress=False)
    assert log.stop_reason == "criterion" and log.steps == 20
    assert TrainingLog.from_dict(json.loads(json.dumps(log.to_dict()))) == log


def test_a_generator_holds_its_vectors_when_its_criterion_is_near_the_threshold():
    from meg.diffusion.train import HOLDS_FACTOR, holds

    config = _tiny(stop_metric="relative_l2", stop_threshold=0.2)
    ran_out = lambda reached: {"stop_reason": "max_steps", "steps": 9, "evals": [{"relative_criterion": reached}]}  # noqa: E731
    assert holds({"stop_reason": "criterion", "evals": [{"relative_criterion": 0.1}]}, config)
    assert holds(ran_out(0.2 * HOLDS_FACTOR), config) and not holds(ran_out(0.2 * HOLDS_FACTOR + 1e-6), config)
    assert holds({}, config)  # nothing measured (a generator cached before logs were kept): trusted


def test_cosine_schedule_warms_up_then_decays_to_zero():
    config = _tiny(lr_schedule="cosine", warmup_steps=10, max_steps=110)
    factors = [lr_factor(config, step) for step in range(111)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0) and factors[10] == pytest.approx(1.0)
    assert factors[60] == pytest.approx(0.5) and factors[110] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert {lr_factor(_tiny(), step) for step in (0, 50, 299)} == {1.0}


def test_ema_weights_are_what_training_returns():
    g = torch.Generator().manual_seed(0)
    vectors, conds = torch.randn(8, D, generator=g) * 0.05, torch.randn(8, C, generator=g)
    config = _tiny(max_steps=40, eval_every=20, stop_threshold=0.0, ema_decay=0.9)
    model, log = train_generator(vectors, conds, config, progress=False)
    plain, _ = train_generator(vectors, conds, replace(config, ema_decay=0.0), progress=False)
    assert isinstance(model, WeightGenerator) and log.steps == 40
    # same seed and data: the raw weights of both runs are identical, so the EMA run must return other weights
    differs = [not torch.equal(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values())]
    assert any(differs)
    assert torch.equal(model.norm_scale, plain.norm_scale)  # constant buffers are not blurred by the average


def _without_times(log: TrainingLog) -> dict:
    data = log.to_dict()
    data.pop("wall_seconds"), data.pop("resumed_from_step")
    data["evals"] = [{k: v for k, v in row.items() if k != "seconds"} for row in data["evals"]]
    return data


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_interrupted_training_resumes_to_the_uninterrupted_generator(tmp_path, monkeypatch, ema_decay):
    """Stopped after step 25 (state saved at step 20), then rerun: the same weights and log as one run."""
    from meg.diffusion import train as train_module

    g = torch.Generator().manual_seed(0)
    vectors, conds = torch.randn(12, D, generator=g) * 0.05, torch.randn(12, C, generator=g)
    zero = torch.randn(5, C, generator=g)
    config = _tiny(max_steps=40, eval_every=10, stop_threshold=0.0, ema_decay=ema_decay, lr_schedule="cosine",
                   warmup_steps=5)
    straight, straight_log = train_generator(vectors, conds, config, zero_conds=zero, progress=False)

    step, calls = train_module._Trainer.step, []

    def interrupted(self):
        calls.append(1)
        if len(calls) > 25:
            raise KeyboardInterrupt
        return step(self)

    path = tmp_path / "generator-training.safetensors"
    monkeypatch.setattr(train_module._Trainer, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_generator(vectors, conds, config, zero_conds=zero, progress=False, checkpoint=path)
    monkeypatch.setattr(train_module._Trainer, "step", step)
    resumed, log = train_generator(vectors, conds, config, zero_conds=zero, progress=False, checkpoint=path)
    assert log.resumed_from_step == 20 and _without_times(log) == _without_times(straight_log)
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), straight.state_dict().values()))


def test_trained_generator_drops_its_training_state_once_finished(tmp_path):
    from meg.diffusion.train import trained_generator

    g = torch.Generator().manual_seed(0)
    vectors, conds = torch.randn(8, D, generator=g) * 0.05, torch.randn(8, C, generator=g)
    config = _tiny(max_steps=20, eval_every=10, stop_threshold=0.0)  # runs to step 20, saving its state at 10
    _, log = trained_generator(config, vectors, conds, None, tmp_path, progress=False)
    (stored,) = [p.name for p in tmp_path.iterdir()]  # the finished generator only, no training state
    assert log["steps"] == 20 and stored.startswith("generator-") and "training" not in stored
    _, again = trained_generator(config, vectors, conds, None, tmp_path, progress=False)
    assert again["resumed_from"] == stored and again["steps"] == 20  # with its training log, kept beside it


# --- (f) save -> load ---


def test_save_load_gives_identical_samples(tmp_path, fitted):
    _, conds, _, model, _ = fitted
    model.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generator.safetensors", "generator_config.json"]
    loaded = WeightGenerator.load(tmp_path)
    assert loaded.config == model.config
    a = model.sample(conds, steps=5, generator=torch.Generator().manual_seed(2))
    b = loaded.sample(conds, steps=5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)


def test_standardize_stats_survive_save_load(tmp_path):
    model = WeightGenerator(_tiny(normalization="standardize"), D, C)
    model.fit_normalization(torch.randn(10, D) * torch.logspace(-3, 0, D))
    model.save(tmp_path)
    loaded = WeightGenerator.load(tmp_path)
    assert torch.equal(loaded.norm_shift, model.norm_shift) and torch.equal(loaded.norm_scale, model.norm_scale)


# --- (g) normalisations invert ---


@pytest.mark.parametrize("normalization", ["scale", "standardize"])
def test_normalizations_invert(normalization):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, D, generator=g) * torch.logspace(-3, 0, D) + torch.linspace(-1, 1, D)  # mixed scales
    model = WeightGenerator(_tiny(normalization=normalization), D, C)
    model.fit_normalization(x)
    z = model.normalize(x)
    torch.testing.assert_close(model.denormalize(z), x, atol=1e-7, rtol=1e-6)
    if normalization == "standardize":
        torch.testing.assert_close(z.mean(0), torch.zeros(D), atol=1e-3, rtol=0)  # float32 cancellation
        torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(D), atol=1e-4, rtol=0)
    else:
        torch.testing.assert_close(z, x / 0.01)


# --- (i) configuration ---


@pytest.mark.parametrize(
    "field,value",
    [
        ("architecture", "unet"),
        ("preset", "huge"),
        ("normalization", "minmax"),
        ("lr", 0.0),
        ("sampling_steps", 0),
        ("sampling_steps", 1001),
        ("stop_metric", "l1"),
        ("timestep_spacing", "cosine"),
        ("batch_size", 0),
        ("beta_end", 1e-5),
        ("lr_schedule", "step"),
        ("warmup_steps", 100_000),
        ("ema_decay", 1.0),
    ],
)
def test_config_errors_are_one_line_naming_the_field(field, value):
    with pytest.raises(InputError) as err:
        GeneratorConfig(**{field: value})
    message = str(err.value)
    assert f"GeneratorConfig.{field}" in message and "\n" not in message


def test_config_round_trips_through_json_and_rejects_unknown_fields():
    config = GeneratorConfig(architecture="mlp", preset="tiny", normalization="standardize", max_steps=5)
    assert GeneratorConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(InputError, match="unknown GeneratorConfig fields: bogus"):
        GeneratorConfig.from_dict({"bogus": 1})


def test_shape_errors_name_the_expected_shape():
    model = WeightGenerator(_tiny(), D, C)
    with pytest.raises(InputError, match=rf"cond must have shape \(B, {C}\)"):
        model.sample(torch.randn(2, C + 1))
    with pytest.raises(InputError, match="vectors"):
        train_generator(torch.randn(3, D), torch.randn(4, C), _tiny(), progress=False)


def test_learning_rate_is_scaled_down_for_batches_smaller_than_configured():
    from meg.diffusion.train import _Data, effective_lr

    config = _tiny(lr=5e-3, batch_size=256)
    few = _Data(torch.zeros(8, D), torch.zeros(8, C), None)
    many = _Data(torch.zeros(1000, D), torch.zeros(1000, C), None)
    assert effective_lr(few, config) == pytest.approx(5e-3 * (8 / 256) ** 0.5)
    assert effective_lr(many, config) == 5e-3
