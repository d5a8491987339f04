"""torchrun / DDP plumbing: nothing of our own, just the standard environment variables.

How a multi-process run is laid out (see `sidbench.run`):
- every process builds the same networks; DDP broadcasts rank 0's weights when it wraps them, and
  averages gradients inside each backward, so the processes take identical optimiser steps;
- rank 0 alone decides the run folder (broadcast to the others), logs to MLflow, scores the
  evaluations and writes checkpoints; every rank makes its share of an evaluation's images
  (`sidbench.eval.images.shared_batches`), and the others wait for rank 0 at a barrier after it;
- the end's images are made the same way; right after their last round every rank destroys the
  process group (NCCL's destroy waits for all ranks), and rank 0 scores them alone. No rank waits
  in a collective for longer than rank 0 takes to write a checkpoint or score a curve point (at
  the barrier after each).
Every helper here is a no-op (or the identity) in a single-process run.
"""
from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

#: How long a collective may wait. The other ranks wait in one while rank 0 scores an evaluation (the
#: Inception pass of a 10k-sample FID during training) or writes a checkpoint, which can take longer
#: than the backends' defaults.
TIMEOUT = dt.timedelta(minutes=60)

_owned = False  # did init_from_env start the process group (and so may destroy it)?


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto`: this process's CUDA device when one exists, else the CPU."""
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def init_from_env(device: torch.device) -> tuple[int, int]:
    """(rank, world size); starts the process group when launched by torchrun with >1 process."""
    global _owned
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group(backend="nccl", timeout=TIMEOUT, device_id=device)
        else:
            dist.init_process_group(backend="gloo", timeout=TIMEOUT)
        _owned = True
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shutdown() -> None:
    """Destroy the process group this module started (idempotent); no collective may follow."""
    global _owned
    if _owned and dist.is_initialized():
        dist.destroy_process_group()
    _owned = False


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: T) -> T:
    """Rank 0's `obj` on every rank (anything picklable; the others may pass None)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class RankZeroError(RuntimeError):
    """What another rank raises when rank 0 failed in `rank_zero_first`."""


def rank_zero_first(fn: Callable[[], T]) -> T:
    """`fn()` on rank 0 alone (a download and its checksum), then its result on every rank: the
    others wait for it at the broadcast, which is the barrier. An error on rank 0 is raised there as
    it is, and on the other ranks as `RankZeroError` with its message (no rank waits forever)."""
    if not is_distributed():
        return fn()
    result, error = None, None
    if dist.get_rank() == 0:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - re-raised below, after the others heard of it
            error = e
    box = broadcast_object((result, None if error is None else f"{type(error).__name__}: {error}"))
    if error is not None:
        raise error
    if box[1] is not None:
        raise RankZeroError(f"rank 0 failed: {box[1]}")
    return box[0]


def reduce_values(mean: dict[str, Any], total: dict[str, Any], device: torch.device) -> tuple[dict[str, float], dict[str, float]]:
    """(mean over ranks of `mean`, sum over ranks of `total`) in one collective, as floats.

    Values may be floats or tensors on `device`; they are read back with a single host
    synchronisation, so an iteration's logs cost one sync however many values it has. Every rank
    must pass the same keys; a NaN or inf on any rank reaches all of them, so decisions taken on
    the result (stop on non-finite losses) agree."""
    keys = [("m", k) for k in sorted(mean)] + [("t", k) for k in sorted(total)]
    if not keys:
        return {}, {}
    values = [mean[k] if kind == "m" else total[k] for kind, k in keys]
    t = torch.stack([torch.as_tensor(v, device=device).to(torch.float64).reshape(()) for v in values])
    if is_distributed():
        dist.all_reduce(t)
        world = dist.get_world_size()
        n_mean = len(mean)
        t[:n_mean] /= world
    out = t.tolist()
    means = {k: v for (kind, k), v in zip(keys, out) if kind == "m"}
    totals = {k: v for (kind, k), v in zip(keys, out) if kind == "t"}
    return means, totals


def wrap_ddp(networks: dict[str, torch.nn.Module], device: torch.device) -> dict[str, Any]:
    """DDP wrappers of the trainable networks (empty when not distributed).

    The defaults (`find_unused_parameters=False`, no static graph) are right for how the step
    context uses them, although each update switches `requires_grad` off for the other networks:
    - a wrapper is called only while its own network is updated, and then all of its parameters
      require gradients again (`StepContext._only_trains`); frozen passes through another network
      (the fake score inside SiD's generator loss) go to the bare module, never to its wrapper;
    - every parameter gets a gradient from every such backward: the EDM wrappers feed zero class or
      augmentation labels instead of skipping those layers, so no parameter is ever unused;
    - the reducer's hooks sit on each parameter's gradient accumulator, which toggling
      `requires_grad` does not replace (the reducer holds it), so they fire again after a toggle.
    The DDP equivalence test (tests/trainer/test_ddp.py) checks all three: a missed reduction
    would raise at the next forward or leave the ranks' weights apart from a one-process run.
    The only buffers are constant resampling filters: synced once at wrapping, never during
    forward.
    """
    if not is_distributed():
        return {}
    ids = [device.index] if device.type == "cuda" else None
    return {k: torch.nn.parallel.DistributedDataParallel(v, device_ids=ids, forward_sync_buffers=False)
            for k, v in networks.items()}


def launch_processes(cfg) -> int:  # noqa: ANN001 - a DictConfig
    """How many processes `sidbench run` starts on this machine: `processes`, at most one per GPU
    on CUDA machines; 1 inside a process that torchrun already started."""
    if "WORLD_SIZE" in os.environ or int(cfg.get("processes") or 1) <= 1:
        return 1
    if pick_device(cfg.device).type == "cuda":
        return max(1, min(int(cfg.processes), torch.cuda.device_count()))
    return int(cfg.processes)
