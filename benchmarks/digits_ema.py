"""Several EMAs of one SiD trajectory on the digits default, each scored on the run's own
evaluation protocol: which EMA ramp-up gets to the teacher soonest, with the training itself held
fixed (an EMA only reads the generator, so one run can keep many).

    python benchmarks/digits_ema.py --seed 0 --kimg 347 --out ema-s0.jsonl
    python benchmarks/digits_ema.py --seed 1 --kimg 347 --out ema-s1.jsonl   # beside it, on the other core

One process of one thread draws what the default's two DDP processes draw (micro-batches of half
the global batch, sidbench/trainer/context.py), so seed 0 follows `sidbench run` up to reduction
round-off. Every `--every` kimg a line holds each ramp-up's fd_pixel and `trainer_ema`, the
trainer's own average (the run's `trainer.ema_rampup`), which the column of the same ramp-up must
equal. docs/speed.md has the results (measured with the earlier preset: batch 128, ramp-up 0.15,
no LR anneal; `trainer.batch=128 trainer.ema_rampup=0.15 trainer.lr_anneal.shape=none method.lr=1e-4`).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_size  # noqa: E402

RAMPUPS = (0.15, 0.3, 0.5, 0.75, 1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kimg", type=float, default=347.0, help="training length")
    parser.add_argument("--every", type=float, default=8.0, help="kimg between evaluations")
    parser.add_argument("--rampups", type=float, nargs="+", default=list(RAMPUPS))
    parser.add_argument("--out", type=Path, required=True, help="JSON lines, one per evaluation")
    parser.add_argument("overrides", nargs="*", help="`sidbench run` overrides, e.g. method.lr=2e-4")
    args = parser.parse_args(argv)

    from sidbench.config import compose
    from sidbench.eval.evaluator import Evaluator
    from sidbench.eval.factory import build_metrics, run_metric_names
    from sidbench.teachers.load import load_teacher
    from sidbench.trainer.ema import EMA

    torch.set_num_threads(1)
    device = torch.device("cpu")
    cfg = compose([f"trainer.seed={args.seed}", *args.overrides])
    cfg = compose([f"trainer.seed={args.seed}", f"trainer.batch_gpu={int(cfg.trainer.batch) // int(cfg.processes)}", *args.overrides])
    teacher = load_teacher(cfg.dataset.teacher, device)
    trainer, _ = real_size.make_trainer(cfg, teacher, device)
    method, progress = trainer.method, trainer.progress
    generator = method.networks()[method.generator_name]
    halflife = float(cfg.trainer.ema_halflife_kimg)
    averages = {f"rampup_{r:g}": EMA(generator, halflife, r) for r in args.rampups}
    evaluator = Evaluator(build_metrics(run_metric_names(cfg), cfg), cfg.eval.num_samples, cfg.eval.batch_size,
                          teacher.shape, teacher.label_dim, device, cfg.eval.seed, cfg.eval.label_mode)
    metric = f"eval/{cfg.eval.metric}"

    def sample_fn(net: torch.nn.Module):  # noqa: ANN202 - as Trainer.sample_fn, from another average
        def sample(z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
            with trainer.ctx.autocast():
                return method.sample(net, z, labels)
        return sample

    batch, end = int(cfg.trainer.batch), args.kimg * 1000
    next_eval, start = args.every * 1000, time.perf_counter()
    with open(args.out, "w") as f:
        while progress.images_seen < end:
            trainer.step()  # the method's updates and the trainer's own EMA
            for average in averages.values():  # fed as the trainer feeds its own: images before this batch
                average.update(generator, batch, progress.images_seen)
            progress.images_seen += batch
            progress.iteration += 1
            if progress.images_seen >= min(next_eval, end):
                next_eval += args.every * 1000
                line = {"kimg": progress.images_seen / 1000, "seconds": time.perf_counter() - start}
                for name, average in averages.items():
                    line[name] = evaluator(sample_fn(average.module))[metric]
                line["trainer_ema"] = evaluator(trainer.sample_fn)[metric]
                f.write(json.dumps(line) + "\n")
                f.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
