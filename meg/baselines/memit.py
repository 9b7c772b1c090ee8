"""MEMIT (Meng et al. 2023, "Mass-Editing Memory in a Transformer"), one batch of edits.

For edit i with subject s_i (paper, Sec. 4.3 and Alg. 1):
1. Target. At the subject's last token, the residual stream after the last layer L of the range, h_i^L, gets a
   vector delta_i optimised (Adam, `v_steps` steps at `v_lr`) so the model predicts the target (Eq. 16):
       loss_i = NLL(target | prompt) + kl_factor * KL(p(. | "{s} is a", delta) || p(. | "{s} is a"))
                + v_weight_decay * ||delta_i|| / ||h_i^L||^2,   ||delta_i|| clamped to clamp_norm_factor * ||h_i^L||.
   z_i = h_i^L + delta_i. (We add delta_i to layer L's FFN output, which the residual stream sums unchanged.)
2. Spread. For each layer l of the range, in order: keys K_l (m, N) = inputs of the FFN output projection at
   the subject's last token (with the earlier layers already updated); residual R_l = (z - h^L) / (L - l + 1)
   (d, N); the least-squares update of Eq. 14,
       Delta_l = R_l K_l^T (lambda C_l + K_l K_l^T)^{-1},     lambda = mom2_update_weight,
   with C_l = E[k k^T] over a text corpus (covariance.py); W_l += Delta_l.
As the reference code (kmeng01/memit, compute_z / compute_ks), by default:
- context templates: the NLL is averaged over the bare prompt and `context_templates` copies of it preceded by a
  text the model itself samples (top-5, `context_tokens` tokens, from "The", "Therefore", "Because", "I", "You",
  seeded) and ". "; the key of an edit is the mean of its bare key and of the mean of its prefixed keys (the
  reference averages per context type). The delta is added at the subject's last token in every copy.
- early stop: an edit's delta stops changing once its loss is below `early_stop_loss` (the reference's 5e-2).
  Rows are optimised together; Adam treats each row independently, so the batch equals per-edit runs.
- the KL term reads the next-token distribution at the subject's last token of "{s} is a" (`kl_at="subject"`).
The "reference" presets keep what their sweep measured (no contexts, no early stop, KL read after "is a").
When an edit has no subject, or its subject is not in the prompt, the prompt's last token is used instead (logged
and counted in `stats()["subject_fallbacks"]`); such edits get no KL term.

Step-1 success (`stats()["step1_success"]`): the share of edits whose optimised residual alone, added at the last
edited layer before any weight changes, makes greedy decoding of the bare prompt produce the target. When it is
low, the model does not recall facts at the subject's last token and no spreading of the update can help.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from meg import files
from meg.architectures import check_layer
from meg.baselines.base import (
    BaselineConfig,
    WeightEditedLM,
    chunks,
    editable_copy,
    resolve_config,
    right_padded,
    select_rows,
    target_nll,
)
from meg.baselines.covariance import corpus_for_model, second_moments
from meg.decoding import sample_top_k
from meg.errors import InputError
from meg.files import digest
from meg.methods.base import EditContext
from meg.models import fingerprint
from meg.prompts import AnswerBatch, LossTokens, PromptTemplate, encode_answers
from meg.requests import EditRequest
from meg.settings import Rules
from meg.surgery import (
    CaptureSite,
    add_linear_update,
    add_to_ffn_output,
    capture_activations,
    context_length,
    ffn_output_projection,
    logits_at,
    neuron_spec,
    num_layers,
)

log = logging.getLogger(__name__)
DEFAULT_SPAN = 3  # layers=None: this many layers ending at the model's default MeG layer
KL_PROMPT = "{subject} is a"  # MEMIT's "essence" prompt
CONTEXT_STARTS = ("The", "Therefore", "Because", "I", "You")  # the reference's context-template seeds


@dataclass(frozen=True)
class LocateConfig(BaselineConfig):
    """Settings MEMIT and AlphaEdit share; defaults are MEMIT's published GPT-J-6B hyperparameters."""

    layers: tuple[int, ...] | None = None  # edited layers; None: DEFAULT_SPAN layers ending at the MeG layer
    v_lr: float = 0.5
    v_steps: int = 25
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 0.75
    kl_factor: float = 0.0625  # 0 disables the KL term (and its extra forward pass)
    loss_tokens: LossTokens = "target"  # "target" (paper); "answer" adds "." + EOS to the NLL term
    context_templates: int = 5  # prefixed copies of each prompt (reference: 5); 0 = the bare prompt only
    context_tokens: int = 10  # length of a sampled prefix in tokens (reference: 10)
    early_stop_loss: float = 5e-2  # an edit's delta stops once its loss is below this (reference: 5e-2); 0 = never
    kl_at: Literal["subject", "end"] = "subject"  # KL read at the subject's last token (reference) or after "is a"
    data_dir: str | None = None  # shared data dir: statistics over the reference model's training text
    stats_dir: str | None = None  # covariance cache; None = covariance.default_stats_dir()
    mom2_n_texts: int | None = 10000  # corpus lines sampled for C (MEMIT: 100,000 Wikipedia samples); None = all
    batch_size: int = 64  # edits per forward
    seed: int = 0  # corpus sample

    def rules(self) -> Rules:
        return {
            "layers": (self.layers is None or (len(self.layers) > 0 and min(self.layers) >= 0),
                       "a non-empty list of layers >= 0, or null"),
            "v_lr": (self.v_lr > 0, "> 0"),
            "v_steps": (self.v_steps >= 1, ">= 1"),
            "v_weight_decay": (self.v_weight_decay >= 0, ">= 0"),
            "clamp_norm_factor": (self.clamp_norm_factor > 0, "> 0"),
            "kl_factor": (self.kl_factor >= 0, ">= 0"),
            "context_templates": (self.context_templates >= 0, ">= 0"),
            "context_tokens": (self.context_tokens >= 2, ">= 2"),
            "early_stop_loss": (self.early_stop_loss >= 0, ">= 0"),
            "mom2_n_texts": (self.mom2_n_texts is None or self.mom2_n_texts >= 1, ">= 1 or null"),
            "batch_size": (self.batch_size >= 1, ">= 1"),
        }


