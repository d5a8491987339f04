"""The noise floor of the digits distances: what real data scores against real data.

A Frechet distance estimated from finitely many samples is biased upwards, so even a perfect
generator does not score 0. This measures, for `fd_pixel` and `fd_digits`:

* halves:    two disjoint random halves of the real digits (898 vs 899);
* bootstrap: 2000 or 20000 real digits drawn with replacement vs the full reference (the sizes at
             which generators are scored: every evaluation of a run, and its end): what a perfect
             generator scores;
* gaussian:  as many samples of a Gaussian with the real pixel mean and covariance vs the reference.
             In pixel space it isolates the size bias ("float": the samples' own statistics;
             "uint8": after `to_uint8`, whose clipping to [-1, 1] shifts the moments). Under
             `fd_digits` it is not a floor: it shows how far from digits such blobs look to the
             classifier, where `fd_pixel` cannot tell them from digits.

    python -m sidbench.assets.digits_floor      # writes sidbench/assets/digits_floor.json (beside this script)
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from sidbench.eval.digits import DigitsFrechet, FDDigits, FDPixel
from sidbench.assets import ASSETS
from sidbench.eval.digits_classifier import real_digits_uint8, uint8_to_float
from sidbench.eval.frechet import feature_statistics, frechet_distance
from sidbench.eval.images import to_uint8

DEFAULT_OUT = ASSETS / "digits_floor.json"
MODULE_COMMAND = "python -m sidbench.assets.digits_floor"


def _summary(values: list[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
        "median": float(np.median(v)),
        "min": float(v.min()),
        "max": float(v.max()),
        "n": len(v),
    }


def _gaussian_like(pixels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n samples [n, D] of N(mean, cov) of `pixels` [N, D]; cov may be singular (symmetric square root)."""
    mu, sigma = feature_statistics(pixels)
    w, v = np.linalg.eigh(sigma)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    return mu + rng.standard_normal((n, len(mu))) @ root


def measure_floor(repeats: int = 100, seed: int = 0, num_samples: Sequence[int] = (2000, 20000),
                  verbose: bool = True) -> dict:
    """Floor of both metrics: {metric name: {estimate: {mean, std (ddof 1), median, min, max, n}}},
    the bootstrap and Gaussian estimates at each of `num_samples`.

    The halves' distribution is skewed to the right: std over 10 splits varies by a factor ~2
    between seeds, hence 100 repeats by default (each costs milliseconds).
    """
    real, _ = real_digits_uint8()
    n_real = len(real)
    pixels = uint8_to_float(real).flatten(1).double().numpy()
    metrics: list[DigitsFrechet] = [FDPixel(), FDDigits()]
    result: dict = {}
    for metric in metrics:
        rng = np.random.default_rng(seed)  # every metric sees the same splits, resamples and Gaussians
        feats = metric.features([real])
        halves: list[float] = []
        boot: dict[int, list[float]] = {n: [] for n in num_samples}
        gauss_float: dict[int, list[float]] = {n: [] for n in num_samples}
        gauss_uint8: dict[int, list[float]] = {n: [] for n in num_samples}
        for _ in range(repeats):
            perm = rng.permutation(n_real)
            a, b = perm[: n_real // 2], perm[n_real // 2 :]
            halves.append(frechet_distance(*feature_statistics(feats[a]), *feature_statistics(feats[b])))
            for n in num_samples:
                boot[n].append(metric.distance(feats[rng.integers(0, n_real, n)]))
                g = _gaussian_like(pixels, n, rng)
                g_images = torch.from_numpy(g).float().reshape(-1, 1, 8, 8)
                if isinstance(metric, FDPixel):
                    gauss_float[n].append(metric.distance(g))
                gauss_uint8[n].append(metric.compute([to_uint8(g_images)]))
        name = metric.name
        result[name] = {f"halves_{n_real // 2}_vs_{n_real - n_real // 2}": _summary(halves)}
        for n in num_samples:
            result[name][f"bootstrap_{n}_vs_real"] = _summary(boot[n])
            if gauss_float[n]:
                result[name][f"gaussian_{n}_vs_real"] = _summary(gauss_float[n])
            result[name][f"gaussian_{n}_uint8_vs_real"] = _summary(gauss_uint8[n])
        if verbose:
            for key, s in result[name].items():
                print(f"{name:10s} {key:32s} {s['mean']:9.4f} +- {s['std']:.4f}", flush=True)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=MODULE_COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-samples", type=int, nargs="+", default=[2000, 20000],
                        help="sizes of the bootstrap and Gaussian sets (a run's evaluations, and its end)")
    args = parser.parse_args(argv)
    floor = measure_floor(args.repeats, args.seed, args.num_samples)
    record = {
        "command": f"{MODULE_COMMAND} --repeats {args.repeats} --seed {args.seed} --num-samples "
                   + " ".join(str(n) for n in args.num_samples),
        "reference": "all 1797 scikit-learn digits, through to_uint8 and x / 127.5 - 1, as the metrics see them",
        "std": "sample standard deviation (ddof 1) over the repeats",
        "notes": {
            "halves": "two disjoint random halves of the real digits, against each other",
            "bootstrap": "real digits resampled with replacement vs the full reference: what a perfect generator scores",
            "gaussian": "samples of N(real pixel mean, real pixel covariance), without quantisation (fd_pixel only)",
            "gaussian_uint8": "the same samples through to_uint8 (clipped to [-1, 1]); under fd_digits this is "
            "not a floor but a pixel-moment-matched non-digit",
        },
        **floor,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
