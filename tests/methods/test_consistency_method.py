"""Consistency distillation as a plugin (arXiv 2303.01469, docs/baselines.md#consistency-distillation):
the counted cost of an iteration, the target network's EMA, the shared dropout mask, the teacher
samples shared with progressive distillation, the multistep sampler, the analytic Gaussian, the
one-line errors, and a saved generator rebuilt and scored by `sidbench fid`."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import sidbench.methods.baselines.consistency.method as cd_module
import sidbench.methods.baselines.progressive.method  # noqa: F401  (registers "progressive")
from sidbench.config import ConfigError, compose
from sidbench.methods import METHODS
from sidbench.diffusion import karras_points, per_sample_noise, sample
from sidbench.teachers.load import load_teacher
from sidbench.teachers.networks import ConsistencyParam, EDMPrecond
from sidbench.trainer.compute import ComputeCounter
from sidbench.trainer.context import StepContext
from sidbench.trainer.loop import Trainer


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Teacher samples go to a cache of this test's own."""
    monkeypatch.setenv("SIDBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def make(teacher_path: Path, method: str = "consistency", batch: int = 4, **settings: object):
    settings = {"num_teacher_samples": 6, "teacher_sampler_steps": 2, "teacher_sample_batch": 4, **settings}
    cfg = compose([f"method={method}", "dataset=digits", f"dataset.teacher.path={teacher_path}",
                   *[f"method.{k}={v}" for k, v in settings.items()]])
    teacher = load_teacher(cfg.dataset.teacher, "cpu")
    m = METHODS.get(method)(teacher, cfg.method, torch.device("cpu"), cfg)
    counter = ComputeCounter()
    counter.attach({**m.frozen_networks(), **{k: a.module for k, a in m.averages().items()}, **m.networks()})
    ctx = StepContext(m.networks(), m.optimizers(), torch.device("cpu"), batch=batch, counter=counter)
    return m, ctx, counter, teacher


def test_counted_passes_match_a_hand_count_of_the_calls(tiny_teacher: Path) -> None:
    cd, ctx, counter, _ = make(tiny_teacher)
    with ctx.precompute():  # as the trainer calls prepare
        cd.prepare(ctx)
    counter.take()
    with counter.iteration():
        cd.train_step(ctx)
    # By hand, per image: the teacher's Heun step (2 forwards, no graph), f forward and backward to
    # its weights (1 + 2), the target network forward (1, no graph).
    assert counter.calls == [("teacher", 4, False, False), ("teacher", 4, False, False),
                             ("generator", 4, True, True), ("target", 4, False, False)]
    cost = counter.take()
    assert cost.passes == (2 + 3 + 1) * 4 and cost.teacher_passes == 2 * 4 and cost.flops > 0


def test_the_generator_is_a_consistency_function_of_a_teacher_copy(tiny_teacher: Path) -> None:
    cd, _, _, teacher = make(tiny_teacher)
    assert isinstance(cd.generator, ConsistencyParam) and cd.generator.model is not teacher.net.model
    assert cd.generator.state_dict().keys() == teacher.net.state_dict().keys()
    assert all(torch.equal(v, teacher.net.state_dict()[k]) for k, v in cd.generator.state_dict().items())
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(cd.generator(x, torch.full((2,), 0.002)), x)  # the boundary condition
    assert cd.plan_networks(cd.cfg, teacher.constructor)["generator"] == teacher.constructor  # a plain EDM constructor


@pytest.mark.parametrize("mu", [0.0, 0.5])
def test_target_is_an_ema_of_the_generator_with_constant_mu(tiny_teacher: Path, mu: float) -> None:
    cd, ctx, _, _ = make(tiny_teacher, mu=mu, lr=1e-2)
    before = [p.clone() for p in cd.target.module.parameters()]
    with ctx.precompute():
        cd.prepare(ctx)
    cd.train_step(ctx)
    after = list(cd.generator.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))  # the update moved f
    for old, new, target in zip(before, after, cd.target.module.parameters()):
        torch.testing.assert_close(target, mu * old + (1 - mu) * new.detach(), rtol=0, atol=1e-7)


