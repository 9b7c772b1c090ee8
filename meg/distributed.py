"""Several processes on one job (`accelerate launch`): which process this is, its share of the work, and the few
collective steps the stages need.

Started by `accelerate launch --multi_gpu --num_processes K -m meg.cli.main ...` (or torchrun; on a machine without a
GPU the same flag starts K CPU processes that talk over gloo), every process runs the same command; the
launcher's environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR...) is read through accelerate's `PartialState`,
which sets up torch.distributed (gloo on CPU, NCCL on CUDA). Without a launcher the job is one process
(`SINGLE`) and nothing here imports accelerate or touches torch.distributed. How the stages divide the work:

- collection: chunks of edits round-robin over the ranks (chunk i on rank i mod K), gathered in edit order;
- generator: one global batch per step, drawn alike on every rank; each rank computes the loss of its rows and
  DistributedDataParallel all-reduces the gradients (so a step equals the one-process step up to summation order);
- evaluation and the unedited model's outputs: chunks round-robin, gathered in order;
- encoder tuning, the router and every file but the collection chunks: rank 0, the others receive its result.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from meg.errors import InputError

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: `rank` of `world` processes, `local_rank` on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes packs, results and caches."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def mine(self, count: int) -> range:
        """This rank's items of `count` (item i belongs to rank i mod world)."""
        return range(self.rank, count, self.world)

    def gather(self, items: dict[int, T], count: int) -> list[T]:
        """Every rank's {index: item} (this rank's are `items`) -> the `count` items in index order, on every rank."""
        if not self.distributed:
            return [items[i] for i in range(count)]
        from accelerate.utils import gather_object

        merged: dict[int, T] = {}
        for part in gather_object([items]):
            merged.update(part)
        missing = [i for i in range(count) if i not in merged]
        if missing:
            raise RuntimeError(f"rank gather: items {missing[:5]} came back from no process")
        return [merged[i] for i in range(count)]

    def in_rounds(self, count: int, compute: Callable[[int], T]) -> Iterator[list[T]]:
        """`compute(i)` for i in 0..count-1, rank r computing i = r, r + world, ...; every rank receives the results
        in order, one round of `world` at a time, so rank 0 can save each round as it ends (a resumable run)."""
        for first in range(0, count, self.world):
            size = min(self.world, count - first)
            yield self.gather({self.rank: compute(first + self.rank)} if self.rank < size else {}, size)

    def broadcast(self, value: T) -> T:
        """Rank 0's `value`, on every rank (the other ranks' `value` is ignored)."""
        if not self.distributed:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]

    def barrier(self) -> None:
        if self.distributed:
            from accelerate import PartialState

            PartialState().wait_for_everyone()

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (it fills a cache), then the others run it (and read the cache)."""
        if not self.main:
            self.barrier()
        yield
        if self.main:
            self.barrier()

    def device(self, requested: str) -> str:
        """The device this rank runs on: `requested` in one process; with several, cpu stays cpu and a device type
        without an index (cuda, mps...) takes this rank's local index."""
        if not self.distributed or requested == "cpu":
            return requested
        if requested == "auto":
            raise InputError(f"--device auto spreads one model over the GPUs, but {self.world} processes were "
                             "launched (each holds a whole model): give --device cuda, or run one process")
        if ":" in requested:
            raise InputError(f"--device {requested!r} names one device, but {self.world} processes were launched: give "
                             "the type alone (e.g. cuda) and each process takes its own (cuda:<local rank>)")
        return requested if requested == "mps" else f"{requested}:{self.local_rank}"


SINGLE = Ranks()


def ranks() -> Ranks:
    """The current process's ranks: from the launcher's environment through accelerate, or `SINGLE`."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return SINGLE
    try:
        from accelerate import PartialState
    except ImportError:  # pragma: no cover - accelerate is a dependency
        raise InputError("several processes were launched (WORLD_SIZE > 1) but accelerate is not installed; "
                         "pip install accelerate") from None
    import torch

    # without a GPU the processes talk over gloo on the CPU (accelerate's MULTI_CPU); with one, over NCCL
    state = PartialState(cpu=not torch.cuda.is_available())
    return Ranks(state.process_index, state.num_processes, state.local_process_index)

