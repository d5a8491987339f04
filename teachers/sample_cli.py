"""`sidbench teacher sample`: images from a teacher's Heun sampler, for FID and for the reference
line of every curve. Batched, seeded per batch, and resumable: finished batches are kept.

Every file is written under a temporary name and renamed into place, so a killed job leaves no
half-written image for a resumed one to take as finished. The settings that decide the images
(teacher file, count, batch, seed, steps) are recorded beside them (`.sidbench-sample.json`); a
resume with other settings is refused instead of mixing two sets of samples.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import Progress

from sidbench.atomic import atomic_path, write_text_atomic
from sidbench.config import ConfigError
from sidbench.distributed import pick_device
from sidbench.eval.images import draw_labels, to_uint8
from sidbench.teachers.load import load_teacher
from sidbench.diffusion import heun_sample

console = Console(stderr=True)

#: The record of the settings a sample folder (or `.parts` folder) was made with.
SETTINGS_FILE = ".sidbench-sample.json"


def _batch_noise(seed: int, batch_index: int, n: int, shape: tuple[int, int, int]) -> torch.Tensor:
    # One generator per batch: a resumed job draws exactly what an uninterrupted one would.
    gen = torch.Generator().manual_seed(seed * 1_000_003 + batch_index)
    return torch.randn((n, *shape), generator=gen)


def sample_teacher(cfg: DictConfig, out: str | Path, num: int = 50000, batch: int = 256, seed: int = 0, steps: int | None = None) -> Path:
    """Write `num` uint8 images to a PNG folder or an `.npz` (key `images`, NHWC, and `labels`)."""
    out = Path(out)
    device = pick_device(cfg.device)
    teacher = load_teacher(cfg.dataset.teacher, device)
    steps = steps or int(cfg.dataset.teacher.sampler_steps)
    as_npz = out.suffix == ".npz"
    parts = out.with_name(out.name + ".parts") if as_npz else out
    parts.mkdir(parents=True, exist_ok=True)
    _check_settings(parts, {"teacher": teacher.source, "num": num, "batch": batch, "seed": seed, "steps": steps})
    num_batches = (num + batch - 1) // batch
    with Progress(console=console) as bar:
        task = bar.add_task(f"Heun {2 * steps - 1} NFE", total=num)
        for b in range(num_batches):
            start, n = b * batch, min(batch, num - b * batch)
            done = (parts / f"batch{b:06d}.npz").is_file() if as_npz else (parts / f"{start + n - 1:06d}.png").is_file()
            if not done:
                z = _batch_noise(seed, b, n, teacher.shape).to(device)
                labels = draw_labels(torch.arange(start, start + n), teacher.label_dim, "cyclic")
                labels = None if labels is None else labels.to(device)
                with torch.no_grad():
                    images = to_uint8(heun_sample(teacher.net, z, labels, num_steps=steps).float()).cpu()
                _write_batch(parts, b, start, images, labels, as_npz)
            bar.update(task, advance=n)
    if not as_npz:
        return out
    images, labels = [], []
    for b in range(num_batches):
        with np.load(parts / f"batch{b:06d}.npz") as chunk:
            images.append(chunk["images"])
            labels.append(chunk["labels"])
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.savez(f, images=np.concatenate(images), labels=np.concatenate(labels))
    for b in range(num_batches):
        (parts / f"batch{b:06d}.npz").unlink()
    (parts / SETTINGS_FILE).unlink(missing_ok=True)
    parts.rmdir()
    return out


def _check_settings(folder: Path, settings: dict) -> None:
    """Record the settings in a fresh folder; refuse to resume one made with other settings."""
    record = folder / SETTINGS_FILE
    settings = {**settings, "teacher": str(Path(settings["teacher"]).resolve())}
    if record.is_file():
        try:
            old = json.loads(record.read_text())
        except ValueError:
            old = None
        if old != settings:
            changed = ", ".join(f"{k} {old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v) \
                if isinstance(old, dict) else "the settings record is unreadable"
            raise ConfigError(
                f"{folder} holds samples made with other settings ({changed}); "
                "rerun with the same settings to resume, or pick a new --out"
            )
        return
    write_text_atomic(record, json.dumps(settings, indent=1) + "\n")


def _write_batch(folder: Path, b: int, start: int, images: torch.Tensor, labels: torch.Tensor | None, as_npz: bool) -> None:
    hwc = images.permute(0, 2, 3, 1).numpy()
    cls = labels.argmax(1).cpu().numpy() if labels is not None else np.full(len(hwc), -1)
    if as_npz:
        with atomic_path(folder / f"batch{b:06d}.npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, images=hwc, labels=cls)
        return
    from PIL import Image

    # Written in index order, each whole or not at all: the last index of a batch marks the batch
    # as finished, and a killed job never leaves a half-written PNG behind.
    for i, img in enumerate(hwc):
        with atomic_path(folder / f"{start + i:06d}.png") as tmp:
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(tmp, format="PNG")
