"""`meg bench-serve`: a load test of `meg serve` over loopback HTTP.

Two servers are started in turn as subprocesses (`python -m meg.cli.main serve`, read-only, the environment's
thread settings): the model with the pack, and the same model without a pack (the unedited model served the
same way). Each gets the same requests: for every concurrency level (1, 8, 32 clients by default), every client
sends a fixed number of completions one after another, alternating a prompt about an edited fact (a paraphrase of
an edit from the data file; without data, the edit prompts themselves) and an unrelated one (the data's
neighbourhood prompts; without data, the shipped unrelated queries). Every prompt is used once per server, so no
level is answered from the route cache another level filled. Reported per server and level: requests/s, latency
percentiles, errors (any non-200 answer or a reply without choices), the server's largest batch; per server its
peak RSS (VmHWM) and the tracebacks in its output. Derived: the batching gain (requests/s at the highest
concurrency over one client at a time) and the overhead of the edits (edited / unedited p50 latency).

This module talks to the server over HTTP only (httpx); it imports nothing of meg.serve.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meg.errors import InputError

TARGET_GAIN = 4.0  # issue 21: with 32 clients, throughput >= 4x one-at-a-time
TARGET_OVERHEAD = 1.3  # issue 21: edited / unedited p50 latency at 32 clients, aim


@dataclass
class Prompts:
    edited: list[str]
    unrelated: list[str]
    source: str


def prompt_pool(pack_requests: Sequence[Any], data_requests: Sequence[Any] | None,
                unrelated: Sequence[str]) -> Prompts:
    """Prompts about the pack's edits (the data's paraphrases of each edit, matched by case id, round robin over the
    edits so that consecutive requests ask about different facts) and unrelated ones (the data's neighbourhood
    prompts of the same records; else `unrelated`), each list without repeats."""
    if data_requests:
        by_case = {r.case_id: r for r in data_requests if r.case_id is not None}
        records = [by_case[r.case_id] for r in pack_requests if r.case_id in by_case]
        if records:
            edited = _round_robin([list(r.paraphrases) for r in records])
            neighbours = _round_robin([list(r.unrelated) for r in records])
            return Prompts(_unique(edited), _unique(neighbours), "data paraphrases / neighbourhood prompts")
    return Prompts(_unique(r.prompt for r in pack_requests), _unique(unrelated), "edit prompts / shipped unrelated")


def _round_robin(lists: list[list[str]]) -> Iterator[str]:
    for row in itertools.zip_longest(*lists):
        yield from (p for p in row if p)


def _unique(texts) -> list[str]:
    return list(dict.fromkeys(t for t in texts if t and t.strip()))


def plan_levels(prompts: Prompts, levels: Sequence[int], per_client: int, warmup: int) -> dict[str, Any]:
    """Every level's prompts per client (alternating edited / unrelated), all distinct, and the warm-up's."""
    need_edited = warmup // 2 + sum(c * ((per_client + 1) // 2) for c in levels)
    need_unrelated = warmup - warmup // 2 + sum(c * (per_client // 2) for c in levels)
    if need_edited > len(prompts.edited) or need_unrelated > len(prompts.unrelated):
        raise InputError(f"the plan needs {need_edited} prompts about edited facts and {need_unrelated} unrelated "
                         "ones; "
                         f"the pack and data give {len(prompts.edited)} and {len(prompts.unrelated)} (lower "
                         "--requests or --clients)")
    edited, unrelated = iter(prompts.edited), iter(prompts.unrelated)

    def take(count: int) -> list[str]:
        return [next(edited) if j % 2 == 0 else next(unrelated) for j in range(count)]

    return {"warmup": take(warmup), "levels": {c: [take(per_client) for _ in range(c)] for c in levels}}


# --- one server ---


@dataclass
class ServerRun:
    label: str
    process: subprocess.Popen
    url: str
    log: Path
    levels: dict[int, dict[str, Any]] = field(default_factory=dict)


def start_server(label: str, model: str, pack: Path | None, port: int, log_dir: Path,
                 extra: Sequence[str] = ()) -> ServerRun:
    command = [sys.executable, "-m", "meg.cli.main", "serve", "--model", model, "--port", str(port), "--name", "bench",
               "--read-only", *extra] + (["--pack", str(pack)] if pack is not None else [])
    log = log_dir / f"server-{label}.log"
    handle = open(log, "w")  # noqa: SIM115 (kept open for the subprocess's lifetime)
    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=dict(os.environ))
    return ServerRun(label, process, f"http://127.0.0.1:{port}", log)


def wait_until_up(run: ServerRun, seconds: float = 600) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if run.process.poll() is not None:
            raise InputError(f"the {run.label} server exited: {run.log.read_text()[-2000:]}")
        try:
            if httpx.get(run.url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise InputError(f"the {run.label} server did not answer within {seconds:g} s")


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident set size (Linux VmHWM), MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def _client(http, url: str, prompts: list[str], max_tokens: int, latencies: list[float],
                  errors: list[str]) -> None:
    for prompt in prompts:
        start = time.perf_counter()
        try:
            response = await http.post(url + "/v1/completions", json={"model": "bench", "prompt": prompt,
                                                                      "max_tokens": max_tokens, "temperature": 0})
            ok = response.status_code == 200 and response.json().get("choices")
            if not ok:
                errors.append(f"{response.status_code}: {response.text[:200]}")
        except Exception as err:  # noqa: BLE001 (every failure of a request is counted, whatever its kind)
            errors.append(f"{type(err).__name__}: {err}")
        latencies.append(time.perf_counter() - start)


async def _level(url: str, per_client: list[list[str]], max_tokens: int) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=len(per_client) + 4, max_keepalive_connections=len(per_client) + 4)
    async with httpx.AsyncClient(limits=limits, timeout=600) as http:
        start = time.perf_counter()
        await asyncio.gather(*(_client(http, url, prompts, max_tokens, latencies, errors) for prompts in per_client))
        wall = time.perf_counter() - start
    return _summary(latencies, errors, wall, len(per_client))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def _summary(latencies: list[float], errors: list[str], wall: float, clients: int) -> dict[str, Any]:
    ms = [x * 1000 for x in latencies]
    return {"clients": clients, "requests": len(latencies), "errors": len(errors), "error_samples": errors[:5],
            "seconds": round(wall, 3), "requests_per_s": len(latencies) / wall if wall else 0.0,
            "p50_ms": _percentile(ms, 50), "p95_ms": _percentile(ms, 95), "p99_ms": _percentile(ms, 99),
            "mean_ms": statistics.fmean(ms) if ms else 0.0}


def _health(url: str) -> dict[str, Any]:
    import httpx

    return httpx.get(url + "/health", timeout=10).json()


def measure_server(run: ServerRun, plan: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    """Warm up, then every level in order; the server's batch statistics and peak RSS after each."""
    wait_until_up(run)
    asyncio.run(_level(run.url, [plan["warmup"]], max_tokens))
    out: dict[str, Any] = {"levels": []}
    before = _health(run.url)["batches"]
    for clients, per_client in plan["levels"].items():
        result = asyncio.run(_level(run.url, per_client, max_tokens))
        after = _health(run.url)["batches"]
        batches, rows = after["batches"] - before["batches"], after["rows"] - before["rows"]
        result["mean_batch_rows"] = rows / batches if batches else 0.0
        result["largest_batch_so_far"] = after["largest_batch"]
        before = after
        out["levels"].append(result)
    out["peak_rss_mb"] = peak_rss_mb(run.process.pid)
    return out


