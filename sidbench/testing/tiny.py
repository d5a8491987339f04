"""A tiny random EDM teacher and run overrides that finish in seconds: for tests and plugin authors."""
from __future__ import annotations

from pathlib import Path

import torch

TINY_CONSTRUCTOR = {
    "precond": "EDMPrecond", "img_resolution": 8, "img_channels": 1, "label_dim": 0, "model_type": "SongUNet",
    "model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [4], "dropout": 0.0,
}


def make_tiny_teacher(path: Path, **overrides: object) -> Path:
    """A random 8x8 SongUNet teacher in sidbench's safetensors format (digits-sized)."""
    from sidbench.teachers.load import save_native_teacher
    from sidbench.teachers.networks import build_edm_network

    torch.manual_seed(0)
    constructor = {**TINY_CONSTRUCTOR, **overrides}
    net = build_edm_network(constructor)
    return save_native_teacher(net, constructor, path, {"metrics": {"fd_pixel": 1.0}})


def tiny_overrides(teacher: Path, **extra: object) -> list[str]:
    """`sidbench run` overrides for a run of 8 iterations of batch 8 on a tiny teacher."""
    base = {
        "dataset.teacher.path": str(teacher), "trainer.kimg": 0.064, "trainer.batch": 8, "trainer.tick_kimg": 0.016,
        "trainer.eval_every_kimg": 0.032, "trainer.checkpoint_every_kimg": 0.016, "eval.num_samples": 64,
        "eval.final_samples": 64, "eval.batch_size": 64, "device": "cpu",
        "processes": 1,  # in-process (the digits preset would start 2 DDP processes)
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]