def test_target_sees_the_online_networks_dropout_mask(tiny_teacher: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the teacher step and the grid made trivial (x_t2 = x_t, t2 = t) and the target equal to
    f (mu = 0, first update), the loss is 0 exactly when both calls drop the same units."""
    monkeypatch.setattr(cd_module, "heun_step", lambda teacher, x_t, t, t2, labels=None: x_t)
    same = cd_module.adjacent_points
    monkeypatch.setattr(cd_module, "adjacent_points", lambda *a, **k: (same(*a, **k)[0],) * 2)
    cd, ctx, _, _ = make(tiny_teacher, dropout=0.5)
    with ctx.precompute():
        cd.prepare(ctx)
    assert float(cd.train_step(ctx)["consistency"]) == 0.0
    # ...and without restoring the random state the masks differ: dropout is really on
    monkeypatch.setattr(cd_module.rng, "restore", lambda state: None)
    cd, ctx, _, _ = make(tiny_teacher, dropout=0.5)
    with ctx.precompute():
        cd.prepare(ctx)
    assert float(cd.train_step(ctx)["consistency"]) > 0.0


def test_consistency_reuses_the_teacher_samples_progressive_made(tiny_teacher: Path) -> None:
    pd, ctx, counter, _ = make(tiny_teacher, method="progressive")
    with ctx.precompute():
        pd.prepare(ctx)
    made = counter.take()
    cd, ctx2, counter2, teacher = make(tiny_teacher)
    calls: list[int] = []
    teacher.net.register_forward_pre_hook(lambda m, a: calls.append(1))
    with ctx2.precompute():
        cd.prepare(ctx2)
    assert calls == [] and torch.equal(cd.images.samples.images, pd.images.samples.images)
    assert counter2.take().teacher_passes == made.teacher_passes == 6 * 3  # charged the recorded cost


def test_sampling_rebuilds_the_consistency_function_from_a_plain_edm_network(tiny_teacher: Path) -> None:
    cd, _, _, teacher = make(tiny_teacher, sampling_sigmas="[80.0,0.8]")
    recipe = cd.sampling()
    assert recipe == {"sampler": "consistency", "sigmas": [80.0, 0.8], "sigma_min": 0.002, "nfe": 2}
    plain = teacher.copy_network().eval()  # what load_teacher_file builds from a saved generator
    assert isinstance(plain, EDMPrecond)
    z = torch.randn(4, 1, 8, 8)
    one = sample(plain, z, None, {**recipe, "sigmas": [80.0], "nfe": 1})
    with torch.no_grad():
        torch.testing.assert_close(one, ConsistencyParam(plain)(80 * z, torch.full((4,), 80.0)))
    calls: list[float] = []
    plain.model.register_forward_pre_hook(lambda m, a: calls.append(1))
    two = sample(plain, z, None, recipe)
    assert len(calls) == 2  # 2 NFE
    # the fresh noise is a function of z: the same z gives the same images, in any batch
    torch.testing.assert_close(sample(plain, z, None, recipe), two, rtol=0, atol=0)
    halves = torch.cat([sample(plain, z[:1], None, recipe), sample(plain, z[1:], None, recipe)])
    torch.testing.assert_close(halves, two, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(two, one)
    # by hand: x1 = f(80 z, 80); x = f(x1 + sqrt(0.8^2 - 0.002^2) n, 0.8) with n from z
    f = ConsistencyParam(plain)
    noise = per_sample_noise(z, 1)[0]
    with torch.no_grad():
        x1 = f(80 * z, torch.full((4,), 80.0))
        want = f(x1 + math.sqrt(0.8**2 - 0.002**2) * noise, torch.full((4,), 0.8))
    torch.testing.assert_close(two, want)
    # the method samples its own (wrapped) generator with the same recipe: the same images
    torch.testing.assert_close(cd.sample(f, z, None), two, rtol=0, atol=0)


@pytest.mark.parametrize(("override", "message"), [
    ({"mu": 1.0}, "method.mu=1.0: must be a number in [0, 1)"),
    ({"mu": -0.1}, "method.mu=-0.1: must be a number in [0, 1)"),
    ({"distance": "l1"}, "method.distance=l1: must be one of l2, lpips"),
    ({"sampling_sigmas": "[0.8,80.0]"}, "must be a decreasing list"),
    ({"sampling_sigmas": "[80.0,0.001]"}, "must be a decreasing list"),
    ({"num_points": 1}, "method.num_points=1: must be an integer >= 2"),
    ({"distance": "lpips"}, "needs RGB images"),  # the digits are gray
    ({"data": "real"}, "method=consistency trains on real images and dataset digits has none"),
    ({"lpips_net": "alex", "lpips_pooling": "avg"}, "method.lpips_pooling='avg' with method.lpips_net='alex'"),
])
def test_bad_settings_are_refused_in_one_line_before_the_run(tiny_teacher: Path, override: dict, message: str,
                                                             refused) -> None:  # noqa: ANN001 - the fixture
    extra = ["dataset.images.builtin=null"] if override.get("data") == "real" else []
    line = refused("method=consistency", "dataset=digits", f"dataset.teacher.path={tiny_teacher}", *extra,
                   *[f"method.{k}={v}" for k, v in override.items()])
    assert message in line, line


def test_lpips_without_the_package_is_a_one_line_config_error(tiny_teacher: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lpips", None)  # `import lpips` now raises ImportError
    with pytest.raises(ConfigError, match="lpips") as info:
        make(tiny_teacher, distance="lpips", lpips_adapt_gray=True)
    assert "\n" not in str(info.value)


# -- the published settings (docs/baselines.md#consistency-distillation) ----------------------------
# dataset: (N, mu, LPIPS pooling, RAdam lr, batch, EMA rate per update, precision); cifar10-cond
# takes cifar10's and the other 64x64 datasets imagenet64's (derived)
CIFAR10 = (18, 0.0, "max", 4e-4, 512, 0.9999, "fp32")
IMAGENET64 = (40, 0.95, "avg", 8e-6, 2048, 0.9999432189950708, "bf16")
PUBLISHED = {"cifar10": CIFAR10, "cifar10-cond": CIFAR10, "imagenet64": IMAGENET64, "ffhq64": IMAGENET64,
             "afhqv2-64": IMAGENET64}


@pytest.mark.parametrize("dataset", sorted(PUBLISHED))
def test_presets_carry_the_published_settings(dataset: str) -> None:
    cfg = compose(["method=consistency", f"dataset={dataset}"])
    m, t = cfg.method, cfg.trainer
    num_points, mu, pooling, lr, batch, ema, precision = PUBLISHED[dataset]
    assert (m.num_points, m.mu, m.distance, m.lpips_net, m.lpips_pooling, m.lpips_resize) == (
        num_points, mu, "lpips", "vgg", pooling, 224)
    assert (m.lr, list(m.betas), m.eps, m.clip_grad_norm, m.dropout) == (lr, [0.9, 0.999], 1e-8, None, 0.0)
    assert (t.batch, t.ema_beta, t.precision) == (batch, ema, precision)  # the EMA: a fixed rate from the first update
    assert list(m.sampling_sigmas) == [80.0] and (m.sigma_min, m.sigma_max, m.rho) == (0.002, 80.0, 7.0)


def test_imagenet64s_published_two_step_sigma_is_point_22_of_the_40_point_grid() -> None:
    # scripts/launch.sh samples CD on ImageNet 64 in two steps at ts 0,22,39 of 40: sigma 80, then 1.3824
    assert float(karras_points(40)[22]) == pytest.approx(1.3824, abs=1e-4)


def test_the_optimiser_is_radam_with_the_published_hyperparameters(tiny_teacher: Path) -> None:
    cd, _, _, _ = make(tiny_teacher)
    assert type(cd.opt) is torch.optim.RAdam and len(cd.opt.param_groups) == 1
    group = cd.opt.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"], group["decoupled_weight_decay"]) == (
        4e-4, (0.9, 0.999), 1e-8, 0.0, False)
    assert cd.dropout == 0.0 and cd.cfg.clip_grad_norm is None


# -- the analytic Gaussian -------------------------------------------------------------------------
def heun_law(mu: torch.Tensor, cov: torch.Tensor, sigmas: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Law of Heun sampling with the EXACT denoiser of N(mu, S) from sigmas[0] z down `sigmas`
    (all > 0), by hand in S's eigenbasis: with a(s) = s / (lambda + s^2), the score direction
    (x - D(x, s)) / s is a(s) (x - mu), so one Heun step s -> s' scales x - mu by
    1 + (s' - s) (a(s) + a(s') e) / 2, where e = 1 + (s' - s) a(s) is the Euler step's factor."""
    lam, q = torch.linalg.eigh(cov.double())
    scale = torch.full_like(lam, sigmas[0])
    offset = -(q.T @ mu.double())
    for s, s2 in zip(sigmas[:-1], sigmas[1:]):
        a, a2 = s / (lam + s**2), s2 / (lam + s2**2)
        f = 1 + (s2 - s) * (a + a2 * (1 + (s2 - s) * a)) / 2
        scale, offset = scale * f, offset * f
    return mu.double() + q @ offset, q @ torch.diag(scale**2) @ q.T


def frechet(m1, c1, m2, c2) -> float:
    from sidbench.eval.frechet import frechet_distance

    return frechet_distance(m1.numpy(), c1.numpy(), m2.numpy(), c2.numpy())


def test_gaussian_one_step_function_reaches_the_teachers_heun_sampler(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """On N(mu, S) with the exact teacher, CD's fixed point is f(., 80) = the teacher's Heun steps
    down the N-point grid to sigma_min; its one-step law has a KNOWN bias against the target
    (N - 1 Heun steps are not the ODE, and it stops at sigma_min), pinned from the hand formula."""
    from sidbench.testing.gaussian import Float32Input, GaussianTeacher, LevelTable, random_gaussian

    num_points = 10
    levels = [float(s) for s in karras_points(num_points)]
    mu, cov = random_gaussian(4, seed=0)

    # f starts as the teacher's denoiser on the grid
    monkeypatch.setattr(cd_module, "consistency_function", lambda net, sigma_min: LevelTable(levels, mu, cov, boundary=True))

    teacher = GaussianTeacher(mu, cov)
    teacher.net = Float32Input(teacher.net).eval()
    torch.manual_seed(0)
    # RAdam's rectification damps its first few hundred steps: 2000 iterations at lr 5e-3 land within
    # 2e-4 of the fixed point (and stay within 1e-3 from 1600 to 2400 iterations)
    cfg = compose(["method=consistency", f"method.num_points={num_points}", "method.lr=5e-3", "method.mu=0",
                   "method.num_teacher_samples=1024"])
    cd = cd_module.ConsistencyDistillation(teacher, cfg.method, torch.device("cpu"), cfg)
    target = (mu.double(), cov.double())
    start = frechet(*cd.generator.one_step_law(), *target)
    trainer_cfg = OmegaConf.merge(cfg.trainer, {"kimg": 2.0 * 256, "batch": 256, "checkpoint_every_kimg": 0,
                                                "eval_every_kimg": 0, "eval_at_kimg": [], "count_flops": False})
    Trainer(trainer_cfg, cd, tmp_path, torch.device("cpu")).train()
    law = cd.generator.one_step_law()
    heun = heun_law(mu, cov, levels)
    bias = frechet(*heun, *target)
    assert start > 0.5  # the teacher's own 1-step output is its mean: far from the target
    assert frechet(*law, *heun) < 5e-3, f"{frechet(*law, *heun):.5f} from the Heun sampler's law"
    assert frechet(*law, *target) == pytest.approx(bias, abs=5e-3)
    assert 0.01 < bias < 0.1  # 0.043: nine Heun steps from sigma 80 come close to the target, not onto it


# -- end to end ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_run_saves_a_generator_that_sidbench_fid_rebuilds_and_scores(tiny_teacher: Path, run_env: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from sidbench.cli import main
    from sidbench.eval.generators import load_generator
    from sidbench.run import run
    from sidbench.testing.tiny import tiny_overrides

    cfg = compose(tiny_overrides(tiny_teacher, method="consistency", run_name="cd", **{"tracking.enabled": "false",
        "method.sampling_sigmas": "[80.0,0.8]", "method.num_points": 4, "method.mu": 0.5,
        "method.num_teacher_samples": 16, "method.teacher_sampler_steps": 2}))
    result = run(cfg)
    run_dir = run_env / result.run_dir
    gen = load_generator(run_dir)
    assert type(gen.net) is EDMPrecond  # rebuilt as a plain EDM network from the saved constructor
    assert gen.method == "consistency" and gen.recipe["sampler"] == "consistency" and gen.nfe == 2
    assert gen.recipe["sigmas"] == [80.0, 0.8] and gen.recipe["sigma_min"] == 0.002

    capsys.readouterr()
    assert main(["fid", str(run_dir), "--num", "64", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    name, value = captured.out.strip().splitlines()[-1].split()
    assert name == "fd_pixel" and math.isfinite(float(value))
    assert "consistency" in captured.err and "2 NFE" in captured.err
    # the same images as the run's own last evaluation: same z, and the fresh noise follows from z
    assert float(value) == pytest.approx(result.metrics["eval/fd_pixel"], rel=1e-4)
