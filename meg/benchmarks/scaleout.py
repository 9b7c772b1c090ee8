"""Neuron collection across processes: the same edits collected by 1 process and by K processes under
`accelerate launch`, timed in one run with the settings interleaved, and the vectors compared bit for bit.

Each setting (processes x torch threads per process) runs as its own launch of this module's worker on a fresh work
directory (nothing cached), so the seconds include neither model loading nor start-up: the worker times
`collect_weights` alone, from a barrier to the gathered result. Rank 0 writes the vectors and the seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from meg import files
from meg.errors import InputError
from meg.results import markdown_table, write_results

WORKER_RESULT = "result.json"
WORKER_VECTORS = "vectors.safetensors"


@dataclass(frozen=True)
class Setting:
    """One way to run the collection: `processes` processes of `threads` torch threads each."""

    processes: int
    threads: int

    @property
    def name(self) -> str:
        return f"{self.processes} process{'es' if self.processes > 1 else ''} x {self.threads} thread" + \
            ("s" if self.threads > 1 else "")

    @staticmethod
    def parse(text: str) -> Setting:
        """'PxT' -> Setting(P, T)."""
        try:
            processes, threads = (int(x) for x in text.lower().split("x"))
        except ValueError:
            raise InputError(f"--settings: {text!r} is not PROCESSESxTHREADS (e.g. 2x1)") from None
        if processes < 1 or threads < 1:
            raise InputError(f"--settings: {text!r} needs at least 1 process and 1 thread")
        return Setting(processes, threads)


def launch_command(processes: int, module_args: list[str]) -> list[str]:
    """`python -m ...` in one process, or under `accelerate launch` in `processes` (CPU processes talk over gloo)."""
    if processes == 1:
        return [sys.executable, *module_args]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
            *module_args]


def run_setting(setting: Setting, job: dict[str, Any], directory: Path) -> dict[str, Any]:
    """Launch the worker for `setting` in `directory` (new and empty); returns its result (seconds, success...)."""
    files.atomic_write_json(directory / "job.json", job)
    env = {**os.environ, "OMP_NUM_THREADS": str(setting.threads), "MKL_NUM_THREADS": str(setting.threads)}
    command = launch_command(setting.processes, ["-m", "meg.benchmarks.scaleout", str(directory / "job.json")])
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{setting.name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return files.read_json(directory / WORKER_RESULT)


def measure_scaleout(job: dict[str, Any], settings: list[Setting], repeats: int, work: Path) -> dict[str, Any]:
    """Every setting `repeats` times, interleaved (1x1, 2x1, 1x1, 2x1...); the vectors of every run compared with
    the first run's."""
    import torch

    runs, reference = [], None
    for repeat in range(repeats):
        for setting in settings:
            work.mkdir(parents=True, exist_ok=True)  # a new directory per run: nothing is reused or deleted
            directory = Path(tempfile.mkdtemp(prefix=f"{setting.processes}x{setting.threads}-{repeat}-", dir=work))
            result = run_setting(setting, job, directory)
            vectors = files.load_tensors(directory / WORKER_VECTORS)["vectors"]
            reference = vectors if reference is None else reference
            runs.append({**asdict(setting), "repeat": repeat, **result,
                         "vectors_equal_first_run": bool(torch.equal(vectors, reference))})
    return {"runs": runs, "summary": summarize(runs, settings)}


def summarize(runs: list[dict[str, Any]], settings: list[Setting]) -> list[dict[str, Any]]:
    """Per setting: the median seconds and the speed-up over the first setting (median of per-repeat ratios)."""
    import statistics

    first = settings[0]

    def seconds(s: Setting, repeat: int) -> float:
        return next(r["seconds"] for r in runs if (r["processes"], r["threads"], r["repeat"]) ==
                    (s.processes, s.threads, repeat))

    repeats = sorted({r["repeat"] for r in runs})
    rows = []
    for s in settings:
        mine = [seconds(s, k) for k in repeats]
        ratios = [seconds(first, k) / seconds(s, k) for k in repeats]
        rows.append({"setting": s.name, **asdict(s), "seconds_median": round(statistics.median(mine), 2),
                     "seconds": [round(x, 2) for x in mine], "speedup_median": round(statistics.median(ratios), 3),
                     "speedups": [round(x, 3) for x in ratios],
                     "vectors_equal": all(r["vectors_equal_first_run"] for r in runs
                                          if (r["processes"], r["threads"]) == (s.processes, s.threads))})
    return rows


def write_scaleout(out_dir: str | Path, name: str, measured: dict[str, Any], setup: dict[str, Any]) -> dict[str, Path]:
    rows = [[r["setting"], ", ".join(f"{x:.1f}" for x in r["seconds"]), r["seconds_median"],
             f"{r['speedup_median']:.2f}x", ", ".join(f"{x:.2f}" for x in r["speedups"]),
             "yes" if r["vectors_equal"] else "NO"] for r in measured["summary"]]
    table = markdown_table(["setting", "seconds (each repeat)", "median s", "speed-up (median)",
                            "speed-up per repeat", "vectors identical"], rows)
    header = (f"# Neuron collection on several processes\n\nCommand: `{setup['command']}`\n\n{setup['description']}\n\n"
              "Seconds: `collect_weights` alone (model loaded, processes started), fresh work directory each run; "
              "settings interleaved within each repeat. Speed-up: the first setting's seconds / this setting's, "
              "per repeat. Vectors identical: bit-equal to the first run's.\n\n")

    def draw(axes) -> None:
        summary = measured["summary"]
        axes.bar([r["setting"] for r in summary], [r["speedup_median"] for r in summary])
        axes.set_ylabel(f"speed-up over {summary[0]['setting']}")
        axes.set_title("neuron collection: processes and threads")

    return write_results(out_dir, name, {"setup": setup, **measured}, header + table, draw)


def _worker(job_file: str) -> None:
    """One launch: load the model and edits, collect them (timed between barriers), rank 0 writes the result."""
    from meg.collection import collect_weights, preset_for
    from meg.data import load_dataset
    from meg.distributed import ranks
    from meg.models import load_causal_lm
    from meg.surgery import neuron_spec

    job = json.loads(Path(job_file).read_text())
    directory, group = Path(job_file).parent, ranks()
    dataset = load_dataset(job["data"]) if job["data"] else None
    if dataset is None:
        from meg.data.defaults import demo_dataset

        dataset = demo_dataset()
    requests = dataset.requests[: job["n"]]
    model, tokenizer = load_causal_lm(job["model"], device=group.device(job["device"]))
    spec = neuron_spec(model, job.get("layer"))
    group.barrier()
    start = time.perf_counter()
    result = collect_weights(model, tokenizer, spec, requests, preset_for(model), dataset.template,
                             work=directory / "work", progress=False)
    group.barrier()
    seconds = time.perf_counter() - start
    if group.main:
        files.save_tensors(directory / WORKER_VECTORS, {"vectors": result.vectors.contiguous()})
        files.atomic_write_json(directory / WORKER_RESULT, {"seconds": round(seconds, 3), "edits": len(requests),
                                                            "success_rate": result.success_rate,
                                                            "world": group.world})


if __name__ == "__main__":
    _worker(sys.argv[1])
