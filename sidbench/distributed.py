"""torchrun / DDP plumbing: nothing of our own, just the standard environment variables."""
from __future__ import annotations

import os

import torch


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto`: this process's CUDA device when one exists, else the CPU."""
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def init_from_env(device: torch.device) -> tuple[int, int]:
    """(rank, world size); starts the process group when launched by torchrun with >1 process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)
    if torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def wrap_ddp(networks: dict[str, torch.nn.Module], device: torch.device) -> dict[str, torch.nn.Module]:
    """DDP wrappers of the trainable networks (empty when not distributed)."""
    if not torch.distributed.is_initialized():
        return {}
    ids = [device.index] if device.type == "cuda" else None
    return {k: torch.nn.parallel.DistributedDataParallel(v, device_ids=ids, broadcast_buffers=False) for k, v in networks.items()}
