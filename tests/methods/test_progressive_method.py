"""Progressive distillation as a plugin (arXiv 2202.00512, docs/baselines.md#progressive-distillation):
the counted cost of an iteration, the teacher samples made once and cached, the stages through the
real trainer, the analytic Gaussian, the one-line errors, and a saved multi-step student scored by
`sidbench fid`."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import sidbench.methods.baselines.progressive.method as progressive  # noqa: F401  (registers "progressive")
from sidbench.config import compose
from sidbench.methods import METHODS
from sidbench.teachers.load import load_teacher
from sidbench.trainer.compute import ComputeCounter
from sidbench.trainer.context import StepContext
from sidbench.trainer.loop import Trainer


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Teacher samples go to a cache of this test's own."""
    monkeypatch.setenv("SIDBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def compose_pd(teacher_path: Path, **method: object) -> OmegaConf:
    settings = {"start_steps": 4, "final_steps": 1, "stage_iterations": 2, "num_teacher_samples": 6,
                "teacher_sampler_steps": 2, "teacher_sample_batch": 4, **method}
    return compose(["method=progressive", "dataset=digits", f"dataset.teacher.path={teacher_path}",
                    *[f"method.{k}={v}" for k, v in settings.items()]])


def make_pd(teacher_path: Path, batch: int = 4, **method: object):
    cfg = compose_pd(teacher_path, **method)
    teacher = load_teacher(cfg.dataset.teacher, "cpu")
    pd = METHODS.get("progressive")(teacher, cfg.method, torch.device("cpu"), cfg)
    counter = ComputeCounter()
    counter.attach({**pd.frozen_networks(), **{k: a.module for k, a in pd.averages().items()}, **pd.networks()})
    ctx = StepContext(pd.networks(), pd.optimizers(), torch.device("cpu"), batch=batch, counter=counter)
    return pd, ctx, counter, teacher, cfg


def test_counted_passes_match_a_hand_count_of_the_calls(tiny_teacher: Path) -> None:
    pd, ctx, counter, _, _ = make_pd(tiny_teacher)
    with ctx.precompute():  # as the trainer calls prepare
        pd.prepare(ctx)
    counter.take()
    with counter.iteration():
        pd.train_step(ctx)
    # By hand, per image: the stage's teacher takes two Euler steps (2 forwards, no graph), the
    # student one forward and a backward to its weights (1 + 2).
    assert counter.calls == [("teacher", 4, False, False), ("teacher", 4, False, False), ("student", 4, True, True)]
    cost = counter.take()
    assert cost.passes == (2 + 3) * 4 and cost.teacher_passes == 2 * 4 and cost.flops > 0
    assert ctx.take_logs() == {"steps": 4.0, "real_data": 0.0}


def test_teacher_samples_are_charged_once_then_reused_at_their_recorded_cost(tiny_teacher: Path, _cache: Path) -> None:
    def prepared(**method: object):
        pd, ctx, counter, teacher, _ = make_pd(tiny_teacher, **method)
        calls: list[int] = []
        teacher.net.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
        with ctx.precompute():  # as the trainer calls prepare
            pd.prepare(ctx)
        return pd, counter.take(), calls

    pd, made, calls = prepared()
    # 6 samples of Heun with 2 steps: 2 x 2 - 1 = 3 teacher calls each, in chunks of 4 and 2
    assert made.teacher_passes == made.passes == 6 * 3 and made.flops > 0
    assert calls == [4, 4, 4, 2, 2, 2]
    assert len(list(_cache.rglob("*.safetensors"))) == 1

    # A second run with the same teacher, steps, count and seed loads the cache: no teacher call,
    # and it is charged what making the samples cost (so warm and cold runs cost the same).
    again, reused, calls = prepared()
    assert calls == []
    assert (reused.passes, reused.teacher_passes) == (made.passes, made.teacher_passes)
    assert reused.flops == pytest.approx(made.flops)
    assert torch.equal(again.images.samples.images, pd.images.samples.images)

    # Another seed is another set of samples, made again.
    other, _, calls = prepared(teacher_sample_seed=7)
    assert calls == [4, 4, 4, 2, 2, 2] and not torch.equal(other.images.samples.images, pd.images.samples.images)
    assert len(list(_cache.rglob("*.safetensors"))) == 2


def test_a_resumed_method_is_prepared_again_from_the_cache(tiny_teacher: Path) -> None:
    pd, ctx, _, _, _ = make_pd(tiny_teacher)
    with ctx.precompute():
        pd.prepare(ctx)
    resumed, ctx2, counter2, _, _ = make_pd(tiny_teacher)
    with ctx2.precompute():  # the trainer prepares a resumed run too (and drops this charge)
        resumed.prepare(ctx2)
    counter2.take()
    with counter2.iteration():
        resumed.train_step(ctx2)
    assert torch.equal(resumed.images.samples.images, pd.images.samples.images)
    assert counter2.take().teacher_passes == 2 * 4  # the iteration's own calls only


def test_stages_halve_the_steps_promote_the_student_and_reset_its_optimiser(tiny_teacher: Path, tmp_path: Path) -> None:
    pd, _, _, teacher, cfg = make_pd(tiny_teacher)
    seen: list[dict] = []
    enter = pd.enter_stage

    def spy(index: int, stage) -> None:
        before = {"adam_state": len(pd.opt.state), "lr": pd.opt.param_groups[0]["lr"]}
        enter(index, stage)
        same = all(torch.equal(a, b) for a, b in zip(pd.stage_teacher.state_dict().values(), pd.student.state_dict().values()))
        seen.append({**before, "index": index, "steps": pd.num_steps, "teacher_is_student": same,
                     "frozen": pd.frozen_networks()["teacher"] is pd.stage_teacher})

    pd.enter_stage = spy
    steps_logged: list[int] = []
    step = pd.train_step

    def logging_step(ctx):
        out = step(ctx)
        steps_logged.append(pd.num_steps)
        return out

    pd.train_step = logging_step
    # 3 stages of batch 4: 4 steps for K = 2 iterations, then 2 steps and 1 step for 2K = 4 each
    # (the published lengths): 10 iterations = 0.04 kimg
    trainer_cfg = OmegaConf.merge(cfg.trainer, {"kimg": 0.04, "batch": 4, "checkpoint_every_kimg": 0,
                                                "eval_every_kimg": 0, "eval_at_kimg": [], "count_flops": False})
    trainer = Trainer(trainer_cfg, pd, tmp_path, torch.device("cpu"))
    assert [s.start for s in trainer.stages] == [0.0, 2.0, 6.0] and {s.unit for s in trainer.stages} == {"iterations"}
    progress = trainer.train()
    assert progress.iteration == 10 and progress.stage == 2
    assert steps_logged == [4, 4, 2, 2, 2, 2, 1, 1, 1, 1]
    assert [s["steps"] for s in seen] == [2, 1] and [s["index"] for s in seen] == [1, 2]
    assert all(s["adam_state"] == 0 for s in seen)  # the trainer cleared Adam before enter_stage
    assert all(s["lr"] == pytest.approx(float(cfg.method.lr)) for s in seen)  # the schedule restarted (no warm-up)
    assert all(s["teacher_is_student"] and s["frozen"] for s in seen)
    assert pd.sampling()["nfe"] == 1 and pd.sampling()["sigmas"] == pytest.approx([80.0, 0.002], rel=1e-12)  # the EDM-form grid's end
    # the teacher's own network is never changed
    original = load_teacher(cfg.dataset.teacher).net.state_dict()
    assert all(torch.equal(v, original[k]) for k, v in teacher.net.state_dict().items())

    # Resume: a fresh method restores the stage (so the step count) and the promoted teacher.
    fresh, _, _, _, _ = make_pd(tiny_teacher)
    again = Trainer(trainer_cfg, fresh, tmp_path, torch.device("cpu"))
    assert again.resume()
    assert fresh.num_steps == 1 and fresh.stage == 2
    for a, b in zip(fresh.stage_teacher.state_dict().values(), pd.stage_teacher.state_dict().values()):
        assert torch.equal(a, b)


def test_learning_rate_anneals_within_each_stage(tiny_teacher: Path, tmp_path: Path) -> None:
    # every stage K long here (few_step_stage_factor=1): the warm-up and the restart are the point
    pd, _, _, _, cfg = make_pd(tiny_teacher, stage_iterations=4, start_steps=2, warmup_iterations=1, few_step_stage_factor=1)
    lrs: list[float] = []
    step = pd.train_step
    pd.train_step = lambda ctx: (lrs.append(pd.opt.param_groups[0]["lr"]), step(ctx))[1]
    trainer_cfg = OmegaConf.merge(cfg.trainer, {"kimg": 0.032, "batch": 4, "checkpoint_every_kimg": 0,
                                                "eval_every_kimg": 0, "eval_at_kimg": [], "count_flops": False})
    Trainer(trainer_cfg, pd, tmp_path, torch.device("cpu")).train()
    lr = float(cfg.method.lr)
    # warm-up 1 iteration (factor 0), then linear from 1 to 0 over the 3 remaining: 1, 2/3, 1/3
    stage = [0.0, lr, lr * 2 / 3, lr / 3]
    assert lrs == pytest.approx(stage + stage)


def test_two_and_one_step_stages_run_2k_with_their_lr_annealed_over_2k(tiny_teacher: Path, tmp_path: Path) -> None:
    """The authors' EDM-form schedule (openai/consistency_models_cifar10, jcm/losses.py
    get_ema_scales_fn and jcm/train.py): the 2- and 1-step stages last 2K, a fresh Adam each, its
    LR decayed linearly to 0 over the stage's length (optax.linear_schedule: lr (1 - c / length) at
    the stage's c-th update), then held at 0. By hand for K = 2, 4 -> 2 -> 1 steps."""
    pd, _, _, _, cfg = make_pd(tiny_teacher)  # start_steps 4, stage_iterations 2, the default factor 2
    lr = float(cfg.method.lr)
    lrs: list[float] = []
    step = pd.train_step
    pd.train_step = lambda ctx: (lrs.append(pd.opt.param_groups[0]["lr"]), step(ctx))[1]
    trainer_cfg = OmegaConf.merge(cfg.trainer, {"kimg": 0.032, "batch": 4, "checkpoint_every_kimg": 0,
                                                "eval_every_kimg": 0, "eval_at_kimg": [], "count_flops": False})
    Trainer(trainer_cfg, pd, tmp_path, torch.device("cpu")).train()  # 8 iterations: 2 into the 1-step stage
    assert pd.stage_lengths == [2, 4, 4]
    assert lrs == pytest.approx([lr, lr / 2, lr, lr * 3 / 4, lr / 2, lr / 4, lr, lr * 3 / 4])

    # Resumed in the 1-step stage, the schedule is that stage's (4 long) and then stays at 0.
    fresh, _, _, _, _ = make_pd(tiny_teacher)
    lrs2: list[float] = []
    step2 = fresh.train_step
    fresh.train_step = lambda ctx: (lrs2.append(fresh.opt.param_groups[0]["lr"]), step2(ctx))[1]
    again = Trainer(OmegaConf.merge(trainer_cfg, {"kimg": 0.048}), fresh, tmp_path, torch.device("cpu"))
    assert again.resume() and fresh.stage == 2
    again.train()
    assert lrs2 == pytest.approx([lr / 2, lr / 4, 0.0, 0.0])


def test_few_step_stage_factor_one_gives_every_stage_k(tiny_teacher: Path) -> None:
    pd, _, _, _, _ = make_pd(tiny_teacher, few_step_stage_factor=1, stage_iterations=3)
    assert pd.stage_lengths == [3, 3, 3] and [s.start for s in pd.stages()] == [0.0, 3.0, 6.0]
    pd, _, _, _, _ = make_pd(tiny_teacher, few_step_stage_factor=3, stage_iterations=3, start_steps=8, final_steps=2)
    assert pd.stage_lengths == [3, 3, 9]  # 8, 4 steps: K; 2 steps: 3K (final_steps=2: no 1-step stage)


def test_loss_is_the_batch_mean_of_per_image_pixel_means(tiny_teacher: Path) -> None:
    """The logged loss (and what the context divides by the batch) is max(1/t^2, 1) |D - x_tilde|^2
    averaged over each image's pixels, then over the batch, as every reference reduces it; checked
    against the same computation by hand from the draws the update made."""
    from sidbench.methods.baselines.progressive.loss import stage_sigmas, teacher_target

    pd, ctx, _, _, _ = make_pd(tiny_teacher, final_zero="false")
    with ctx.precompute():
        pd.prepare(ctx)
    draws: dict[str, list[torch.Tensor]] = {"randint": [], "randn_like": []}
    randint, randn_like = torch.randint, torch.randn_like

    def keep(name, fn):
        def inner(*args, **kwargs):
            out = fn(*args, **kwargs)
            draws[name].append(out)
            return out
        return inner

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "randint", keep("randint", randint))
        mp.setattr(torch, "randn_like", keep("randn_like", randn_like))
        logs = pd.train_step(ctx)
    (which, steps), (noise,) = draws["randint"], draws["randn_like"]
    x = pd.images.samples.images[which]
    t, t2, t3 = stage_sigmas(4, steps, final_zero=False)
    x_t = x + t * noise
    with torch.no_grad():
        target = teacher_target(pd.teacher.net, x_t, t, t2, t3)
        # the student before its update: the teacher's copy
        diff = pd.teacher.net(x_t, t.flatten(), None) - target
    by_hand = ((1 / t.flatten() ** 2).clamp(min=1) * diff.pow(2).mean(dim=(1, 2, 3))).mean()
    assert float(logs["progressive"]) == pytest.approx(float(by_hand), rel=1e-5)


