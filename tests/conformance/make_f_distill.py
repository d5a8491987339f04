"""Makes fixtures/f_distill.pt and fixtures/f_distill.json from NVIDIA FastGen's f-distill
(github.com/NVlabs/FastGen, `fastgen/methods/distribution_matching/f_distill.py`), the reference
implementation of f-distill (arXiv 2502.15681), at the level of its pure loss pieces:

- `FdistillModel._get_f_div_weighting_h(fake_logits, t)`: the density ratio from the
  discriminator's logits, its clamp, the per-noise-bin EMA normalisation (the `bins` buffer) and
  h(r) normalised to batch mean 1; called on a bare model object carrying only the attributes the
  method reads (its config's `f_distill` block, the EDM noise schedule's t range, the buffer), for
  several consecutive batches, so the EMA state is exercised;
- `common_loss.variational_score_distillation_loss(gen_data, teacher_x0, fake_score_x0,
  additional_scale=h)`: the weighted DM loss and its gradient w.r.t. the generated images (what
  reaches the generator).

    .venv/bin/python tests/conformance/make_f_distill.py --reference /path/to/FastGen-checkout

Nothing is fetched and nothing of the checkout is copied. FastGen's package imports pull in far
more than these functions use: the script puts the checkout on sys.path and stubs, in sys.modules
only, `loguru` (logging), `fastgen.networks.noise_schedule` (a type hint of common_loss) and the
`fastgen.methods` package's __init__ (which imports every method; f_distill.py needs only its base
class, which the functions called do not use), so that the two files' own code runs unchanged.
Random tensors are drawn from private generators; CPU, float32 (t in float64, as FastGen's EDM
schedule keeps it).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import types
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_sid import reference_commit  # noqa: E402

#: FastGen's EDM noise schedule's t range (t is sigma) and its polynomial (Karras) grid
T_MIN, T_MAX, GRID_POINTS, RHO = 0.002, 80.0, 1000, 7.0
BATCH, IMAGE = 8, (3, 4, 4)
STEPS = 3  # consecutive generator iterations per case (the bins' EMA carries over)

#: FastGen's short names -> sidbench's
NAMES = {"rkl": "reverse_kl", "kl": "forward_kl", "js": "jensen_shannon", "sh": "squared_hellinger", "jf": "jeffreys"}

#: the cases: FastGen's f_div, ratio_normalization, bin_num, ratio_ema_rate
CASES: dict[str, dict[str, Any]] = {
    # ImageNet 64 (configs/experiments/EDM/config_f_distill_in64.py: js by default, ema 0.5)
    "js-ema0.5": dict(f_div="js", normalization=True, bins=10, ema=0.5),
    # CIFAR-10 (configs/experiments/EDM/config_f_distill_cifar10.py: kl, the default ema 0.0)
    "kl-ema0": dict(f_div="kl", normalization=True, bins=10, ema=0.0),
    "sh-ema0.5": dict(f_div="sh", normalization=True, bins=10, ema=0.5),
    "jf-ema0.9-4bins": dict(f_div="jf", normalization=True, bins=4, ema=0.9),
    "js-unbinned": dict(f_div="js", normalization=False, bins=10, ema=0.0),
    # FastGen's reverse-KL branch raises (h is a 0-d tensor; the normalisation takes its len())
    "rkl": dict(f_div="rkl", normalization=True, bins=10, ema=0.5),
}


def import_reference(path: Path) -> Any:
    sys.path.insert(0, str(path))

    class _Silent:
        def __getattr__(self, name: str) -> Any:
            return lambda *args, **kwargs: None

    loguru = types.ModuleType("loguru")
    loguru.logger = _Silent()
    sys.modules.setdefault("loguru", loguru)
    schedule = types.ModuleType("fastgen.networks.noise_schedule")
    schedule.BaseNoiseSchedule = object
    sys.modules["fastgen.networks.noise_schedule"] = schedule
    methods = types.ModuleType("fastgen.methods")
    methods.__path__ = [str(path / "fastgen" / "methods")]
    methods.DMD2Model = object
    sys.modules["fastgen.methods"] = methods
    import fastgen.methods.common_loss as common_loss
    import fastgen.methods.distribution_matching.f_distill as f_distill

    return SimpleNamespace(common_loss=common_loss, f_distill=f_distill)


def bare_model(ref: Any, spec: dict[str, Any]) -> Any:
    """An FdistillModel with only what `_get_f_div_weighting_h` reads, set as its constructor and
    `build_model` set them."""
    model = ref.f_distill.FdistillModel.__new__(ref.f_distill.FdistillModel)
    model.config = SimpleNamespace(f_distill=SimpleNamespace(
        f_div=spec["f_div"], ratio_lower=0.1, ratio_upper=20.0, ratio_normalization=spec["normalization"],
        bin_num=spec["bins"], ratio_ema_rate=spec["ema"]))
    model.f_div_weighting_function = ref.f_distill.all_f_div_weighting_function[spec["f_div"]]
    model.bin_num = spec["bins"]
    model.net = torch.nn.Module()
    model.net.noise_scheduler = SimpleNamespace(min_t=T_MIN, max_t=T_MAX)
    model.net.register_buffer("bins", torch.ones(spec["bins"]))
    return model


def karras_t(n: int, gen: torch.Generator) -> torch.Tensor:
    """t from FastGen's EDM polynomial sampler: the 1000-point Karras grid, index in [2, 998]."""
    ramp = torch.linspace(0, 1, GRID_POINTS, dtype=torch.float64)
    grid = (T_MAX ** (1 / RHO) + ramp * (T_MIN ** (1 / RHO) - T_MAX ** (1 / RHO))) ** RHO
    return grid.flip(0)[torch.randint(2, 999, (n,), generator=gen)]


