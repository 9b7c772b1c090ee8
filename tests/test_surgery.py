"""Invariants of the mounted neuron (meg.surgery)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers.pytorch_utils import Conv1D

from conftest import TINY_CONFIGS, build_model
from meg.architectures import ARCHITECTURES, ArchSpec, resolve
from meg.errors import InputError, UnsupportedModelError
from meg.surgery import logits_at, mount_neuron, neuron_spec, num_layers

IDS = torch.tensor([[5, 17, 42, 99, 7, 3], [11, 12, 13, 14, 15, 16], [21, 22, 23, 24, 25, 26]])


def _logits(model, weights=None, spec=None):
    with torch.no_grad():
        if weights is None:
            return model(input_ids=IDS).logits
        with mount_neuron(model, spec, weights):
            return model(input_ids=IDS).logits


def _random_weights(spec, rows=3, seed=0, scale=0.5):
    return torch.randn(rows, spec.dim, generator=torch.Generator().manual_seed(seed)) * scale


def test_every_table_row_has_a_tiny_model():
    assert set(ARCHITECTURES) == set(TINY_CONFIGS)


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_zero_neuron_is_an_exact_noop(model_type):
    model = build_model(model_type)
    spec = neuron_spec(model, layer=1)
    base = _logits(model)
    assert torch.equal(_logits(model, spec.zeros(3), spec), base)
    # Mixed batch: zero rows stay bit-identical while the non-zero row changes.
    weights = spec.zeros(3)
    weights[1] = _random_weights(spec, rows=1)[0]
    mixed = _logits(model, weights, spec)
    assert torch.equal(mixed[[0, 2]], base[[0, 2]])
    assert not torch.allclose(mixed[1], base[1])


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_logits_at_selected_positions_equal_the_full_forward(model_type):
    model = build_model(model_type)
    spec = neuron_spec(model, layer=1)
    weights = _random_weights(spec)
    where = torch.zeros_like(IDS, dtype=torch.bool)
    where[0, 2:4], where[1, 5], where[2, 0] = True, True, True
    with torch.no_grad(), mount_neuron(model, spec, weights):
        full = model(input_ids=IDS, attention_mask=torch.ones_like(IDS)).logits[where]
        selected = logits_at(model, IDS, torch.ones_like(IDS), where)
    assert selected.shape == (4, full.shape[-1])
    assert torch.allclose(selected, full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_neuron_form_and_dim_follow_the_table(model_type):
    model = build_model(model_type)
    spec = neuron_spec(model, layer=0)
    gated = ARCHITECTURES[model_type].form == "linear"
    assert spec.dim == 2 * model.config.hidden_size + (0 if gated else 1)


def _widened_gpt2(model, spec, vector):
    """A copy of `model` whose layer-`spec.layer` FFN has one more hidden unit carrying `vector`."""
    wide = copy.deepcopy(model)
    mlp = wide.transformer.h[spec.layer].mlp
    w_in, bias, w_out = spec.split(vector[None])
    d, m = mlp.c_fc.weight.shape  # Conv1D weights are (in, out): c_fc (d, 4d), c_proj (4d, d)
    c_fc, c_proj = Conv1D(m + 1, d), Conv1D(d, m + 1)
    with torch.no_grad():
        c_fc.weight.copy_(torch.cat([mlp.c_fc.weight, w_in.T], dim=1))
        c_fc.bias.copy_(torch.cat([mlp.c_fc.bias, bias]))
        c_proj.weight.copy_(torch.cat([mlp.c_proj.weight, w_out], dim=0))
        c_proj.bias.copy_(mlp.c_proj.bias)
    mlp.c_fc, mlp.c_proj = c_fc, c_proj
    return wide.eval()


def test_gpt2_neuron_equals_a_widened_ffn():
    model = build_model("gpt2")
    spec = neuron_spec(model, layer=1)
    vector = _random_weights(spec, rows=1)[0]
    mounted = _logits(model, vector.expand(3, -1).contiguous(), spec)
    widened = _logits(_widened_gpt2(model, spec, vector))
    torch.testing.assert_close(mounted, widened, rtol=1e-5, atol=1e-5)


def test_rows_are_independent():
    model = build_model("gpt2")
    spec = neuron_spec(model, layer=0)
    weights = _random_weights(spec)
    before = _logits(model, weights, spec)
    weights[2] = _random_weights(spec, rows=1, seed=7)[0]
    after = _logits(model, weights, spec)
    torch.testing.assert_close(after[:2], before[:2], rtol=0, atol=1e-6)
    assert not torch.allclose(after[2], before[2])


def test_hooks_are_removed_after_an_exception():
    model = build_model("gpt2")
    spec = neuron_spec(model, layer=0)
    base = _logits(model)
    with pytest.raises(RuntimeError, match="boom"):
        with mount_neuron(model, spec, _random_weights(spec)):
            raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in model.modules())
    assert torch.equal(_logits(model), base)


def test_only_the_neuron_receives_gradients():
    model = build_model("gpt2")
    spec = neuron_spec(model, layer=0)
    weights = _random_weights(spec).requires_grad_(True)
    with mount_neuron(model, spec, weights):
        loss = model(input_ids=IDS).logits.logsumexp(-1).mean()
        (grad,) = torch.autograd.grad(loss, weights)
    assert grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_generation_with_expanded_batch_uses_each_prompts_row():
    model = build_model("gpt2")
    spec = neuron_spec(model, layer=0)
    weights = _random_weights(spec, rows=2)
    ids = IDS[:2]
    with torch.no_grad(), mount_neuron(model, spec, weights):
        expanded = model(input_ids=ids.repeat_interleave(2, dim=0)).logits
        direct = model(input_ids=ids).logits
    torch.testing.assert_close(expanded[::2], direct)


def test_unsupported_architecture_names_it_and_says_how_to_add_a_row():
    with pytest.raises(UnsupportedModelError, match="'opt'.*ArchSpec"):
        resolve("opt")


def test_extra_architecture_row_is_used():
    model = build_model("gpt2")
    row = ArchSpec("transformer.h", "mlp", "act", "activated", 0.5, "small-gpt2")
    spec = neuron_spec(model, extra_architectures={"gpt2": row})
    assert spec.layer == 1


@pytest.mark.parametrize("layer", [2, -3, 100])
def test_layer_out_of_range(layer):
    model = build_model("gpt2")
    with pytest.raises(InputError, match=f"layer {layer} is out of range.*2 layers"):
        neuron_spec(model, layer=layer)


def test_default_layer_and_negative_layers_refused():
    model = build_model("gpt2", n_layer=6)
    assert num_layers(model) == 6
    assert neuron_spec(model).layer == 2  # floor(6 / 3)
    with pytest.raises(InputError, match=r"layer -1 is out of range .*valid: 0\.\.5"):
        neuron_spec(model, layer=-1)  # not counted from the end: a negative layer is a mistake named at once


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.zeros(3, 10), r"shape \(B, 65\)"),
        (torch.zeros(3, 65, dtype=torch.long), "floating dtype"),
        (torch.zeros(65), r"shape \(B, 65\)"),
    ],
)
def test_bad_weights_fail_with_one_line(bad, message):
    model = build_model("gpt2")
    spec = neuron_spec(model, layer=0)
    with pytest.raises(InputError, match=message):
        with mount_neuron(model, spec, bad):
            pass


def test_batch_mismatch_is_reported():
    model = build_model("gpt2")
    spec = neuron_spec(model, layer=0)
    with pytest.raises(InputError, match="weights have 2 rows but the model ran a batch of 3"):
        with mount_neuron(model, spec, _random_weights(spec, rows=2)):
            model(input_ids=IDS)
