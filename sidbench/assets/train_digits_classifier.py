"""Train the digits classifier behind `fd_digits` and write the shipped asset beside this script.

    python -m sidbench.assets.train_digits_classifier     # writes sidbench/assets/digits_classifier.{safetensors,json}

It is trained on a fixed, stratified 80% split of the 1797 digits and must reach `MIN_ACCURACY` on
the held-out 20%; the `.json` records the command, seed, split, accuracy and the file's SHA-256.
The model itself, and how the metric loads it, are in `sidbench.eval.digits_classifier`. The
shipped file was made by this script when it lived at `sidbench.eval.digits_classifier` (the
command its record keeps).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from sidbench.eval.digits_classifier import (
    DEFAULT_WEIGHTS,
    TRAIN_COMMAND,
    DigitsClassifier,
    classifier_config,
    real_digits_uint8,
    uint8_to_float,
)

#: The split is fixed, whatever the training seed: stratified, 80% of each class for training.
SPLIT_SEED = 0
TRAIN_FRACTION = 0.8
#: A shipped or retrained classifier must reach this accuracy on the held-out 20%.
MIN_ACCURACY = 0.97


def digits_split(labels: torch.Tensor | np.ndarray, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split: (train indices, held-out indices), each sorted; round(80%) of every class trains."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, heldout = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_train = int(round(TRAIN_FRACTION * len(idx)))
        train.append(idx[:n_train])
        heldout.append(idx[n_train:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(heldout))


@torch.no_grad()
def heldout_accuracy(model: DigitsClassifier) -> float:
    """Accuracy of `model` on the fixed held-out 20% of the real digits (as uint8, like the metrics)."""
    images, labels = real_digits_uint8()
    _, heldout = digits_split(labels)
    idx = torch.as_tensor(heldout)
    logits = model(uint8_to_float(images[idx]))
    return float((logits.argmax(1) == labels[idx]).double().mean())


def _random_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Translate each image by up to `max_shift` pixels, filling with the background (-1)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(n, 1, h, w + 2 * max_shift)
    shifted = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(n, 1, h, w)
    return shifted.gather(3, cols)


def train_digits_classifier(
    out_path: str | Path,
    seed: int = 0,
    epochs: int = 60,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    verbose: bool = True,
) -> dict:
    """Train on the fixed 80% split, check held-out accuracy, write weights (safetensors) and a JSON record.

    The record goes next to the weights (`<out_path>.json`) and is also returned. Raises if the
    held-out accuracy is below `MIN_ACCURACY`, without writing anything. Deterministic algorithms
    on the CPU: the same seed, torch build and thread count give the same bytes on one machine;
    another thread count or CPU changes the last bits of the weights, not the accuracy (a retrain
    on another machine of this project's kind reached the shipped 0.9916 with other bits).
    """
    from safetensors.torch import save_file

    out_path = Path(out_path)
    start = time.perf_counter()
    images, labels = real_digits_uint8()
    train_idx, heldout_idx = digits_split(labels)
    x_train = uint8_to_float(images[torch.as_tensor(train_idx)])
    y_train = labels[torch.as_tensor(train_idx)]

    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = DigitsClassifier()
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        steps_per_epoch = -(-len(x_train) // batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
        model.train()
        for epoch in range(epochs):
            perm = torch.randperm(len(x_train), generator=gen)
            total = 0.0
            for i in range(0, len(x_train), batch_size):
                b = perm[i : i + batch_size]
                loss = F.cross_entropy(model(_random_shift(x_train[b], gen)), y_train[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(b)
            if verbose and (epoch + 1) % 10 == 0:
                print(f"epoch {epoch + 1:3d}/{epochs}  train loss {total / len(x_train):.4f}", flush=True)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    model.eval()
    model.requires_grad_(False)
    accuracy = heldout_accuracy(model)
    seconds = time.perf_counter() - start
    if verbose:
        print(f"held-out accuracy {accuracy:.4f} ({len(heldout_idx)} images), {seconds:.1f} s", flush=True)
    if accuracy < MIN_ACCURACY:
        raise RuntimeError(f"held-out accuracy {accuracy:.4f} < {MIN_ACCURACY}; nothing written")

    out_path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    # One metadata key: safetensors writes its metadata map in hash order, so several keys would make
    # the file's bytes (and its recorded sha256) differ between identical runs.
    save_file(state, str(out_path), metadata={"config": json.dumps(classifier_config(model), sort_keys=True)})
    record = {
        "command": f"{TRAIN_COMMAND} --out {out_path} --seed {seed} --epochs {epochs}",
        "seed": seed,
        "split": {
            "description": "stratified: per class, numpy default_rng(split_seed).permutation of the class's "
            "indices (classes in increasing order, one generator); the first round(0.8 n_c) train",
            "split_seed": SPLIT_SEED,
            "train_fraction": TRAIN_FRACTION,
            "num_train": int(len(train_idx)),
            "num_heldout": int(len(heldout_idx)),
            "heldout_indices": [int(i) for i in heldout_idx],
        },
        "heldout_accuracy": accuracy,
        "feature_dim": model.feature_dim,
        "feature_layer": "fc output before its ReLU (the penultimate layer)",
        "architecture": classifier_config(model),
        "training": {
            "epochs": epochs, "batch_size": batch_size, "optimizer": "AdamW", "lr": lr,
            "lr_schedule": "OneCycle", "weight_decay": weight_decay, "augmentation": "random shift <= 1 pixel",
        },
        "input": "uint8 via EDM to_uint8, then x / 127.5 - 1",
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(seconds, 1),
        "torch_version": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),  # the bits (not the accuracy) depend on it
        "sha256": hashlib.sha256(out_path.read_bytes()).hexdigest(),
    }
    # Indented, but with the held-out indices on one line rather than 359.
    flat = {**record, "split": {**record["split"], "heldout_indices": "@indices@"}}
    text = json.dumps(flat, indent=2).replace('"@indices@"', json.dumps(record["split"]["heldout_indices"]))
    out_path.with_suffix(".json").write_text(text + "\n")
    if verbose:
        print(f"wrote {out_path} and {out_path.with_suffix('.json')}")
    return record


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=TRAIN_COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS, help="weights path (.safetensors); the .json goes beside it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args(argv)
    try:
        train_digits_classifier(args.out, seed=args.seed, epochs=args.epochs)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
