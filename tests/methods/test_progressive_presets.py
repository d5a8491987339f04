"""Progressive distillation's presets hold the authors' settings (docs/baselines.md#progressive-distillation):
CIFAR-10 from the EDM-form configuration (openai/consistency_models_cifar10,
configs/cifar10_ve_progressive_distillation.py), ImageNet 64 from the original form's
(google-research diffusion_distillation, config/imagenet64_distill.py). The lengths and evaluation
points are worked out by hand from the published schedule."""
from __future__ import annotations

import pytest

from sidbench.config import compose


def preset(dataset: str):
    return compose(["method=progressive", f"dataset={dataset}"])


@pytest.mark.parametrize("dataset", ["cifar10", "cifar10-cond"])
def test_cifar10_presets_are_the_edm_form_configuration(dataset: str) -> None:
    cfg = preset(dataset)
    m, t = cfg.method, cfg.trainer
    assert (m.start_steps, m.final_steps, m.stage_iterations, m.few_step_stage_factor) == (4096, 1, 50000, 2)
    assert (m.lr, m.warmup_iterations, m.lr_anneal, m.lr_final, m.clip_grad_norm) == (5e-5, 0, "linear", 0.0, 1.0)
    assert list(m.betas) == [0.9, 0.999] and m.dropout == 0.0 and m.final_zero is False
    assert (m.sigma_min, m.sigma_max, m.rho) == (0.002, 80.0, 7.0)
    assert t.batch == 512 and t.ema_beta == 0.0
    # 11 stages (4096 .. 4 steps) of 50k and 2 (2 steps, 1 step) of 100k: 750k iterations of 512
    assert t.kimg == (11 * 50_000 + 2 * 100_000) * 512 / 1000
    # the ends of the 8-step (10 x 50k), 4-step (11 x 50k) and 2-step (+100k) stages
    assert list(t.eval_at_kimg) == [n * 512 / 1000 for n in (500_000, 550_000, 650_000)]


@pytest.mark.parametrize("dataset", ["imagenet64", "ffhq64", "afhqv2-64"])
def test_64x64_presets_are_the_original_imagenet_configuration(dataset: str) -> None:
    cfg = preset(dataset)
    m, t = cfg.method, cfg.trainer
    assert (m.start_steps, m.final_steps, m.stage_iterations, m.few_step_stage_factor) == (1024, 1, 50000, 1)
    assert (m.lr, m.warmup_iterations, m.lr_anneal, m.lr_final, m.clip_grad_norm) == (1e-4, 0, "linear", 0.0, 1.0)
    assert m.dropout == 0.0 and m.final_zero is True
    assert t.batch == 2048 and t.ema_beta == 0.0
    # 11 stages (1024 .. 1 steps) of 50k iterations of 2048
    assert t.kimg == 11 * 50_000 * 2048 / 1000
    # the ends of the 8-, 4- and 2-step stages (the 8th, 9th and 10th)
    assert list(t.eval_at_kimg) == [n * 50_000 * 2048 / 1000 for n in (8, 9, 10)]


@pytest.mark.parametrize("dataset", ["digits", "digits-cond"])
def test_digits_presets_fit_their_stages_and_evaluate_at_their_ends(dataset: str) -> None:
    """Derived presets: 5 stages (16 .. 1 steps), the last two twice as long as the others, and an
    evaluation at the end of each stage but the last (which ends the run)."""
    cfg = preset(dataset)
    m, t = cfg.method, cfg.trainer
    assert (m.start_steps, m.final_steps, m.few_step_stage_factor) == (16, 1, 2)
    k = m.stage_iterations
    ends = [k, 2 * k, 3 * k, 5 * k]
    assert list(t.eval_at_kimg) == pytest.approx([n * t.batch / 1000 for n in ends])
