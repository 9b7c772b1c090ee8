"""How faithfully each generator setting reproduces the collected neurons, and what that does to the edits.

    python scripts/measure_generator.py [--n 1024] [--variants all] [--threads 1] [--out docs/results]

Edits: the first N records of counterfact-val.json (not the benchmarks' counterfact-edit.json), one batch, on the
reference model with MeG's defaults (layer, collection preset, tuned encoder). Every variant trains a generator
on (edit prompt embedding -> collected vector) and is scored on the successfully collected edits:
- relative L2: ||generated - collected|| / ||collected||, mean over edits (the paper's criterion, relative);
- Rel-AG: the edit prompt answered with the vector generated from its own embedding;
- Gen-AG (matched): the paraphrase answered with that same vector, i.e. what `condition="matched-edit"` gives
  after a correct route;
- Gen-AG (query): the paraphrase answered with the vector generated from the paraphrase's embedding (the paper);
- oracle: the collected vector itself on the paraphrase.
Collection, encoder and each finished variant are cached under --work, so an interrupted run resumes.
Writes generator-fidelity.{json,md,png} under --out.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: sleeping OpenMP threads on a shared CPU

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / ".." / "shared" / "data"
_BASE = {"preset_name": "small-gpt2"}
# name -> GeneratorConfig overrides of the "small-gpt2" preset (D = 513 on the reference model)
VARIANTS: dict[str, dict] = {
    "constant 1500": {**_BASE, "max_steps": 1500},  # the committed benchmarks' budget
    "cosine 1500": {**_BASE, "max_steps": 1500, "lr_schedule": "cosine", "warmup_steps": 100},
    "constant 1500 ema": {**_BASE, "max_steps": 1500, "ema_decay": 0.995},
    "cosine 1000": {**_BASE, "max_steps": 1000, "lr_schedule": "cosine", "warmup_steps": 100},
    "cosine 3000": {**_BASE, "max_steps": 3000, "lr_schedule": "cosine", "warmup_steps": 100},
    "cosine 1500 lr 3e-3": {**_BASE, "max_steps": 1500, "lr": 3e-3, "lr_schedule": "cosine", "warmup_steps": 100},
    # second pass: the learning rate was the bottleneck
    "constant 1500 lr 3e-3": {**_BASE, "max_steps": 1500, "lr": 3e-3},
    "cosine 1500 lr 1e-2": {**_BASE, "max_steps": 1500, "lr": 1e-2, "lr_schedule": "cosine", "warmup_steps": 100},
    "constant 1500 lr 1e-2": {**_BASE, "max_steps": 1500, "lr": 1e-2},
    "cosine 1500 lr 3e-2": {**_BASE, "max_steps": 1500, "lr": 3e-2, "lr_schedule": "cosine", "warmup_steps": 100},
    "cosine 1000 lr 1e-2": {**_BASE, "max_steps": 1000, "lr": 1e-2, "lr_schedule": "cosine", "warmup_steps": 100},
    "cosine 1500 lr 5e-3": {**_BASE, "max_steps": 1500, "lr": 5e-3, "lr_schedule": "cosine", "warmup_steps": 100},
    "cosine 1000 lr 5e-3": {**_BASE, "max_steps": 1000, "lr": 5e-3, "lr_schedule": "cosine", "warmup_steps": 100},
    # the preset (cosine 1500 lr 5e-3) against longer runs and a larger DiT, for many edits (issue 17)
    "preset": dict(_BASE),
    "preset 4000": {**_BASE, "max_steps": 4000},
    "preset 8000": {**_BASE, "max_steps": 8000},
    "small 3000": {**_BASE, "preset": "small", "max_steps": 3000},
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="shared data directory")
    parser.add_argument("--n", type=int, default=1024, help="edits (first N records of --file)")
    parser.add_argument("--file", default="counterfact/counterfact-val.json", help="edit file under --data")
    parser.add_argument("--name", default="generator-fidelity", help="results file stem")
    parser.add_argument("--variants", default="all", help=f"comma-separated names, or all: {', '.join(VARIANTS)}")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "meg-generator-fidelity")
    return parser.parse_args()


def prepare(args: argparse.Namespace):
    """Model, edits, collected vectors and embeddings (prompts and paraphrases), all cached in --work."""
    from meg.collection import collect_weights, preset_for
    from meg.config import MegConfig
    from meg.data import load_dataset
    from meg.data.defaults import default_pseudo_pairs
    from meg.encoder import tuned_encoder
    from meg.models import load_causal_lm
    from meg.pseudo_edits import split_pairs
    from meg.surgery import neuron_spec

    model, tokenizer = load_causal_lm("reference")
    dataset = load_dataset(args.data / args.file)
    requests = [r for r in dataset.requests if r.paraphrases][: args.n]
    config = MegConfig()
    spec = neuron_spec(model, config.layer)
    collection = collect_weights(model, tokenizer, spec, [r.for_editing() for r in requests], preset_for(model),
                                 dataset.template, args.work, progress=True)  # fmt: skip
    tune_pairs, _ = split_pairs(default_pseudo_pairs(), seed=config.seed)
    encoder, _ = tuned_encoder(config.encoder, tune_pairs, args.work, progress=True)
    prompts = encoder.encode([r.prompt for r in requests])  # (N, C)
    paraphrases = encoder.encode([r.paraphrases[0] for r in requests])  # (N, C)
    return model, tokenizer, dataset.template, spec, requests, collection, prompts, paraphrases


def answered(model, tokenizer, template, spec, texts, targets, weights) -> float:
    """Rel/Gen-AG (%) of `texts` with one neuron vector per row."""
    from meg.decoding import greedy_generate
    from meg.evaluation.metrics import ag_pass

    outputs = greedy_generate(model, tokenizer, [template.format(t) for t in texts], 20, spec, weights)
    return 100.0 * sum(ag_pass(o, t) for o, t in zip(outputs, targets)) / len(texts)


def score_variant(name: str, fields: dict, prep, work: Path) -> dict:
    """Train one generator variant (or read its finished row) and score it."""
    import torch

    from meg import files
    from meg.config import MegConfig
    from meg.diffusion.train import train_generator

    model, tokenizer, template, spec, requests, collection, prompts, paraphrases = prep
    config = MegConfig(generator=fields).generator
    done = work / f"variant-{len(requests)}-{name.replace(' ', '_')}.json"  # a work directory may serve several N
    if done.exists() and files.read_json(done)["config"] == config.to_dict():
        return files.read_json(done)
    ok = collection.success.nonzero().flatten()
    vectors = collection.vectors[ok]  # (K, D)
    start = time.perf_counter()
    generator, log = train_generator(vectors, prompts[ok], config, progress=False)
    seconds = time.perf_counter() - start
    seed = torch.Generator().manual_seed(config.seed + 7)
    from_prompt = generator.sample(prompts[ok], generator=seed)  # (K, D)
    from_paraphrase = generator.sample(paraphrases[ok], generator=seed)  # (K, D)
    relative = ((from_prompt - vectors).norm(dim=1) / vectors.norm(dim=1)).mean().item()
    edits = [requests[i] for i in ok.tolist()]
    targets = [r.target for r in edits]
    para = [r.paraphrases[0] for r in edits]
    row = {"name": name, "config": config.to_dict(), "train_seconds": round(seconds, 1), "steps": log.steps,
           "relative_l2": round(relative, 4),
           "rel_ag": answered(model, tokenizer, template, spec, [r.prompt for r in edits], targets, from_prompt),
           "gen_ag_matched": answered(model, tokenizer, template, spec, para, targets, from_prompt),
           "gen_ag_query": answered(model, tokenizer, template, spec, para, targets, from_paraphrase),
           "edits": len(edits)}  # fmt: skip
    files.atomic_write_json(done, row)
    return row


def main() -> None:
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from meg.results import markdown_table, write_results

    names = list(VARIANTS) if args.variants == "all" else [v.strip() for v in args.variants.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    prep = prepare(args)
    model, tokenizer, template, spec, requests, collection, _, _ = prep
    ok = collection.success.nonzero().flatten()
    edits = [requests[i] for i in ok.tolist()]
    oracle = answered(model, tokenizer, template, spec, [r.paraphrases[0] for r in edits], [r.target for r in edits],
                      collection.vectors[ok])  # fmt: skip
    rows = []
    for name in names:
        rows.append(score_variant(name, VARIANTS[name], prep, args.work))
        r = rows[-1]
        print(f"{name:24s} relL2 {r['relative_l2']:.3f} rel {r['rel_ag']:.1f} gen(matched) {r['gen_ag_matched']:.1f} "
              f"gen(query) {r['gen_ag_query']:.1f} train {r['train_seconds']:.0f}s", flush=True)
    command = f"python scripts/measure_generator.py --n {args.n} --threads {args.threads}"
    if args.file != "counterfact/counterfact-val.json" or args.name != "generator-fidelity":
        command += f" --file {args.file} --name {args.name}"
    if args.variants != "all":
        command += f" --variants '{args.variants}'"
    cells = [[r["name"], r["steps"], r["relative_l2"], r["rel_ag"], r["gen_ag_matched"], r["gen_ag_query"],
              r["train_seconds"]] for r in rows]  # fmt: skip
    table = markdown_table(["variant", "steps", "relative L2", "Rel-AG", "Gen-AG (matched)", "Gen-AG (query)",
                            "train s"], cells)  # fmt: skip
    text = (f"# Generator fidelity (reference model)\n\nCommand: `{command}`\n\n{len(edits)} of {len(requests)} "
            f"{Path(args.file).stem} edits collected (layer {spec.layer}, D = {spec.dim}); every variant is the "
            f"`small-gpt2` preset with the overrides in `scripts/measure_generator.py`, trained on the collected "
            f"edits' prompt embeddings. Oracle (collected vector on the paraphrase): Gen-AG {oracle:.1f}. "
            f"{args.threads} torch thread(s) on a shared 2-core CPU: seconds are upper bounds.\n\n{table}")

    def draw(axes) -> None:
        x = range(len(rows))
        for key, label in (("rel_ag", "Rel-AG"), ("gen_ag_matched", "Gen-AG matched"), ("gen_ag_query", "Gen-AG query")):
            axes.plot(x, [r[key] for r in rows], marker="o", label=label)
        axes.axhline(oracle, color="grey", linestyle=":", label="oracle Gen-AG")
        axes.set_xticks(list(x), [r["name"] for r in rows], rotation=20, fontsize=7)
        axes.set_ylabel("%")
        axes.legend(fontsize=7)

    data = {"setup": {"command": command, "n": args.n, "collected": len(edits), "layer": spec.layer,
                      "dim": spec.dim, "oracle_gen_ag": oracle, "threads": args.threads}, "rows": rows}  # fmt: skip
    paths = write_results(args.out, args.name, data, text, draw)
    print("wrote", ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
