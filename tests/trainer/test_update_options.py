"""Options of an update (joint networks, clipping), LR schedules, logged values, stages, averages."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sidbench.teachers.load import load_teacher
from sidbench.trainer.context import StepContext
from sidbench.trainer.ema import EMA, ema_beta
from sidbench.trainer.schedule import WarmupAnneal, lr_schedule, restart

CPU = torch.device("cpu")


def linears(k: int = 3) -> list[torch.nn.Linear]:
    torch.manual_seed(0)
    return [torch.nn.Linear(2, 1, bias=False) for _ in range(k)]


def test_joint_update_steps_each_named_network_with_its_own_optimiser() -> None:
    a, b, c = linears()
    opts = {"a": torch.optim.SGD(a.parameters(), lr=0.1), "b": torch.optim.SGD(b.parameters(), lr=0.01),
            "c": torch.optim.SGD(c.parameters(), lr=0.1)}
    ctx = StepContext({"a": a, "b": b, "c": c}, opts, CPU, batch=1)
    x = torch.tensor([[1.0, 2.0]])
    w = {k: n.weight.detach().clone() for k, n in (("a", a), ("b", b), ("c", c))}
    ctx.update(["a", "b"], lambda n: (ctx.net("a")(x).sum() + ctx.net("b")(x).sum() + c(x).sum(), {}))
    # d/dw of w.x is x: each steps by its own lr; c is frozen in this update
    torch.testing.assert_close(a.weight.detach(), w["a"] - 0.1 * x)
    torch.testing.assert_close(b.weight.detach(), w["b"] - 0.01 * x)
    assert torch.equal(c.weight.detach(), w["c"]) and c.weight.grad is None
    with pytest.raises(KeyError, match="no optimiser of that name"):
        ctx.update(["a", "d"], lambda n: (a(x).sum(), {}))


def test_clipping_by_value_then_by_norm_over_all_updated_networks() -> None:
    a, b, _ = linears()
    ctx = StepContext({"a": a, "b": b}, {"a": torch.optim.SGD(a.parameters(), lr=1.0),
                                         "b": torch.optim.SGD(b.parameters(), lr=1.0)}, CPU, batch=1)
    x = torch.tensor([[3.0, -4.0]])
    wa, wb = a.weight.detach().clone(), b.weight.detach().clone()
    ctx.update(["a", "b"], lambda n: (a(x).sum() + b(x).sum(), {}), clip_grad_norm=1.0)
    # both gradients are x (norm 5 each, sqrt(50) together): scaled to a joint norm of 1
    torch.testing.assert_close(a.weight.detach(), wa - x / 50**0.5)
    torch.testing.assert_close(b.weight.detach(), wb - x / 50**0.5)
    wa = a.weight.detach().clone()
    ctx.update("a", lambda n: (a(x).sum(), {}), clip_grad_value=1.0)
    torch.testing.assert_close(a.weight.detach(), wa - torch.tensor([[1.0, -1.0]]))


def test_warmup_then_constant_or_annealed_and_restarted() -> None:
    assert [WarmupAnneal(4)(t) for t in range(6)] == [0, 0.25, 0.5, 0.75, 1, 1]
    cos = WarmupAnneal(0, "cosine", 10, final=0.1)
    assert cos(0) == 1 and cos(5) == pytest.approx(0.1 + 0.9 * 0.5) and cos(10) == pytest.approx(0.1) and cos(20) == pytest.approx(0.1)
    assert WarmupAnneal(2, "linear", 4)(4) == pytest.approx(0.5)
    (a,) = linears(1)
    opt = torch.optim.SGD(a.parameters(), lr=0.2)
    sched = lr_schedule(opt, warmup=4)
    for _ in range(3):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.15)
    state = sched.state_dict()
    opt2 = torch.optim.SGD(a.parameters(), lr=0.2)
    sched2 = lr_schedule(opt2, warmup=4)
    sched2.load_state_dict(state)
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.2)  # continued where the saved one was
    restart(sched2)
    assert opt2.param_groups[0]["lr"] == 0 and sched2.last_epoch == 0
    with pytest.raises(ValueError, match="unknown LR annealing"):
        WarmupAnneal(0, "exp")


def test_logged_values_are_averaged_per_iteration_without_reading_them() -> None:
    (a,) = linears(1)
    ctx = StepContext({"a": a}, {"a": torch.optim.SGD(a.parameters(), lr=0.1)}, CPU, batch=4, batch_gpu=2)
    def loss_fn(n: int) -> tuple[torch.Tensor, dict]:
        ctx.log("logits", torch.tensor(float(n)))
        return a(torch.ones(n, 2)).sum(), {"loss": torch.tensor(2.0)}
    logs = ctx.update("a", loss_fn)
    ctx.log("step", 3)
    taken = ctx.take_logs()
    assert isinstance(taken["logits"], torch.Tensor) and taken == {"logits": 2.0, "step": 3.0}
    assert logs["loss"] == 2.0 and ctx.take_logs() == {}


def test_ema_ramp_up_reads_the_images_seen_before_the_batch() -> None:
    (a,) = linears(1)
    ema = EMA(a, halflife_kimg=10, rampup=0.5)
    with torch.no_grad():
        a.weight.add_(1.0)
    # the first update has seen 0 images before its batch: the average becomes the network
    assert ema.update(a, 8, 0) == 0.0 and torch.equal(ema.module.weight, a.weight)
    assert ema_beta(8, 16, 10, 0.5) == pytest.approx(0.5)  # half-life min(10k, 16 x 0.5) = 8 images


def test_stage_boundary_resets_optimiser_and_ema_and_promotes_the_student(tiny_teacher: Path, tmp_path: Path) -> None:
    from sidbench.config import compose
    from sidbench.schema import defaults
    from sidbench.testing.staged import StagedToy
    from sidbench.trainer.loop import Trainer

    cfg = compose(["dataset=digits", f"dataset.teacher.path={tiny_teacher}", "trainer.kimg=0.048", "trainer.batch=8",
                   "trainer.checkpoint_every_kimg=0", "trainer.eval_every_kimg=0", "device=cpu"])
    method_cfg = OmegaConf.create(defaults(StagedToy.settings))
    toy = StagedToy(load_teacher(cfg.dataset.teacher, CPU), method_cfg, CPU)
    trainer = Trainer(cfg.trainer, toy, tmp_path, CPU)
    seen: list[tuple[int, int, float, bool, bool]] = []
    original = toy.enter_stage

    def watch(index, stage):  # noqa: ANN001, ANN202
        g = toy.generator
        steps = {id(p): s["step"] for p, s in toy.optimizers()["generator"].state.items()}
        seen.append((index, trainer.progress.iteration, toy.optimizers()["generator"].param_groups[0]["lr"], not steps,
                     all(torch.equal(e, p) for e, p in zip(trainer.ema.module.parameters(), g.parameters()))))
        original(index, stage)
        assert all(torch.equal(t, p) for t, p in zip(toy.target.parameters(), g.parameters()))

    toy.enter_stage = watch
    trainer.train()
    # the boundary at 32 images: entered once, before iteration 4, with the generator's Adam
    # state cleared, its LR warm-up restarted at 0 and its EMA equal to it
    assert seen == [(1, 4, 0.0, True, True)]
    assert trainer.progress.stage == 1 and toy.promotions == 1
    # the generator's optimiser restarted (2 steps since), the aux's did not (6 steps)
    step = lambda name: int(next(iter(toy.optimizers()[name].state.values()))["step"])  # noqa: E731
    assert (step("generator"), step("aux")) == (2, 6)
    assert toy.sampling() == {"sampler": "one_step", "sigmas": [2.5], "nfe": 1}
    # the method's own average moved with mu = 0.9
    assert not all(torch.equal(e, p) for e, p in zip(toy.aux_average.module.parameters(), toy.aux.parameters()))


def test_budget_anneal_factor_follows_the_used_fraction() -> None:
    from sidbench.trainer.schedule import BudgetAnneal

    cos, lin = BudgetAnneal("cosine", start=0.5, final=0.1), BudgetAnneal("linear", start=0.0, final=0.0)
    assert [cos(f) for f in (0.0, 0.25, 0.5)] == [1.0, 1.0, 1.0]
    assert cos(0.75) == pytest.approx(0.55) and cos(1.0) == pytest.approx(0.1) and cos(1.3) == pytest.approx(0.1)
    assert lin(0.25) == pytest.approx(0.75) and lin(1.0) == 0.0
    assert BudgetAnneal()(0.9) == 1.0 and not BudgetAnneal().enabled  # off by default
    with pytest.raises(ValueError, match="unknown LR anneal"):
        BudgetAnneal("step")
    with pytest.raises(ValueError, match="start must be in"):
        BudgetAnneal("cosine", start=1.0)


def _staged_trainer(tiny_teacher: Path, tmp_path: Path, *extra: str):  # noqa: ANN202
    from sidbench.config import compose
    from sidbench.schema import defaults
    from sidbench.testing.staged import StagedToy
    from sidbench.trainer.loop import Trainer

    # the trainer's defaults: SiD's digits preset (the main job's LR decay, batch) is not the toy's
    cfg = compose(["dataset=digits", "~preset", f"dataset.teacher.path={tiny_teacher}", "trainer.kimg=0.064", "trainer.batch=8",
                   "trainer.checkpoint_every_kimg=0", "trainer.eval_every_kimg=0", "device=cpu", *extra])
    toy = StagedToy(load_teacher(cfg.dataset.teacher, CPU), OmegaConf.create(defaults(StagedToy.settings)), CPU)
    return Trainer(cfg.trainer, toy, tmp_path, CPU), toy


def test_lr_anneal_multiplies_each_optimisers_own_schedule_by_the_budget_factor(tiny_teacher: Path, tmp_path: Path) -> None:
    # 8 iterations of batch 8 (a 64-image budget). The toy's generator has a 2-iteration warm-up,
    # restarted at its stage boundary (iteration 4); its aux network has no schedule.
    trainer, toy = _staged_trainer(tiny_teacher, tmp_path, "trainer.lr_anneal.shape=cosine",
                                   "trainer.lr_anneal.start=0.25", "trainer.lr_anneal.final=0.1")
    lrs: list[tuple[float, float]] = []
    original = toy.train_step

    def watch(ctx):  # noqa: ANN001, ANN202
        lrs.append(tuple(toy.optimizers()[k].param_groups[0]["lr"] for k in ("generator", "aux")))
        return original(ctx)

    toy.train_step = watch
    trainer.train()

    def factor(t: int) -> float:  # the budget used before iteration t is t/8; cosine from 1/4 on
        f = max(t / 8 - 0.25, 0.0) / 0.75
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * f))

    warmup = [0.0, 0.5, 1.0, 1.0, 0.0, 0.5, 1.0, 1.0]
    lr = toy.cfg.lr
    assert len(lrs) == 8
    for t, (g, a) in enumerate(lrs):
        assert g == pytest.approx(lr * warmup[t] * factor(t), rel=1e-12, abs=1e-15), t
        assert a == pytest.approx(lr * factor(t), rel=1e-12), t
    assert lrs[7][1] < 0.3 * lr  # it did anneal
    assert trainer.lr_factor == pytest.approx(factor(7))


def test_lr_anneal_off_leaves_the_optimisers_as_built_and_refuses_chained_schedules(tiny_teacher: Path, tmp_path: Path) -> None:
    from sidbench.trainer.schedule import UNANNEALED

    trainer, toy = _staged_trainer(tiny_teacher, tmp_path)
    trainer.train()
    assert all(UNANNEALED not in g for o in toy.optimizers().values() for g in o.param_groups)
    assert toy.optimizers()["aux"].param_groups[0]["lr"] == toy.cfg.lr

    trainer, toy = _staged_trainer(tiny_teacher, tmp_path / "b")
    toy._schedulers["aux"] = torch.optim.lr_scheduler.StepLR(toy.optimizers()["aux"], 2)  # noqa: SLF001
    from sidbench.trainer.loop import Trainer

    with pytest.raises(TypeError, match="closed-form LambdaLR"):
        Trainer(OmegaConf.merge(trainer.cfg, {"lr_anneal": {"shape": "linear"}}), toy, tmp_path / "c", CPU)
