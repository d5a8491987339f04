"""Configs: published SiD settings per dataset (docs/sid.md#published-settings), names, dry runs."""
from __future__ import annotations

import pytest

from sidbench.config import ConfigError, compose

# dataset: (alpha, lr, batch, precision, dropout, augment_p, generator beta1, EMA half-life kimg, kimg, adam eps)
PUBLISHED = {
    "cifar10": (1.2, 1e-5, 256, "fp32", 0.13, 0.12, 0.0, 500, 500_000, 1e-8),
    "cifar10-cond": (1.2, 1e-5, 256, "fp32", 0.13, 0.12, 0.0, 500, 800_000, 1e-8),
    "imagenet64": (1.2, 4e-6, 8192, "fp16", 0.1, 0.0, 0.0, 2000, 1_000_000, 1e-6),
    "ffhq64": (1.2, 1e-5, 512, "fp16", 0.05, 0.15, 0.9, 500, 500_000, 1e-6),
    "afhqv2-64": (1.0, 5e-6, 512, "fp16", 0.05, 0.15, 0.0, 500, 500_000, 1e-6),
}


@pytest.mark.parametrize("dataset", sorted(PUBLISHED))
def test_published_sid_settings(dataset: str) -> None:
    cfg = compose(["method=sid", f"dataset={dataset}"])
    alpha, lr, batch, precision, dropout, augment_p, g_beta1, ema, kimg, eps = PUBLISHED[dataset]
    m, t = cfg.method, cfg.trainer
    assert (m.alpha, m.lr_generator, m.lr_fake_score, m.dropout, m.augment_p, list(m.betas_generator), m.eps) == (
        alpha, lr, lr, dropout, augment_p, [g_beta1, 0.999], eps)
    assert (t.batch, t.precision, t.ema_halflife_kimg, t.ema_rampup) == (batch, precision, ema, 0.05)
    # the card's budget is SiD's published length, in SiD's counted passes (11 per generated image)
    assert t.kimg is None and (t.budget.unit, t.budget.value) == ("passes", kimg * 1000 * 11)
    # the same in every published run
    assert (m.sigma_init, m.t_max, list(m.betas_fake_score), m.loss_scale_generator, m.loss_scale_fake_score) == (
        2.5, 800, [0.0, 0.999], 100, 1)
    assert (m.p_mean, m.p_std) == (-1.2, 1.2)
    # FID dense early: at ticks 10, 20, ..., 100, then every 50 ticks; a tick is 10 kimg (20 on ImageNet, run_sid.sh)
    tick = 20 if dataset == "imagenet64" else 10
    assert t.tick_kimg == tick
    assert list(t.eval_at_kimg) == list(range(10 * tick, 100 * tick + 1, 10 * tick)) and t.eval_every_kimg == 50 * tick


# SiDA, docs/sid.md#sida-settings: dataset: (lr, batch, micro-batch, precision, dropout, augment_p, EMA half-life kimg, tick kimg)
PUBLISHED_SIDA = {
    "cifar10": (1e-5, 256, 32, "fp32", 0.13, 0.12, 500, 10),
    "cifar10-cond": (1e-5, 256, 32, "fp32", 0.13, 0.12, 500, 10),
    "imagenet64": (4e-6, 8192, 32, "fp16", 0.1, 0.0, 2000, 20),
    "ffhq64": (1e-5, 512, 64, "fp16", 0.05, 0.15, 500, 10),
    "afhqv2-64": (5e-6, 512, 64, "fp16", 0.05, 0.15, 500, 10),
}


@pytest.mark.parametrize("dataset", sorted(PUBLISHED_SIDA))
def test_published_sida_settings(dataset: str) -> None:
    cfg = compose(["method=sida", f"dataset={dataset}"])
    lr, batch, micro, precision, dropout, augment_p, ema, tick = PUBLISHED_SIDA[dataset]
    m, t = cfg.method, cfg.trainer
    assert (m.lr_generator, m.lr_fake_score, m.dropout, m.augment_p, t.batch, t.precision) == (
        lr, lr, dropout, augment_p, batch, precision)
    # the micro-batch is part of SiDA's signal (its BCE means): the published one, and the method knows it
    assert t.batch_gpu == micro and m.published_batch_gpu == micro
    assert (t.ema_halflife_kimg, t.ema_rampup) == (ema, 0.05)
    assert t.tick_kimg == tick and list(t.eval_at_kimg) == list(range(10 * tick, 100 * tick + 1, 10 * tick))
    assert t.eval_every_kimg == 50 * tick
    # the same in every published run: alpha 1, Adam betas (0, 0.999), the loss weights and the schedule
    assert (m.alpha, m.sigma_init, m.t_max, list(m.betas_generator), list(m.betas_fake_score)) == (
        1.0, 2.5, 800, [0.0, 0.999], [0.0, 0.999])
    assert (m.loss_scale_generator, m.loss_scale_fake_score, m.discriminator_weight, m.adversarial_scale,
            m.adversarial_mix) == (100, 1, 1.0, 0.01, 0.5)
    assert (m.generator_start_kimg, m.adversarial_start_kimg, m.clip_grad_value_fake_score) == (100, 200, 1.0)
    assert m.generator_init is None


@pytest.mark.parametrize("dataset,mult", [("ffhq64", [1, 2, 2, 2]), ("afhqv2-64", [1, 2, 2, 2]), ("cifar10", [2, 2, 2]),
                                          ("imagenet64", [1, 2, 3, 4])])
def test_network_channel_multipliers(dataset: str, mult: list[int]) -> None:
    assert list(compose([f"dataset={dataset}"]).dataset.teacher.constructor.channel_mult) == mult


def test_overrides_reach_the_config() -> None:
    cfg = compose(["dataset=ffhq64", "method.alpha=0.5", "method.augment_p=0", "trainer.batch_gpu=8"])
    assert (cfg.method.alpha, cfg.method.augment_p, cfg.trainer.batch_gpu) == (0.5, 0, 8)


def test_conditional_datasets_draw_labels() -> None:
    assert compose(["dataset=cifar10-cond"]).dataset.label_dim == 10
    assert compose(["dataset=imagenet64"]).dataset.label_freq == "uniform"
    assert compose(["dataset=digits-cond"]).dataset.label_freq == "data"


@pytest.mark.parametrize("group,bad", [("method", "nope"), ("dataset", "mnist")])
def test_unknown_names_list_the_valid_ones(group: str, bad: str) -> None:
    with pytest.raises(ConfigError) as e:
        compose([f"{group}={bad}"])
    message = str(e.value)
    assert bad in message and "\n" not in message
    assert ("sid" in message) if group == "method" else ("ffhq64" in message and "digits" in message)


def test_bad_key_is_one_line() -> None:
    with pytest.raises(ConfigError) as e:
        compose(["trainer.no_such_key=1"])
    assert "no_such_key" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(("override", "suggestion"), [
    ("teacher.path=/data/x.pkl", "dataset.teacher.path"),  # the group left out
    ("trainer.kimgg=3", "trainer.kimg"),                    # a typo
    ("methd=sid", "method=sid"),                            # a misspelt group: the group, with the value
    ("run_nam=x", "run_name=x"),                            # a misspelt top-level key
])
def test_unknown_setting_names_the_closest_one(override: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as e:
        compose(["dataset=ffhq64", override])
    message = str(e.value)
    assert f"unknown setting '{override.partition('=')[0]}'" in message
    assert f"did you mean {suggestion}?" in message and "dry_run=true" in message and "\n" not in message