def stop_server(run: ServerRun) -> int:
    """Stop the server (SIGTERM, then SIGKILL), return the number of tracebacks in its output."""
    run.process.terminate()
    try:
        run.process.wait(30)
    except subprocess.TimeoutExpired:
        run.process.kill()
        run.process.wait(30)
    return run.log.read_text(errors="replace").count("Traceback")


def run_load_test(model: str, pack: Path, prompts: Prompts, levels: Sequence[int], per_client: int,
                  max_tokens: int, port: int, warmup: int = 8, log_dir: Path | None = None,
                  server_args: Sequence[str] = ()) -> dict[str, Any]:
    plan = plan_levels(prompts, levels, per_client, warmup)
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="meg-bench-serve-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    servers: dict[str, Any] = {}
    for label, served_pack in (("edited", pack), ("unedited", None)):
        run = start_server(label, model, served_pack, port, log_dir, server_args)
        try:
            servers[label] = measure_server(run, plan, max_tokens)
        finally:
            tracebacks = stop_server(run)
        servers[label]["tracebacks"] = tracebacks
    return {"servers": servers, "derived": derived(servers), "plan": {
        "levels": list(levels), "requests_per_client": per_client, "max_tokens": max_tokens, "warmup": warmup,
        "prompts": prompts.source, "edited_prompts_available": len(prompts.edited),
        "unrelated_prompts_available": len(prompts.unrelated)}}