@dataclass(frozen=True)
class MEMITConfig(LocateConfig):
    """MEMIT settings: the shared ones plus lambda of Eq. 14."""

    mom2_update_weight: float = 15000.0

    def rules(self) -> Rules:
        return {**super().rules(), "mom2_update_weight": (self.mom2_update_weight > 0, "> 0")}


# Best Score of the sweep on the reference model at the benchmarks' size (1,024 counterfact-val edits, one batch):
# docs/results/baseline-sweep-1024.md, `python scripts/sweep_baselines.py --n 1024 --grid n1024 --threads 1`.
# Score 21.6 (Rel 23, Gen 12.5, Loc 53 AG). Its residual stream has norm ~240, so the paper's v_lr 0.5 / clamp 0.75
# cannot reach the targets (docs/results/baseline-sweep.md, 64 edits); lambda grows with the number of edits
# (K K^T does): 1,000 was best at 64 edits, 3,000 at 1,024. The sweep's statistics were the model's training text:
# pass "data_dir" (the shared data directory) with the preset, or the shipped asset texts are used instead.
# The sweep ran before the context templates, the early stop and the KL read at the subject token: the preset keeps
# what it measured.
AS_SWEPT_ON_REFERENCE = {"context_templates": 0, "early_stop_loss": 0.0, "kl_at": "end"}
# reference-2 (10 layers, d 256, 1,024 key dimensions): 1,024 counterfact-val edits with the reference code's step 1,
# docs/results/baseline-sweep-reference-2-1024.md (`python scripts/sweep_baselines.py --model reference-2 --n 1024
# --grid r2-1024 --threads 1`): layers 1-3, v_lr 2 / clamp 4 (single edits: docs/results/single-edits-reference-2.md),
# lambda 1,000: Score 32.8 (Rel 36, Gen 28, Loc 33 AG; step 1 reaches 97% of the targets). lambda 300 (the single-edit
# choice) breaks locality at this N (Loc 15), 3,000 trades Rel for Loc (30.1).
PRESETS: dict[str, MEMITConfig] = {
    "reference": MEMITConfig(layers=(0, 1, 2), v_lr=2.0, clamp_norm_factor=4.0, mom2_update_weight=3000.0,
                             **AS_SWEPT_ON_REFERENCE),
    "reference-2": MEMITConfig(layers=(1, 2, 3), v_lr=2.0, clamp_norm_factor=4.0, mom2_update_weight=1000.0),
}


