"""Writes tests/fixtures/saved_recipes/: generator files as `sidbench run` saved them before the
samplers moved into one registry (`sidbench.diffusion`), with the images the code of that time
drew from them. `tests/eval/test_saved_recipes.py` checks that today's `load_generator` reads each
file and draws the same images.

Run once with the code whose files are to be pinned (it uses only `save_native_teacher` and
`load_generator`, which both versions have), from the repository root of that code:

    .venv/bin/python <this worktree>/tests/eval/make_saved_recipes.py --out tests/fixtures/saved_recipes

The recipes are the ones each method's `sampling()` wrote then: SiD and DMD2 one step at their
sigma, a progressive student's Euler grid (both last points), a two-step consistency function, a
Heun recipe without a method (what `sidbench.testing.staged` writes), and the oldest form, a
`sigma_init` without a sampler name.
"""
from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

import torch

#: A tiny conditional EDM network (2.8k parameters): the recipes are under test, not the network.
CONSTRUCTOR = {
    "precond": "EDMPrecond", "img_resolution": 8, "img_channels": 1, "label_dim": 3, "model_type": "SongUNet",
    "model_channels": 4, "channel_mult": [1], "num_blocks": 1, "attn_resolutions": [], "dropout": 0.0,
}


def karras(f: float) -> float:
    """Karras' schedule at f in [0, 1] (sigma_min 0.002, sigma_max 80, rho 7), as the progressive
    student's grid was computed: written out here so the file does not depend on either version."""
    a, b = 80.0 ** (1 / 7), 0.002 ** (1 / 7)
    return float(torch.tensor(a + f * (b - a), dtype=torch.float64) ** 7)


def recipes() -> dict[str, dict]:
    """File name -> the info `save_generator` wrote (method, kimg, sampling recipe, nfe)."""
    pd4 = [karras(i / 4) for i in range(5)]  # final_zero false: ends at sigma_min
    pd2 = [karras(i / 2) for i in range(2)] + [0.0]  # final_zero true
    found = {
        "sid": ("sid", {"sampler": "one_step", "sigma": 2.5, "nfe": 1}),
        "dmd2": ("dmd2", {"sampler": "one_step", "sigma": 80.0, "nfe": 1}),
        "progressive4": ("progressive", {"sampler": "euler", "sigmas": pd4, "nfe": 4}),
        "progressive2-zero": ("progressive", {"sampler": "euler", "sigmas": pd2, "nfe": 2}),
        "consistency": ("consistency", {"sampler": "consistency", "sigmas": [80.0, 0.8], "sigma_min": 0.002, "nfe": 2}),
        "heun-no-method": ("", {"sampler": "heun", "sigmas": [80.0, 1.0, 0.0], "nfe": 3}),
        "sigma-init": ("sid", {"sigma_init": 2.5}),
    }
    return {name: {"method": method, "kimg": 1.0, "sampling": recipe, "nfe": int(recipe.get("nfe", 1))}
            for name, (method, recipe) in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import subprocess

    from sidbench.eval.generators import load_generator
    from sidbench.teachers.load import save_native_teacher
    from sidbench.teachers.networks import build_edm_network

    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = build_edm_network(CONSTRUCTOR).eval()
    g = torch.Generator().manual_seed(1)
    z = torch.randn(4, 1, 8, 8, generator=g)
    labels = torch.nn.functional.one_hot(torch.tensor([0, 2, 1, 2]), 3).float()
    images = {}
    for name, info in recipes().items():
        path = save_native_teacher(net, CONSTRUCTOR, args.out / f"{name}.safetensors", info)
        images[name] = load_generator(path)(z, labels)
    torch.save({"z": z, "labels": labels, "images": images}, args.out / "expected.pt")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    (args.out / "expected.json").write_text(json.dumps({
        "what": "generator files as `sidbench run` saved them, and the images load_generator drew from z, labels",
        "code": commit, "date": date.today().isoformat(), "torch": torch.__version__,
        "command": "python tests/eval/make_saved_recipes.py --out tests/fixtures/saved_recipes", "files": sorted(images),
    }, indent=1) + "\n")


if __name__ == "__main__":
    main()
