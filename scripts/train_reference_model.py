"""Train the reference model (meg/assets/reference-model) from the shared data sets.

    python scripts/train_reference_model.py                   # the shipped recipe (about 45 min on 2 CPU cores)
    python scripts/train_reference_model.py --quick --out /tmp/ref   # a seconds-long smoke run
    python scripts/train_reference_model.py --measure        # training throughput only, writes nothing
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
    parser.add_argument("--data", type=Path, default=REPO / ".." / "shared" / "data", help="shared data directory")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: meg/assets/reference-model)")
    parser.add_argument("--epochs", type=int, default=None, help="override the number of epochs")
    parser.add_argument("--quick", action="store_true", help="tiny model, 400 lines, 1 epoch (smoke test)")
    parser.add_argument("--measure", type=int, default=0, metavar="STEPS", help="only measure tokens/s over STEPS steps")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from meg.models import reference_model_path
    from meg.refmodel.train import ReferenceTrainConfig, measure_throughput, prepare, train_reference_model, with_epochs

    config = with_epochs(ReferenceTrainConfig.quick() if args.quick else ReferenceTrainConfig(), args.epochs)
    if args.measure:
        prepared = prepare(config, args.data.resolve())
        speed = measure_throughput(config, prepared, args.measure)
        minutes = prepared.tokens * config.epochs / speed / 60
        print(f"{speed:.0f} tokens/s; {prepared.tokens:,} tokens/epoch; {config.epochs} epochs ~ {minutes:.1f} min")
        return
    out = args.out or reference_model_path()
    summary = train_reference_model(config, args.data.resolve(), out)
    print(f"saved {out}: final loss {summary['final_loss']:.4f}, accuracy {summary['greedy_accuracy']}")


if __name__ == "__main__":
    main()