def derived(servers: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, result in servers.items():
        levels = result["levels"]
        first, last = levels[0], levels[-1]
        rate = first["requests_per_s"]
        out[f"{label}_batching_gain"] = last["requests_per_s"] / rate if rate else None
        out[f"{label}_errors"] = sum(level["errors"] for level in levels)
    if "edited" in servers and "unedited" in servers:
        out["p50_ratio_by_clients"] = {
            e["clients"]: e["p50_ms"] / u["p50_ms"] if u["p50_ms"] else None
            for e, u in zip(servers["edited"]["levels"], servers["unedited"]["levels"])}
    return out


# --- results ---


def markdown(results: dict[str, Any], command: str, setup: str) -> str:
    from meg.results import markdown_table

    rows = []
    for label, result in results["servers"].items():
        for level in result["levels"]:
            rows.append([label, level["clients"], level["requests"], level["errors"], level["requests_per_s"],
                         level["p50_ms"], level["p95_ms"], level["p99_ms"], level["mean_batch_rows"],
                         result["peak_rss_mb"], result["tracebacks"]])
    d = results["derived"]
    ratios = ", ".join(f"{c} clients {r:.2f}" for c, r in d.get("p50_ratio_by_clients", {}).items() if r)
    top = results["plan"]["levels"][-1]
    lines = [
        "# Serving load test", "", f"Command: `{command}`", "", f"Setup: {setup}", "",
        markdown_table(["server", "clients", "requests", "errors", "requests/s", "p50 ms", "p95 ms", "p99 ms",
                        "mean batch", "peak RSS MB", "tracebacks"], rows),
        f"- batching gain ({top} clients vs one at a time): edited {d['edited_batching_gain']:.2f}x, unedited "
        f"{d['unedited_batching_gain']:.2f}x (target >= {TARGET_GAIN:g}x)",
        f"- edited / unedited p50 latency: {ratios} (aim <= {TARGET_OVERHEAD:g} at {top})",
        f"- errors: edited {d['edited_errors']}, unedited {d['unedited_errors']}; tracebacks in the servers' output: "
        f"{sum(s['tracebacks'] for s in results['servers'].values())}",
    ]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any]):
    def draw(axes) -> None:
        for label, result in results["servers"].items():
            clients = [level["clients"] for level in result["levels"]]
            axes.plot(clients, [level["requests_per_s"] for level in result["levels"]], marker="o", label=label)
        axes.set_xscale("log", base=2)
        axes.set_xlabel("concurrent clients")
        axes.set_ylabel("requests / s")
        axes.set_title("meg serve on loopback: throughput")
        axes.legend()
        axes.grid(alpha=0.3)

    return draw
