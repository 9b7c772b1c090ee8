"""MEMIT step-1 reachability: can a residual delta at the SUBJECT'S LAST TOKEN make the model say the new target?

    python scripts/measure_step1.py --model reference --n 64
    python scripts/measure_step1.py --model reference-2 --n 100 --layers 3,4,5 --out runs/step1.json

Why: MEMIT and AlphaEdit write an edit into the weights at the subject's last token (ROME's premise: the model
recalls a fact from there). Their first step optimises a delta added to the residual stream after layer L at
that token (meg/baselines/memit.py `optimise_targets`). When a model recalls facts from elsewhere (the
subject's first token, the relation words), no delta there reaches the target and weight editing cannot work
however it spreads the update. The prompt's last token is the control: a delta there always reaches it.

For each layer and each position ("subject": the subject's last token; "prompt": the prompt's last token), the
script optimises one delta per edit (Adam, `--v-steps` at `--v-lr`, ||delta|| clamped to `--clamp` x ||h||, no
KL term: pure reachability) and counts an edit as reached when greedy decoding of the prompt with the delta
applied produces the target's tokens first. Greedy decoding produces the target exactly when the argmax at
every target position, given the target's earlier tokens, is the next target token, so this is read from one
teacher-forced forward pass. Requests: `--n` CounterFact edits sampled (seeded) from the first `--pool`
records of `--records` (the facts a pilot model was trained on), with subjects present in their prompts.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: sleeping, not spinning, OpenMP threads

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger(Path(__file__).stem)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model name (reference, reference-2), path or Hub id")
    parser.add_argument("--n", type=int, default=64, help="edits to measure")
    parser.add_argument("--records", type=Path, default=REPO / ".." / "shared" / "data" / "counterfact" / "counterfact-edit.json")
    parser.add_argument("--pool", type=int, default=None, help="sample from the first POOL records (default: all)")
    parser.add_argument("--layers", default=None, help="comma-separated layers (default: the middle third)")
    parser.add_argument("--positions", default="subject,prompt", help="subject and/or prompt")
    parser.add_argument("--v-steps", type=int, default=50)
    parser.add_argument("--v-lr", type=float, default=1.0)
    parser.add_argument("--clamp", type=float, default=4.0, help="||delta|| <= CLAMP * ||h||")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the result as JSON here")
    return parser.parse_args(argv)


def sample_requests(path: Path, n: int, pool: int | None, seed: int) -> list:
    """`n` edits with their subject in the prompt, sampled with `seed` from the first `pool` records."""
    from meg.data import load_counterfact, sample_with_subject

    requests = load_counterfact(path)[:pool]
    return [requests[i] for i in sample_with_subject(requests, n, seed)]


def middle_layers(n_layers: int) -> list[int]:
    """The middle third of the blocks (at least one), where MEMIT-style edits usually sit."""
    start, stop = n_layers // 3, max(n_layers // 3 + 1, (2 * n_layers) // 3)
    return list(range(start, stop))


def measure(model, tokenizer, requests: list, layers: list[int], positions: list[str], args) -> dict:
    """Step-1 success per position and layer, plus the model's greedy accuracy on the true answers."""
    import torch

    from meg.baselines.memit import MEMITConfig, optimise_targets, prepare_edits, step1_success
    from meg.data.templates import TEMPLATES
    from meg.decoding import greedy_generate
    from meg.prompts import answers_match
    from meg.surgery import context_length

    template = TEMPLATES["counterfact"]
    config = MEMITConfig(v_steps=args.v_steps, v_lr=args.v_lr, clamp_norm_factor=args.clamp, kl_factor=0.0,
                         loss_tokens="target", batch_size=len(requests), context_templates=0,
                         early_stop_loss=0.0)  # fmt: skip  (pure reachability: bare prompt, every step)
    prepared = prepare_edits(tokenizer, requests, template, context_length(model))
    prompt_last = prepared.batch.target_mask.int().argmax(1) - 1  # (N,) the token before the target
    generated = greedy_generate(model, tokenizer, [template.format(r.prompt) for r in requests], max_new_tokens=20)
    known = torch.tensor([answers_match(g, r.ground_truth) for g, r in zip(generated, requests)])
    result = {"n": len(requests), "known_true_answer": round(float(known.float().mean()), 4),
              "subject_is_prompt_end": int((prepared.positions == prompt_last).sum()), "rows": []}  # fmt: skip
    for position in positions:
        edits = prepared if position == "subject" else replace(prepared, positions=prompt_last)
        for layer in layers:
            start = time.perf_counter()
            z, nll = optimise_targets(model, edits, layer, config)
            hit = step1_success(model, edits, layer, z, len(requests))
            row = {"position": position, "layer": layer, "success": round(float(hit.float().mean()), 4),
                   "success_known": round(float(hit[known].float().mean()), 4) if known.any() else None,
                   "target_nll": round(float(nll.mean()), 4), "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
            log.info("%s", row)
            result["rows"].append(row)
    return result


def table(result: dict) -> str:
    """A markdown table: one row per layer, step-1 success at the subject's and the prompt's last token."""
    by = {(r["position"], r["layer"]): r for r in result["rows"]}
    layers = sorted({r["layer"] for r in result["rows"]})
    lines = ["| layer | subject last token | prompt last token |", "|---|---|---|"]
    for layer in layers:
        cells = [f"{100 * by[(p, layer)]['success']:.1f}%" if (p, layer) in by else "-" for p in ("subject", "prompt")]
        lines.append(f"| {layer} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    from meg.models import load_causal_lm
    from meg.surgery import num_layers

    torch.set_num_threads(args.threads)
    model, tokenizer = load_causal_lm(args.model)
    model.requires_grad_(False)
    layers = [int(x) for x in args.layers.split(",")] if args.layers else middle_layers(num_layers(model))
    requests = sample_requests(args.records, args.n, args.pool, args.seed)
    positions = [p for p in args.positions.split(",") if p]
    if not set(positions) <= {"subject", "prompt"}:
        raise SystemExit(f"error: --positions takes subject and/or prompt, got {args.positions!r}")
    result = {"model": args.model, "settings": {k: v for k, v in vars(args).items() if k not in ("out", "records")},
              **measure(model, tokenizer, requests, layers, positions, args)}  # fmt: skip
    result["settings"]["records"] = str(args.records)
    print(table(result))
    print(f"true answer known before the edit: {100 * result['known_true_answer']:.1f}% of {result['n']}")
    if args.out:
        from meg.files import atomic_write_json

        atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