@pytest.mark.parametrize(("override", "message"), [
    ({"start_steps": 12}, "start_steps=12 is not a power of two"),
    ({"start_steps": 4, "final_steps": 8}, "final_steps=8 is above method.start_steps=4"),
    ({"final_steps": 3}, "final_steps=3 is not a power of two"),
    ({"data": "pictures"}, "method.data=pictures: must be one of teacher, real"),
    ({"few_step_stage_factor": 0}, "few_step_stage_factor=0: must be an integer >= 1"),
    ({"warmup_iterations": 280}, "method.warmup_iterations=280 must be shorter than a stage"),
])
def test_bad_settings_are_refused_in_one_line_before_the_run(tiny_teacher: Path, override: dict, message: str,
                                                             refused) -> None:  # noqa: ANN001 - the fixture
    line = refused("method=progressive", "dataset=digits", f"dataset.teacher.path={tiny_teacher}",
                   *[f"method.{k}={v}" for k, v in override.items()])
    assert message in line, line


def test_real_data_needs_images_and_draws_them(tiny_teacher: Path, refused) -> None:  # noqa: ANN001 - the fixture
    line = refused("method=progressive", "dataset=digits", f"dataset.teacher.path={tiny_teacher}", "method.data=real",
                   "dataset.images.builtin=null")
    assert "method=progressive trains on real images and dataset digits has none" in line
    teacher = load_teacher(compose([f"dataset.teacher.path={tiny_teacher}"]).dataset.teacher, "cpu")

    from sidbench.data.real import open_real_images

    pd, _, _, _, cfg = make_pd(tiny_teacher, data="real")
    assert type(pd).uses_real_data(cfg.method) and not type(pd).uses_real_data(compose_pd(tiny_teacher).method)
    real = open_real_images(cfg.dataset, teacher.shape, teacher.label_dim)
    ctx = StepContext(pd.networks(), pd.optimizers(), torch.device("cpu"), batch=4, real_data=real)
    with ctx.precompute():
        pd.prepare(ctx)
    assert pd.images.samples is None  # nothing made from the teacher
    pd.train_step(ctx)
    assert ctx.take_logs()["real_data"] == 1.0


