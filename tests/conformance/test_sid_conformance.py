"""SiD's iteration against the official code (fixtures/sid.pt, made by make_sid.py from the SiD
repository's main branch; fixtures/sid.json says which commit).

sidbench's own SiD plugin runs one iteration (its real `train_step` through a `StepContext`) on
networks with the fixture's weights, under `Replay` of the draws the official code made, and the
gradients each Adam sees when it steps are compared with the official ones, as are the losses.

Tolerance: rtol 1e-4, atol 1e-6 relative to the largest gradient of the network (float32; the two
codes' networks agree to about 3e-7 on the same input but are not bitwise equal, and the
generator's gradient passes through three networks and Adam's first step of the fake score).

Draw order: the official loop draws the generator's input z with `torch.randn_like(images)`,
sidbench with `torch.randn(n, C, H, W)`: the same numbers from the same stream. The test moves each
round's z from the recorded `randn_like` queue to the `randn` queue where sidbench asks for it.
With augmentation (case "augment"), the official loss draws ln sigma before the augmentation's
draws and sidbench after them, and the official pipe draws some per-sample values as [N, 1, 1, 1]
or [1, N] where sidbench draws [N]: the test puts sigma's draw after the pipe's in the `randn`
queue and reshapes the pipe's draws (the same values, in the same order per function). Every other
draw is replayed as recorded.

In the augmentation case sidbench's resampler (`sidbench.augment`: matrix products, padding as wide
as the map needs) and EDM's (convolutions, padding capped at the image's size) agree to about 1e-5
per pixel at 16x16, and the same tolerance holds; on 8x8 images EDM's cap binds for large maps and
they differ up to ~5e-3, which is why that case is 16x16.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from draws import Replay, step_gradients

from sidbench.config import compose
from sidbench.methods import METHODS
from sidbench.teachers.networks import build_edm_network
from sidbench.teachers.teacher import Teacher
from sidbench.trainer.context import StepContext

FIXTURES = Path(__file__).parent / "fixtures"
CPU = torch.device("cpu")
RTOL, ATOL = 1e-4, 1e-6


def load(name: str) -> dict[str, Any]:
    path = FIXTURES / f"{name}.pt"
    if not path.is_file():
        pytest.fail(f"{path} missing: run tests/conformance/make_{name}.py --reference <checkout>")
    return torch.load(path, weights_only=False)


def teacher_of(case: dict[str, Any]) -> Teacher:
    net = build_edm_network(case["constructor"])
    net.load_state_dict(case["weights"]["teacher"], strict=True)
    return Teacher(net=net.eval().requires_grad_(False), constructor=dict(case["constructor"]), source="fixture")


def z_to_randn(recorded: dict[str, list[torch.Tensor]], rounds: int, first: str) -> tuple[list, list]:
    """(the z of each round, the other `randn_like` draws): the official loop draws each round's z
    with randn_like, then its loss draws one noise tensor with randn_like."""
    like = recorded["randn_like"]
    assert len(like) == 2 * rounds, f"{first}: {len(like)} randn_like draws for {rounds} rounds"
    return like[0::2], like[1::2]


#: per round of the official augmentation pipe: draws per torch function (published multipliers)
AUGMENT_DRAWS = {"randint": 2, "rand": 9, "randn": 3}


def augment_draws(fs: dict[str, list[torch.Tensor]], r: int, n: int) -> dict[str, list[torch.Tensor]]:
    """Round r's draws of the official pipe, in sidbench's shapes ([N], and [2, N] for the translation)."""
    out = {}
    for fn, k in AUGMENT_DRAWS.items():
        first = r * k + (r + 1 if fn == "randn" else 0)  # randn: ln sigma comes first in each round
        out[fn] = [t.reshape(2, n) if (fn == "randn" and i == k - 1) else t.reshape(n)
                   for i, t in enumerate(fs[fn][first:first + k])]
    return out


def sid_replay_draws(case: dict[str, Any], generator: bool = True) -> dict[str, list[torch.Tensor]]:
    """The recorded draws in the order sidbench's SiD (and SiDA) asks for them per torch function:
    per round of the fake-score update randn (z), [the pipe's draws], randn (ln sigma), randn_like
    (noise); per round of the generator update randn (z), rand (u), randn_like (noise). Without
    `generator`, only the fake-score update's."""
    rounds, n = case["batch"] // case["batch_gpu"], case["batch_gpu"]
    augmented = case.get("settings", {}).get("augment_p", 0) > 0
    fs, g = case["draws"]["fake_score"], case["draws"]["generator"]
    z_fs, noise_fs = z_to_randn(fs, rounds, "fake_score")
    z_g, noise_g = z_to_randn(g, rounds, "generator")
    out: dict[str, list[torch.Tensor]] = {"randn": [], "rand": [], "randint": []}
    per_round = 1 + (AUGMENT_DRAWS["randn"] if augmented else 0)
    for r in range(rounds):
        aug = augment_draws(fs, r, n) if augmented else {"randn": [], "rand": [], "randint": []}
        out["randn"] += [z_fs[r], *aug["randn"], fs["randn"][r * per_round]]
        out["rand"] += aug["rand"]
        out["randint"] += aug["randint"]
    out["randn_like"] = list(noise_fs)
    if generator:
        out["randn"] += z_g
        out["rand"] += list(g["rand"])
        out["randn_like"] += noise_g
    return {k: v for k, v in out.items() if v}


def label_feed(case: dict[str, Any], updates: tuple[str, ...]) -> Any:
    """A label sampler that hands out the fixture's labels of each update and round, in order."""
    queue = [c for u in updates for c in case["labels"][u]]
    if queue[0] is None:
        return None

    def sampler(n: int) -> torch.Tensor:
        c = queue.pop(0)
        assert c.shape[0] == n
        return c

    return sampler


def build_method(name: str, case: dict[str, Any], overrides: list[str], settings: dict[str, Any] | None = None) -> Any:
    """sidbench's plugin `name` with the fixture's settings, teacher, generator and fake score."""
    s = settings or case["settings"]
    cfg = compose([f"method={name}", "method.dropout=0.0", f"method.augment_p={s.get('augment_p', 0)}", f"method.alpha={s['alpha']}",
                   f"method.lr={s['lr']}", f"method.eps={s['adam_eps']}", f"method.t_max={s['t_max']}",
                   f"method.sigma_init={s['sigma_init']}", f"method.loss_scale_generator={s['loss_scale_generator']}",
                   f"method.loss_scale_fake_score={s['loss_scale_fake_score']}", *overrides])
    method = METHODS.get(name)(teacher_of(case), cfg.method, CPU, cfg)
    method.generator.load_state_dict(case["weights"]["generator"], strict=True)
    method.fake_score.load_state_dict(case["weights"]["fake_score"], strict=True)
    return method


def watch(method: Any) -> dict[str, dict[str, torch.Tensor]]:
    return {name: step_gradients(opt, {p: k for k, p in method.networks()[name].named_parameters()})
            for name, opt in method.optimizers().items()}


def assert_gradients_match(seen: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str,
                           scale: float | None = None) -> None:
    """Every parameter's gradient within rtol, and atol times `scale`: by default the largest
    official gradient of the network (after a clip by value, pass the largest before it)."""
    assert set(seen) == set(expected), f"{what}: parameters with a gradient differ: {sorted(set(seen) ^ set(expected))}"
    scale = scale or max(v.abs().max().item() for v in expected.values())
    assert scale > 0, f"{what}: the official gradient is zero; the fixture pins nothing"
    for k in expected:
        torch.testing.assert_close(seen[k], expected[k], rtol=RTOL, atol=ATOL * scale, msg=lambda m: f"{what} {k}: {m}")


@pytest.mark.parametrize("case_name", ["uncond", "cond", "augment"])
def test_one_sid_iteration_gives_the_official_gradients_and_losses(case_name: str) -> None:
    case = load("sid")["cases"][case_name]
    sid = build_method("sid", case, [])
    ctx = StepContext(sid.networks(), sid.optimizers(), CPU, batch=case["batch"], batch_gpu=case["batch_gpu"],
                      label_sampler=label_feed(case, ("fake_score", "generator")))
    seen = watch(sid)
    with Replay(sid_replay_draws(case)) as replay:
        logs = sid.train_step(ctx)
    replay.assert_exhausted()
    for name in ("fake_score", "generator"):
        assert_gradients_match(seen[name], case["grads"][name], f"{case_name}/{name}")
        # sidbench logs the unscaled loss summed over the batch / batch; the fixture has each round's sum
        expected = sum(case["loss_sums"][name]) / case["batch"]
        torch.testing.assert_close(torch.as_tensor(float(logs[name])), torch.tensor(expected), rtol=1e-5, atol=1e-6)
