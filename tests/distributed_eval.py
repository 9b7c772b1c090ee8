"""Run by tests/test_distributed.py in one process and under `accelerate launch`: the unedited model's outputs and
the evaluation of a pack, in chunks of 2 and 3 so that every rank takes several rounds; rank 0 writes the files.

usage: python distributed_eval.py MODEL_DIR PACK_DIR EDITS_JSONL OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

from meg.data import load_dataset
from meg.edited_model import EditedModel
from meg.evaluation.harness import evaluate, pre_edit_outputs
from meg.methods.unedited import PlainLM
from meg.models import load_causal_lm
from meg.pack import EditPack


def main(model_dir: str, pack_dir: str, edits: str, out: str) -> None:
    model, tokenizer = load_causal_lm(model_dir)
    dataset = load_dataset(edits)
    requests = dataset.requests
    queries = [q for r in requests for q in (r.prompt, *r.paraphrases, *r.unrelated)]
    pre_edit = pre_edit_outputs(PlainLM(model, tokenizer, dataset.template), queries, Path(out) / "pre_edit.jsonl",
                                chunk_size=3, progress=False)
    edited = EditedModel(model, tokenizer, EditPack.load(pack_dir))
    evaluate(edited, requests, pre_edit, out, chunk_size=2, progress=False)


if __name__ == "__main__":
    main(*sys.argv[1:])