@dataclass
class PreparedEdits:
    """The edit batch and where each edit's key sits. Each edit has `per_edit` rows (its bare prompt first, then
    its prefixed copies), edit-major: row i * per_edit + c. Shapes: batch (N * per_edit, T); positions
    (N * per_edit,); kl_* (N,)."""

    batch: AnswerBatch  # prefix + template(prompt) + " " + target, right-padded
    positions: torch.Tensor  # subject's last token (or the prompt's last token: a fallback)
    kl_ids: torch.Tensor  # (N, T') "{subject} is a", right-padded
    kl_mask: torch.Tensor  # (N, T')
    kl_positions: torch.Tensor  # subject's last token in the KL prompt
    kl_last: torch.Tensor  # last real token of the KL prompt
    kl_weight: torch.Tensor  # (N,) 1.0, or 0.0 for fallback rows
    fallbacks: int
    per_edit: int = 1

    def bare(self) -> PreparedEdits:
        """The edits with their bare prompts only (per_edit 1)."""
        if self.per_edit == 1:
            return self
        rows = slice(0, None, self.per_edit)
        return replace(self, batch=select_rows(self.batch, rows), positions=self.positions[rows], per_edit=1)

    def __len__(self) -> int:
        """The number of edits (not batch rows: each edit has `per_edit` of those)."""
        return len(self.kl_weight)

    def rows_of(self, edits: slice) -> slice:
        """The batch rows of a slice of edits."""
        return slice(edits.start * self.per_edit, edits.stop * self.per_edit)


def edit_layers(model: nn.Module, layers: Sequence[int] | None, context_layer: int | None) -> list[int]:
    """The sorted layer range to edit (see LocateConfig.layers)."""
    n = num_layers(model)
    if layers:
        return sorted({check_layer(layer, n) for layer in layers})
    last = neuron_spec(model, context_layer).layer
    return list(range(max(0, last - DEFAULT_SPAN + 1), last + 1))


def _warn_if_final_block(model: nn.Module, layers: list[int]) -> None:
    if layers[-1] == num_layers(model) - 1:
        log.warning("the last edited layer (%d) is the model's final block: a delta at the subject's last token "
                    "cannot reach the later tokens through attention; end the range earlier", layers[-1])  # fmt: skip


def subject_end(template: PromptTemplate, request: EditRequest) -> int | None:
    """Character index just past the subject inside `template.format(prompt)`, or None when absent."""
    at = request.prompt.find(request.subject) if request.subject else -1
    if at < 0:
        return None
    return template.text.index("{prompt}") + at + len(request.subject)  # type: ignore[arg-type]


def _last_token(tokenizer: PreTrainedTokenizerBase, text: str, end: int | None) -> int:
    """Index of the token holding character end-1 of `text` (MEMIT: len(tokenise(prefix + subject)) - 1)."""
    return len(tokenizer(text if end is None else text[:end])["input_ids"]) - 1


def context_prefixes(model: nn.Module, tokenizer: PreTrainedTokenizerBase, config: LocateConfig) -> list[str]:
    """"" (the bare prompt) and `config.context_templates` texts the model samples, each + ". " (the reference's
    `get_context_templates`: top-5 sampling, `context_tokens` tokens, starts cycled over CONTEXT_STARTS)."""
    if not config.context_templates:
        return [""]
    starts = [CONTEXT_STARTS[i % len(CONTEXT_STARTS)] for i in range(config.context_templates)]
    texts = sample_top_k(model, tokenizer, starts, config.context_tokens, top_k=5, seed=config.seed)
    return ["", *(t.replace("{", " ").replace("}", " ") + ". " for t in texts)]