@pytest.mark.parametrize("final_zero", [False, True])
def test_saved_recipe_samples_with_euler_on_the_student_grid(tiny_teacher: Path, final_zero: bool) -> None:
    pd, _, _, teacher, _ = make_pd(tiny_teacher, start_steps=2, final_zero=final_zero)
    recipe = pd.sampling()
    assert recipe["sampler"] == "euler" and recipe["nfe"] == 2 and len(recipe["sigmas"]) == 3
    # the last point: 0 (the original form's x prediction), or sigma_min (the EDM-form code's)
    assert recipe["sigmas"][2] == (0.0 if final_zero else pytest.approx(0.002, rel=1e-12))
    # sigma(i/N) on Karras' schedule, by hand: sigma(1/2) = ((80^(1/7) + 0.002^(1/7)) / 2)^7
    assert recipe["sigmas"][1] == pytest.approx(((80 ** (1 / 7) + 0.002 ** (1 / 7)) / 2) ** 7)
    calls: list[float] = []
    teacher.net.register_forward_pre_hook(lambda m, a: calls.append(float(a[1][0])))
    z = torch.randn(3, 1, 8, 8)
    x = pd.sample(teacher.net, z, None)
    assert calls == pytest.approx(recipe["sigmas"][:2])
    # by hand: x1 = 80 z + (s1 - 80)(80 z - D(80 z, 80))/80, then x = D(x1, s1) with final_zero,
    # else one more Euler step x = x1 + (0.002 - s1)(x1 - D(x1, s1))/s1
    with torch.no_grad():
        x0 = 80 * z.double()
        s1 = recipe["sigmas"][1]
        x1 = x0 + (s1 - 80) * (x0 - teacher.net(x0, torch.full((3,), 80.0), None).double()) / 80
        d1 = teacher.net(x1, torch.full((3,), s1), None).double()
        want = d1 if final_zero else x1 + (0.002 - s1) * (x1 - d1) / s1
    torch.testing.assert_close(x.double(), want, rtol=1e-5, atol=1e-5)
    # and a reader of the saved recipe draws the same images
    from sidbench.diffusion import sample

    assert torch.equal(sample(teacher.net, z, None, recipe), x)


