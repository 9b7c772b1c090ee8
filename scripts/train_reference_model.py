"""Train a reference model (meg/assets/reference-model, or reference-2) from the shared data sets.

    python scripts/train_reference_model.py                   # the shipped recipe (about 45 min on 2 CPU cores)
    python scripts/train_reference_model.py --recipe reference-2 --out DIR --work-dir DIR   # ~5 h, one thread, resumable
    python scripts/train_reference_model.py --quick --out /tmp/ref   # a seconds-long smoke run
    python scripts/train_reference_model.py --measure 50     # training throughput only, writes nothing

With a work directory (the default for reference-2: <cache>/reference-2-training) training saves its state every
`checkpoint_minutes` and after each epoch; rerunning the same command continues where it stopped.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

# Before torch is imported: OpenMP threads that sleep instead of spinning at barriers. On the shared 2-core
# machine, spinning threads halved training speed whenever another job ran (measured: 700 vs 1,400 tokens/s).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="reference", help="reference (the shipped model) or reference-2")
    parser.add_argument("--data", type=Path, default=REPO / ".." / "shared" / "data", help="shared data directory")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: the recipe's place, meg/assets/reference-model for reference)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="training checkpoints, for resuming (default: none for reference, the cache for reference-2)")
    parser.add_argument("--epochs", type=int, default=None, help="override the number of epochs")
    parser.add_argument("--quick", action="store_true", help="tiny model, 400 lines, 1 epoch (smoke test)")
    parser.add_argument("--measure", type=int, default=0, metavar="STEPS", help="only measure tokens/s over STEPS steps")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from dataclasses import replace

    from meg.files import cache_dir
    from meg.models import REFERENCE_MODEL, reference_model_path
    from meg.refmodel.train import (
        RECIPES,
        ReferenceTrainConfig,
        measure_throughput,
        prepare,
        train_reference_model,
        with_epochs,
    )

    if args.recipe not in RECIPES:
        raise SystemExit(f"error: unknown recipe {args.recipe!r}; choose one of {', '.join(RECIPES)}")
    config = RECIPES[args.recipe]
    if args.quick:
        config = replace(ReferenceTrainConfig.quick(), corpus2=config.corpus2)
    config = with_epochs(config, args.epochs)
    if args.measure:
        prepared = prepare(config, args.data.resolve())
        speed = measure_throughput(config, prepared, args.measure)
        hours = prepared.tokens * config.epochs / speed / 3600
        print(f"{speed:.0f} tokens/s; {len(prepared.lines):,} lines, {prepared.tokens:,} tokens/epoch; "
              f"{config.epochs} epochs ~ {hours:.2f} h")  # fmt: skip
        return
    out = args.out or reference_model_path(args.recipe)
    work_dir = args.work_dir
    if work_dir is None and args.recipe != REFERENCE_MODEL:
        work_dir = cache_dir() / f"{args.recipe}-training"
    summary = train_reference_model(config, args.data.resolve(), out, work_dir=work_dir,
                                    recipe=None if args.recipe == REFERENCE_MODEL else args.recipe)  # fmt: skip
    print(f"saved {out}: final loss {summary['final_loss']:.4f}, accuracy {summary['greedy_accuracy']}")


if __name__ == "__main__":
    main()