def prepare_edits(tokenizer: PreTrainedTokenizerBase, requests: Sequence[EditRequest], template: PromptTemplate,
                  max_length: int | None, suffix: bool = False, prefixes: Sequence[str] = ("",)) -> PreparedEdits:  # fmt: skip
    """Tokenise the edits (exactly as PlainLM templates them), each once per prefix (`context_prefixes`; the
    first must be "", the bare prompt), and locate each subject's last token."""
    if not prefixes or prefixes[0] != "":
        raise InputError("the first context prefix must be '' (the bare prompt)")
    texts = [template.format(r.prompt) for r in requests]
    ends = [subject_end(template, r) for r in requests]
    rows = [prefix + t for t in texts for prefix in prefixes]  # edit-major
    targets = [r.target for r in requests for _ in prefixes]
    batch = encode_answers(tokenizer, rows, targets, suffix=suffix, max_length=max_length)
    target_start = batch.target_mask.int().argmax(1)  # (rows,) first target token
    positions = torch.tensor([_last_token(tokenizer, prefix + t, None if e is None else len(prefix) + e)
                              for t, e in zip(texts, ends) for prefix in prefixes])  # fmt: skip
    positions = torch.minimum(positions, target_start - 1)
    fallbacks = sum(e is None for e in ends)
    if fallbacks:
        log.warning("%d of %d edits have no subject in their prompt; their key is the prompt's last token",
                    fallbacks, len(requests))  # fmt: skip
    subjects = [r.subject if e is not None else r.prompt for r, e in zip(requests, ends)]
    kl_ids, kl_mask = right_padded(tokenizer, [KL_PROMPT.format(subject=s) for s in subjects], max_length)
    kl_positions = torch.tensor([_last_token(tokenizer, s, None) for s in subjects])
    kl_weight = torch.tensor([0.0 if e is None else 1.0 for e in ends])
    return PreparedEdits(batch, positions, kl_ids, kl_mask, kl_positions, kl_mask.sum(1) - 1, kl_weight, fallbacks,
                         len(prefixes))  # fmt: skip


@torch.no_grad()
def gather_at(model: nn.Module, batch: AnswerBatch, positions: torch.Tensor, layer: int, site: CaptureSite,
              batch_size: int) -> torch.Tensor:  # fmt: skip
    """Keys ("keys", (N, m)) or the residual after block `layer` ("block", (N, d)) at each row's position."""
    out = []
    with capture_activations(model, [layer], site) as captured:
        for rows in chunks(len(positions), batch_size):
            part = select_rows(batch, rows)
            model(input_ids=part.input_ids, attention_mask=part.attention_mask)
            out.append(captured[layer][torch.arange(part.input_ids.shape[0]), positions[rows]])
    return torch.cat(out)


def _kl_logprobs(model: nn.Module, edits: PreparedEdits, rows: slice | torch.Tensor, layer: int,
                 delta: torch.Tensor | None, kl_at: str):  # fmt: skip
    """log p(next token) (n, V) of "{s} is a" read at the subject's last token (kl_at "subject") or after "is a"
    ("end"), with `delta` added at the subject's last token when given; `rows`: the edits (a slice or indices)."""
    ids, mask, positions = edits.kl_ids[rows], edits.kl_mask[rows], edits.kl_positions[rows]
    read = (edits.kl_positions if kl_at == "subject" else edits.kl_last)[rows]
    where = torch.zeros_like(mask, dtype=torch.bool)
    where[torch.arange(len(read)), read] = True  # one row each, in row order
    mount = nullcontext() if delta is None else add_to_ffn_output(model, layer, delta, positions)
    with mount:
        logits = logits_at(model, ids, mask, where)  # (n, V)
    return F.log_softmax(logits.float(), dim=-1)


def _target_loss(model: nn.Module, part: AnswerBatch, positions: torch.Tensor, layer: int, delta: torch.Tensor,
                 tokens: LossTokens) -> torch.Tensor:  # fmt: skip
    """Per row of `part`: the target NLL with `delta` added at `positions` after block `layer`. -> (n,)"""
    with add_to_ffn_output(model, layer, delta, positions):
        return target_nll(model, part, tokens)