# -- the analytic Gaussian -------------------------------------------------------------------------
def euler_law(mu: torch.Tensor, cov: torch.Tensor, sigmas: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Law of Euler sampling with the EXACT denoiser of N(mu, S) from sigmas[0] z down `sigmas`
    (ending at 0), by hand in S's eigenbasis: each Euler step s -> s' scales x - mu by
    1 + (s' - s) s / (lambda + s^2); the last step to 0 returns D, scaling by lambda / (lambda + s^2)."""
    lam, q = torch.linalg.eigh(cov.double())
    scale = torch.full_like(lam, sigmas[0])  # x - mu = s0 z - mu: noise part s0 z, offset -mu
    offset = -(q.T @ mu.double())
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        f = lam / (lam + s**2) if s_next == 0 else 1 + (s_next - s) * s / (lam + s**2)
        scale, offset = scale * f, offset * f
    return mu.double() + q @ offset, q @ torch.diag(scale**2) @ q.T


def frechet(m1, c1, m2, c2) -> float:
    from sidbench.eval.frechet import frechet_distance

    return frechet_distance(m1.numpy(), c1.numpy(), m2.numpy(), c2.numpy())


def test_gaussian_two_stages_reach_the_teachers_four_euler_steps(tmp_path: Path) -> None:
    """2 steps from the teacher's 4 Euler steps, then 1 from the 2-step student's 2. With a student
    family that represents every target exactly, the 1-step student's law must be the law of the
    TEACHER's 4 Euler steps on sigma(0), sigma(1/4), sigma(1/2), sigma(3/4), 0. That law has a known
    bias against the target (Euler steps from sigma 80 shrink the variance), pinned from the hand
    formula: the method cannot do better than its 2N-step Euler teacher."""
    from sidbench.testing.gaussian import Float32Input, GaussianTeacher, LevelTable, random_gaussian

    def sigma(f: float) -> float:  # Karras' schedule, by hand
        return (80 ** (1 / 7) + f * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7

    mu, cov = random_gaussian(4, seed=0)

    class Teacher(GaussianTeacher):
        def copy_network(self, **overrides):  # the student's family, on the 2-step student's grid
            return LevelTable([sigma(0), sigma(0.5)], self.target_mean, self.target_cov)

    teacher = Teacher(mu, cov)
    teacher.net = Float32Input(teacher.net).eval()
    torch.manual_seed(0)
    # Two stages of 100 iterations each (few_step_stage_factor=1) on a grid that ends at 0
    # (final_zero=true): the law below is that of Euler steps ending at 0.
    cfg = compose(["method=progressive", "method.start_steps=2", "method.final_steps=1", "method.lr=2e-2",
                   "method.stage_iterations=100", "method.few_step_stage_factor=1", "method.final_zero=true",
                   "method.num_teacher_samples=1024", "method.clip_grad_norm=null", "method.lr_anneal=cosine"])
    pd = METHODS.get("progressive")(teacher, cfg.method, torch.device("cpu"), cfg)
    target = (mu.double(), cov.double())
    start = frechet(*pd.student.one_step_law(), *target)
    trainer_cfg = OmegaConf.merge(cfg.trainer, {"kimg": 0.2 * 256, "batch": 256, "checkpoint_every_kimg": 0,
                                                "eval_every_kimg": 0, "eval_at_kimg": [], "count_flops": False})
    Trainer(trainer_cfg, pd, tmp_path, torch.device("cpu")).train()
    assert pd.num_steps == 1
    law = pd.student.one_step_law()
    four_euler = euler_law(mu, cov, [sigma(0), sigma(0.25), sigma(0.5), sigma(0.75), 0.0])
    bias = frechet(*four_euler, *target)
    assert start > 0.5  # the teacher's own 1-step output is its mean: far from the target
    assert frechet(*law, *four_euler) < 2e-3, f"{frechet(*law, *four_euler):.5f} from the 4-Euler-step law"
    assert frechet(*law, *target) == pytest.approx(bias, abs=2e-3)
    assert 0.2 < bias < 0.3  # 0.254: a large bias, 4 Euler steps from sigma 80 are far from the ODE


# -- end to end ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_run_saves_a_multistep_student_that_sidbench_fid_scores(tiny_teacher: Path, run_env: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from sidbench.cli import main
    from sidbench.eval.generators import load_generator
    from sidbench.run import run
    from sidbench.testing.tiny import tiny_overrides

    # 8 iterations of batch 8: a 4-step stage of 4 iterations, then the 2-step stage
    cfg = compose(tiny_overrides(tiny_teacher, method="progressive", run_name="pd", **{"tracking.enabled": "false",
        "method.start_steps": 4, "method.final_steps": 2, "method.stage_iterations": 4,
        "method.num_teacher_samples": 16, "method.teacher_sampler_steps": 2, "trainer.eval_at_kimg": "[]"}))
    result = run(cfg)
    run_dir = run_env / result.run_dir
    gen = load_generator(run_dir)
    assert gen.method == "progressive" and gen.recipe["sampler"] == "euler" and gen.nfe == 2
    assert len(gen.recipe["sigmas"]) == 3 and gen.recipe["sigmas"][-1] == pytest.approx(0.002, rel=1e-12)  # the EDM-form grid's end
    calls: list[int] = []
    gen.net.register_forward_pre_hook(lambda m, a: calls.append(1))
    gen(torch.randn(2, 1, 8, 8), None)
    assert len(calls) == 2  # 2 NFE

    capsys.readouterr()
    assert main(["fid", str(run_dir), "--num", "64", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    name, value = captured.out.strip().splitlines()[-1].split()
    assert name == "fd_pixel" and math.isfinite(float(value))
    assert "progressive" in captured.err and "2 NFE" in captured.err
    # the same samples as the run's own last evaluation (same noise, same recipe)
    assert float(value) == pytest.approx(result.metrics["eval/fd_pixel"], rel=1e-4)
