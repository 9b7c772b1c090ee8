"""Model internals used by the weight-editing baselines and causal tracing (meg.surgery): projections, weight views,
captures, corrupted embeddings and restored hidden states."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from conftest import build_model
from meg.architectures import ARCHITECTURES, ArchSpec
from meg.errors import InputError, UnsupportedModelError
from meg.surgery import (
    add_linear_update,
    add_to_ffn_output,
    add_to_input_embeddings,
    capture_activations,
    decoder_block,
    ffn_module,
    ffn_output_projection,
    linear_weight,
    set_block_output,
)

IDS = torch.tensor([[5, 17, 42, 99, 7, 3], [11, 12, 13, 14, 15, 16]])  # (B=2, T=6)
ALL = sorted(ARCHITECTURES)


def _no_hooks(module: torch.nn.Module) -> bool:
    return not any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


@pytest.mark.parametrize("model_type", ALL)
def test_linear_view_matches_the_module_and_updates_round_trip(model_type):
    model = build_model(model_type)
    proj = ffn_output_projection(model, 1)
    weight = linear_weight(proj)  # (out, in)
    assert weight.shape[0] == model.config.hidden_size
    x = torch.randn(3, weight.shape[1], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(proj(x), F.linear(x, weight, proj.bias))
        before = proj(x)
        delta = torch.randn(weight.shape, generator=torch.Generator().manual_seed(1)) * 0.1
        add_linear_update(proj, delta)
        torch.testing.assert_close(proj(x) - before, x @ delta.T, rtol=1e-4, atol=1e-5)
        add_linear_update(proj, -delta)
        torch.testing.assert_close(proj(x), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type", ALL)
def test_capture_returns_keys_and_block_outputs_of_the_right_shape(model_type):
    model = build_model(model_type)
    m = linear_weight(ffn_output_projection(model, 0)).shape[1]
    d = model.config.hidden_size
    with torch.no_grad():
        with capture_activations(model, [0, 1], "keys") as keys, capture_activations(model, [1], "block") as blocks:
            model(input_ids=IDS)
    assert {k: tuple(v.shape) for k, v in keys.items()} == {0: (2, 6, m), 1: (2, 6, m)}
    assert tuple(blocks[1].shape) == (2, 6, d)
    assert _no_hooks(model)


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_keys_are_what_the_projection_reads(model_type):
    model = build_model(model_type)
    proj, outputs = ffn_output_projection(model, 1), {}
    handle = ffn_module(model, 1).register_forward_hook(lambda mod, args, out: outputs.setdefault("ffn", out))
    with torch.no_grad(), capture_activations(model, [1]) as keys:
        model(input_ids=IDS)
    handle.remove()
    torch.testing.assert_close(outputs["ffn"], proj(keys[1]))


def test_hooks_are_removed_when_the_block_raises():
    model = build_model("gpt2")
    with pytest.raises(RuntimeError, match="boom"):
        with capture_activations(model, [0, 1], "keys"), capture_activations(model, [0], "block"):
            raise RuntimeError("boom")
    delta = torch.zeros(2, model.config.hidden_size)
    with pytest.raises(RuntimeError, match="boom"):
        with add_to_ffn_output(model, 1, delta, torch.tensor([2, 3])):
            raise RuntimeError("boom")
    assert _no_hooks(model)


@pytest.mark.parametrize("model_type", ["gpt2", "gptj", "llama"])
def test_ffn_delta_changes_only_its_position_and_later_and_carries_gradients(model_type):
    model = build_model(model_type)
    d = model.config.hidden_size
    delta = torch.randn(2, d, generator=torch.Generator().manual_seed(0)).requires_grad_()
    positions = torch.tensor([2, 4])
    base = model(input_ids=IDS).logits.detach()
    with add_to_ffn_output(model, 0, delta, positions):
        logits = model(input_ids=IDS).logits
    assert torch.equal(logits[0, :2], base[0, :2]) and torch.equal(logits[1, :4], base[1, :4])
    assert not torch.allclose(logits[0, 2], base[0, 2])
    logits.sum().backward()
    assert delta.grad is not None and delta.grad.abs().sum() > 0
    with torch.no_grad(), add_to_ffn_output(model, 0, torch.zeros(2, d), positions):
        assert torch.equal(model(input_ids=IDS).logits, base)


def test_delta_batch_mismatch_is_one_line():
    model = build_model("gpt2")
    with pytest.raises(InputError, match="delta has 3 rows but the model ran a batch of 2"):
        with add_to_ffn_output(model, 0, torch.zeros(3, model.config.hidden_size), torch.zeros(3, dtype=torch.long)):
            model(input_ids=IDS)


def test_row_without_ffn_out_is_refused_with_a_fix():
    model = build_model("gpt2")
    row = ArchSpec("transformer.h", "mlp", "act", "activated", 0.5, "small-gpt2")  # no ffn_out
    with pytest.raises(UnsupportedModelError, match="ffn_out"):
        ffn_output_projection(model, 0, extra_architectures={"gpt2": row})


def test_update_shape_and_module_kind_are_checked():
    model = build_model("gpt2")
    with pytest.raises(InputError, match="update has shape"):
        add_linear_update(ffn_output_projection(model, 0), torch.zeros(3, 3))
    with pytest.raises(InputError, match="nn.Linear or transformers Conv1D"):
        linear_weight(decoder_block(model, 0))
    with pytest.raises(InputError, match="out of range"):
        decoder_block(model, 5)


@pytest.mark.parametrize("model_type", ALL)
def test_restoring_every_clean_state_after_a_block_undoes_the_corruption(model_type):
    model = build_model(model_type)
    noise = torch.randn(2, 6, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    noise[1] = 0  # row 1 is not corrupted
    with torch.no_grad():
        with capture_activations(model, [0], "block") as clean:
            clean_logits = model(input_ids=IDS).logits
        with add_to_input_embeddings(model, noise):
            corrupted = model(input_ids=IDS).logits
            rows, positions = torch.arange(2).repeat_interleave(6), torch.arange(6).repeat(2)
            with set_block_output(model, 0, clean[0][rows, positions], rows, positions):
                restored = model(input_ids=IDS).logits
    assert not torch.allclose(corrupted[0], clean_logits[0], atol=1e-4)
    torch.testing.assert_close(corrupted[1], clean_logits[1])  # zero noise: untouched
    torch.testing.assert_close(restored, clean_logits, rtol=1e-4, atol=1e-4)
    assert _no_hooks(model)


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_a_restored_state_changes_its_row_at_and_after_its_position_only(model_type):
    model = build_model(model_type)
    d = model.config.hidden_size
    with torch.no_grad():
        base = model(input_ids=IDS).logits
        with set_block_output(model, 0, torch.ones(1, d), torch.tensor([0]), torch.tensor([3])):
            patched = model(input_ids=IDS).logits
    torch.testing.assert_close(patched[1], base[1])
    torch.testing.assert_close(patched[0, :3], base[0, :3])
    assert not torch.allclose(patched[0, 3:], base[0, 3:])


def test_noise_of_the_wrong_shape_is_one_line():
    model = build_model("gpt2")
    with pytest.raises(InputError, match=r"noise has shape \(1, 2, 32\)"):
        with add_to_input_embeddings(model, torch.zeros(1, 2, 32)):
            model(input_ids=IDS)
    assert _no_hooks(model)