def _optimise_rows(model: nn.Module, edits: PreparedEdits, rows: slice, layer: int, config: LocateConfig):
    """z = h + delta for the edits in `rows` (Eq. 16 with the KL and weight-decay terms, the NLL averaged over each
    edit's context copies, an edit frozen once its loss is below `early_stop_loss`); -> (z (n, d), nll (n,)).
    Rows never interact, so each step runs the edits not yet frozen only."""
    per_edit, batch_rows = edits.per_edit, edits.rows_of(rows)
    h = gather_at(model, select_rows(edits.batch, batch_rows), edits.positions[batch_rows], layer, "block",
                  batch_rows.stop - batch_rows.start)[::per_edit]  # (n, d) bare prompts
    use_kl = config.kl_factor > 0 and bool(edits.kl_weight[rows].any())
    with torch.no_grad():
        kl_init = _kl_logprobs(model, edits, rows, layer, None, config.kl_at) if use_kl else None
    delta = torch.zeros_like(h, requires_grad=True)  # (n, d)
    optimizer = torch.optim.Adam([delta], lr=config.v_lr)
    max_norm = config.clamp_norm_factor * h.norm(dim=1, keepdim=True)  # (n, 1)
    done = torch.zeros(h.shape[0], dtype=torch.bool, device=h.device)
    final_nll = torch.zeros(h.shape[0], device=h.device)
    for _ in range(config.v_steps):
        active = (~done).nonzero()[:, 0]  # (a,) edits of this chunk still optimised
        loss, nll = _active_loss(model, edits, rows.start, active, layer, delta, h, kl_init, config)
        final_nll[active] = nll.detach()
        done[active] = loss.detach() < config.early_stop_loss
        if bool(done.all()):
            break
        kept = delta.detach().clone()
        (delta.grad,) = torch.autograd.grad(loss.sum(), delta)  # delta only: no gradient lands on the model
        optimizer.step()
        with torch.no_grad():  # project back into the ball ||delta|| <= clamp_norm_factor * ||h||; frozen rows stay
            delta.mul_(torch.clamp(max_norm / delta.norm(dim=1, keepdim=True).clamp_min(1e-12), max=1.0))
            delta[done] = kept[done]
    return h + delta.detach(), final_nll


def _active_loss(model: nn.Module, edits: PreparedEdits, first: int, local: torch.Tensor, layer: int,
                 delta: torch.Tensor, h: torch.Tensor, kl_init: torch.Tensor | None, config: LocateConfig):
    """Step 1's loss and target NLL, (a,) each, of the chunk's edits `local` (indices into the chunk, which starts
    at edit `first`; `delta`, `h`, `kl_init` hold the whole chunk)."""
    per_edit, at = edits.per_edit, first + local  # at: the edits' indices in the batch
    batch_rows = (at[:, None] * per_edit + torch.arange(per_edit, device=at.device)).flatten()
    step = delta[local]  # (a, d); the gradient reaches delta's active rows only
    each = _target_loss(model, select_rows(edits.batch, batch_rows), edits.positions[batch_rows], layer,
                        step.repeat_interleave(per_edit, 0), config.loss_tokens)  # fmt: skip
    nll = each.view(-1, per_edit).mean(1)  # (a,)
    loss = nll + config.v_weight_decay * step.norm(dim=1) / h[local].norm(dim=1) ** 2
    if kl_init is not None:
        current = _kl_logprobs(model, edits, at, layer, step, config.kl_at)
        kl = (current.exp() * (current - kl_init[local])).sum(-1)  # KL(current || initial), (a,)
        loss = loss + config.kl_factor * edits.kl_weight[at] * kl
    return loss, nll


# The fields that decide step 1's result; the spread settings (lambda, null space, other layers) do not.
_TARGET_FIELDS = ("v_lr", "v_steps", "v_weight_decay", "clamp_norm_factor", "kl_factor", "loss_tokens", "batch_size",
                  "early_stop_loss", "kl_at")  # the context prefixes are in the hashed input ids


