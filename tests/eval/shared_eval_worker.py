"""Run by tests/eval/test_shared_evaluation.py under torch.distributed.run (gloo, CPU): an evaluation's
images made by every rank (`shared_batches`, a shared `Evaluator`) against one process making them all.

Every rank builds the same tiny conditional EDM network (same seed) and samples with it in one
step from sigma 80; 23 images in batches of 5 leave the last batch short and, on 2 ranks, the last
round with one batch. Each rank writes what it found to <out>/rank<r>.json."""
from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.distributed as dist

from sidbench.eval.base import Metric
from sidbench.eval.evaluator import Evaluator
from sidbench.eval.images import generated_batches, shared_batches
from sidbench.teachers.networks import build_edm_network
from sidbench.testing.tiny import TINY_CONSTRUCTOR

SPEC = dict(num_samples=23, batch_size=5, shape=(1, 8, 8), label_dim=3, seed=11, label_mode="uniform")


class PixelSums(Metric):
    """The images' count and pixel sum, exactly (int64): equal only for the same images."""

    name = "pixel_sums"
    value_names = ("count", "total")

    def compute(self, batches: Iterable[torch.Tensor]) -> float:
        raise NotImplementedError

    def compute_values(self, batches: Iterable[torch.Tensor]) -> dict[str, float]:
        count = total = 0
        for b in batches:
            count, total = count + len(b), total + int(b.long().sum())
        return {"count": count, "total": total}


class FirstBatchOnly(PixelSums):
    """Reads one batch and stops: the rounds it leaves must still be made, or the other ranks wait."""

    name = "first_batch"
    value_names = ("first",)

    def compute_values(self, batches: Iterable[torch.Tensor]) -> dict[str, float]:
        return {"first": int(next(iter(batches)).long().sum())}


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    net = build_edm_network({**TINY_CONSTRUCTOR, "label_dim": 3}).eval()
    calls = []

    def sample_fn(z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        calls.append(len(z))
        return net(z * 80, torch.full((len(z),), 80.0), labels)

    shared = list(shared_batches(sample_fn, **SPEC))
    report: dict = {"world": dist.get_world_size(), "shared_calls": list(calls), "shared_batches": len(shared)}
    metrics = [PixelSums(), FirstBatchOnly()] if rank == 0 else None
    evaluator = Evaluator(metrics, SPEC["num_samples"], SPEC["batch_size"], SPEC["shape"], SPEC["label_dim"],
                          torch.device("cpu"), SPEC["seed"], SPEC["label_mode"], shared=True)
    values = evaluator(sample_fn)
    report["shared_evaluator"] = {k: v for k, v in values.items() if k != "eval/seconds"}
    report["single_metric_stopping_early"] = evaluator(sample_fn, [FirstBatchOnly()] if rank == 0 else [])
    report["single_metric_stopping_early"].pop("eval/seconds", None)
    held = evaluator.images(sample_fn)  # made now by every rank, scored later (the run's end)
    report["held_batches"] = len(held)
    report["held_equal_to_shared"] = len(held) == len(shared) and all(torch.equal(a, b) for a, b in zip(held, shared))
    report["held_scored"] = {k: v for k, v in evaluator.score(held, evaluator.metrics).items() if k != "eval/seconds"}
    dist.barrier()  # every rank got past every round: nobody waits for a round that was never made
    if rank == 0:  # the same images from one process
        calls.clear()
        alone = list(generated_batches(sample_fn, device="cpu", **SPEC))
        report["alone_calls"] = list(calls)
        report["equal_to_one_process"] = len(alone) == len(shared) and all(torch.equal(a, b) for a, b in zip(alone, shared))
        report["batch_sizes"] = [len(b) for b in shared]
        one = Evaluator([PixelSums(), FirstBatchOnly()], SPEC["num_samples"], SPEC["batch_size"], SPEC["shape"],
                        SPEC["label_dim"], torch.device("cpu"), SPEC["seed"], SPEC["label_mode"])(sample_fn)
        report["one_process_evaluator"] = {k: v for k, v in one.items() if k != "eval/seconds"}
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