def step_inputs(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """One generator iteration's pieces: logits [B, 1] (a spread that hits both ratio clamps and
    the logit clamp), t [B] in several bins, and the DM term's images."""
    logits = torch.randn(BATCH, 1, generator=gen) * 2.5
    logits[0, 0], logits[1, 0] = 12.0, -11.0
    t = karras_t(BATCH, gen)
    t[2], t[3] = 45.0, 79.0  # the polynomial grid rarely leaves the first bins
    x = torch.randn(BATCH, *IMAGE, generator=gen)
    teacher = x + 0.7 * torch.randn(BATCH, *IMAGE, generator=gen)
    fake = teacher + 0.3 * torch.randn(BATCH, *IMAGE, generator=gen)
    return {"logits": logits, "t": t, "gen_data": x, "teacher_x0": teacher, "fake_score_x0": fake}


def run_case(ref: Any, spec: dict[str, Any], gen: torch.Generator) -> dict[str, Any]:
    model = bare_model(ref, spec)
    steps = []
    for _ in range(STEPS):
        inputs = step_inputs(gen)
        try:
            h = model._get_f_div_weighting_h(inputs["logits"], inputs["t"])
        except Exception as e:  # noqa: BLE001 - the fixture records the reference's failure as it is
            return {"error": f"{type(e).__name__}: {e}", "inputs": inputs}
        x = inputs["gen_data"].clone().requires_grad_(True)
        loss = ref.common_loss.variational_score_distillation_loss(x, inputs["teacher_x0"], inputs["fake_score_x0"],
                                                                   additional_scale=h)
        (grad,) = torch.autograd.grad(loss, x)
        steps.append({**inputs, "h": h.detach().clone(), "bins": model.net.bins.detach().clone(),
                      "loss": loss.detach().clone(), "grad_gen_data": grad})
    return {"steps": steps}


def make(reference: Path, seed: int = 25) -> dict[str, Any]:
    ref = import_reference(reference)
    gen = torch.Generator().manual_seed(seed)
    cases = {name: {**spec, "divergence": NAMES[spec["f_div"]], **run_case(ref, spec, gen)} for name, spec in CASES.items()}
    info = {
        "reference": "https://github.com/NVlabs/FastGen",
        "commit": reference_commit(reference),
        "files_run": ["fastgen/methods/distribution_matching/f_distill.py (FdistillModel._get_f_div_weighting_h, "
                      "all_f_div_weighting_function)",
                      "fastgen/methods/common_loss.py (variational_score_distillation_loss)"],
        "stubbed": "loguru, fastgen.networks.noise_schedule (type hint only), the fastgen.methods package __init__",
        "command": "python tests/conformance/make_f_distill.py --reference <FastGen checkout>",
        "date": dt.date.today().isoformat(),
        "torch": torch.__version__,
        "settings": {"ratio_lower": 0.1, "ratio_upper": 20.0, "t_min": T_MIN, "t_max": T_MAX, "batch": BATCH,
                     "image": list(IMAGE), "steps_per_case": STEPS},
        "cases": CASES,
        "contents": "per case: its settings, sidbench's divergence name, and per consecutive step the inputs "
                    "(logits [B, 1], t [B] float64, gen_data, teacher_x0, fake_score_x0), FastGen's h [B], its bins "
                    "buffer after the step, the VSD loss with additional_scale=h and its gradient w.r.t. gen_data; "
                    "for rkl the error FastGen raises instead",
        "precision": "float32 (t float64), CPU",
    }
    return {"info": info, "cases": cases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="a checkout of NVlabs/FastGen")
    parser.add_argument("--out", type=Path, default=HERE / "fixtures")
    args = parser.parse_args()
    fixture = make(args.reference.resolve())
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, args.out / "f_distill.pt")
    (args.out / "f_distill.json").write_text(json.dumps(fixture["info"], indent=1) + "\n")
    print(f"wrote {args.out / 'f_distill.pt'} ({(args.out / 'f_distill.pt').stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