def optimise_targets(model: nn.Module, edits: PreparedEdits, layer: int, config: LocateConfig,
                     work_dir: Path | None = None, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Step 1 for every edit, `batch_size` edits at a time: (z (N, d), final target NLL (N,)). With `work_dir`, each
    chunk's targets are stored there under a hash of its inputs (rows never interact, so a chunk's targets depend on
    its own rows only): MEMIT and AlphaEdit settings that differ only in how the targets are spread (a sweep, or
    both methods in one bench) compute them once, and an interrupted step 1 resumes at its first unfinished chunk.
    With `progress`, a bar counts the edits done (10,000 edits take ~1.5 h on one CPU thread)."""
    job = digest(fingerprint(model), layer, {f: getattr(config, f) for f in _TARGET_FIELDS}) if work_dir else None
    parts = []
    with tqdm(total=len(edits), desc="MEMIT step 1 (targets)", unit="edit", disable=not progress) as bar:
        for rows in chunks(len(edits), config.batch_size):
            parts.append(_cached_rows(model, edits, rows, layer, config, Path(work_dir), job) if work_dir
                         else _optimise_rows(model, edits, rows, layer, config))
            bar.update(rows.stop - rows.start)
    return torch.cat([z for z, _ in parts]), torch.cat([nll for _, nll in parts])


def _cached_rows(model: nn.Module, edits: PreparedEdits, rows: slice, layer: int, config: LocateConfig,
                 work_dir: Path, job: str) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """`_optimise_rows` for one chunk, from `work_dir` when the same job optimised the same rows before."""
    batch_rows = edits.rows_of(rows)
    key = digest(job, edits.batch.input_ids[batch_rows], edits.batch.target_mask[batch_rows],
                 edits.positions[batch_rows], edits.kl_ids[rows], edits.kl_weight[rows])
    path = work_dir / files.LOCATE_TARGETS.format(key=key)
    if path.is_file():
        saved = files.load_tensors(path)
        return saved["z"].to(edits.positions.device), saved["nll"].to(edits.positions.device)
    z, nll = _optimise_rows(model, edits, rows, layer, config)
    files.save_tensors(path, {"z": z.cpu().contiguous(), "nll": nll.cpu().contiguous()})
    return z, nll


UpdateFn = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]
"""(layer, keys K (m, N), residual R (d, N)) -> update Delta (d, m), all float64."""


def edit_keys(model: nn.Module, edits: PreparedEdits, layer: int, batch_size: int) -> torch.Tensor:
    """K (N, m): each edit's key at `layer`; with context copies, the mean of its bare key and of the mean of its
    prefixed keys (the reference's compute_ks averages per context type)."""
    keys = gather_at(model, edits.batch, edits.positions, layer, "keys", batch_size * edits.per_edit)
    keys = keys.view(-1, edits.per_edit, keys.shape[-1])  # (N, per_edit, m)
    return keys[:, 0] if edits.per_edit == 1 else (keys[:, 0] + keys[:, 1:].mean(1)) / 2


def spread_update(model: nn.Module, edits: PreparedEdits, z: torch.Tensor, layers: list[int], update: UpdateFn,
                  batch_size: int) -> dict[int, float]:  # fmt: skip
    """Step 2: write z into the layers one by one (MEMIT Alg. 1); returns ||Delta_l|| (Frobenius) per layer."""
    norms, bare = {}, edits.bare()
    for i, layer in enumerate(layers):  # keys of layer l are read with layers < l already edited
        keys = edit_keys(model, edits, layer, batch_size).double().T  # (m, N)
        current = gather_at(model, bare.batch, bare.positions, layers[-1], "block", batch_size).double()  # (N, d)
        resid = (z.double() - current).T / (len(layers) - i)  # (d, N): spread evenly over the remaining layers
        delta = update(layer, keys, resid)  # (d, m)
        add_linear_update(ffn_output_projection(model, layer), delta)
        norms[layer] = float(delta.norm())
    return norms


@torch.no_grad()
def step1_success(model: nn.Module, edits: PreparedEdits, layer: int, z: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N,) bool: with z - h added after block `layer` at each edit's key position, greedy decoding of the bare
    prompt produces the target (the argmax at every target position, given the earlier target tokens, is the
    next target token: one teacher-forced pass)."""
    bare = edits.bare()
    h = gather_at(model, bare.batch, bare.positions, layer, "block", batch_size)
    hits = []
    for rows in chunks(len(bare.positions), batch_size):
        part = select_rows(bare.batch, rows)
        with add_to_ffn_output(model, layer, (z[rows] - h[rows]).to(h.dtype), bare.positions[rows]):
            logits = model(input_ids=part.input_ids, attention_mask=part.attention_mask).logits
        hit = (logits[:, :-1].argmax(-1) == part.input_ids[:, 1:]) | ~part.target_mask[:, 1:]
        hits.append(hit.all(1))
    return torch.cat(hits)


def memit_update(keys: torch.Tensor, resid: torch.Tensor, cov: torch.Tensor, weight: float) -> torch.Tensor:
    """MEMIT Eq. 14: Delta = R K^T (lambda C + K K^T)^{-1}. keys (m, N), resid (d, N), cov (m, m) -> (d, m)."""
    adjusted = torch.linalg.solve(weight * cov + keys @ keys.T, keys)  # (m, N)
    return resid @ adjusted.T  # (d, m)


def key_statistics(model: nn.Module, tokenizer: PreTrainedTokenizerBase, layers: list[int], config: LocateConfig,
                   progress: bool) -> dict[int, torch.Tensor]:  # fmt: skip
    """C_l = E[k k^T] (m, m) float64 for each layer, from the covariance cache or one pass over the corpus."""
    texts = corpus_for_model(config.data_dir, config.mom2_n_texts, config.seed)
    return second_moments(model, tokenizer, layers, texts, config.stats_dir, progress=progress)


def statistics_for(model: nn.Module, tokenizer: PreTrainedTokenizerBase, context: EditContext,
                   config: LocateConfig) -> dict[int, torch.Tensor]:  # fmt: skip
    """C_l of every layer `config` edits on `model`: what `locate_and_edit` uses. Sequential editing computes them
    once on the unedited model and passes them to every batch (`statistics=`), as the published code keeps its
    covariance in memory after the first batch."""
    layers = edit_layers(model, config.layers, context.layer)
    return key_statistics(model, tokenizer, layers, config, context.progress)


def locate_and_edit(model: nn.Module, tokenizer: PreTrainedTokenizerBase, requests: Sequence[EditRequest],
                    context: EditContext, config: LocateConfig, make_update: Callable[[dict], UpdateFn],
                    statistics: dict[int, torch.Tensor] | None = None):  # fmt: skip
    """MEMIT's pipeline on a copy of `model`; `make_update(statistics)` supplies the per-layer solve.
    `statistics`: C_l per edited layer to use (sequential editing: the base model's, `statistics_for`); None =
    those of `model`. Returns (edited copy, info dict)."""
    start = time.perf_counter()
    if not requests:
        raise InputError("no edit requests given")
    edited = editable_copy(model)
    layers = edit_layers(edited, config.layers, context.layer)
    _warn_if_final_block(edited, layers)
    device = next(edited.parameters()).device
    suffix = config.loss_tokens == "answer"
    prefixes = context_prefixes(edited, tokenizer, config)
    edits = prepare_edits(tokenizer, requests, context.template, context_length(edited), suffix, prefixes)
    edits = _to_device(edits, device)
    if statistics is None:
        statistics = key_statistics(edited, tokenizer, layers, config, context.progress)  # before any edit
    z, nll = optimise_targets(edited, edits, layers[-1], config, context.work_dir, context.progress)
    reached = step1_success(edited, edits, layers[-1], z, config.batch_size)
    norms = spread_update(edited, edits, z, layers, make_update(statistics), config.batch_size)
    info = {"config": config.to_dict(), "layers": layers, "edits": len(requests), "subject_fallbacks": edits.fallbacks,
            "target_nll_mean": float(nll.mean()), "step1_success": float(reached.float().mean()),
            "context_prefixes": prefixes[1:], "update_norms": norms,
            "edit_seconds": time.perf_counter() - start}  # fmt: skip
    return edited, info


def _to_device(edits: PreparedEdits, device: torch.device) -> PreparedEdits:
    tensors = {k: v.to(device) for k, v in vars(edits).items() if isinstance(v, torch.Tensor)}
    return PreparedEdits(**{**vars(edits), **tensors, "batch": edits.batch.to(device)})


def apply_memit(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, requests: Sequence[EditRequest], context: EditContext,
    statistics: dict[int, torch.Tensor] | None = None,
) -> WeightEditedLM:
    """MEMIT on a copy of `model`, all edits in one batch; returns a PlainLM around the copy. Sequential MEMIT
    (each batch applied to the previous batch's model) passes the base model's `statistics` (`statistics_for`)."""
    config = resolve_config(MEMITConfig, context.config, PRESETS)

    def make_update(statistics: dict[int, torch.Tensor]) -> UpdateFn:
        return lambda layer, keys, resid: memit_update(keys, resid, statistics[layer], config.mom2_update_weight)

    edited, info = locate_and_edit(model, tokenizer, requests, context, config, make_update, statistics)
    return WeightEditedLM(edited, tokenizer, context.template, {"method": "memit", **info})
