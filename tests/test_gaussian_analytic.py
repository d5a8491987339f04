"""The analytic test bed: on a Gaussian with an exact denoiser, SiD must reach the target."""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from sidbench.config import compose
from sidbench.methods import METHODS
from sidbench.testing.gaussian import GaussianTeacher, random_gaussian
from sidbench.trainer.loop import Trainer


def test_gaussian_teacher_denoiser_is_exact() -> None:
    mu, cov = random_gaussian(4, seed=3)
    teacher = GaussianTeacher(mu, cov)
    # Tweedie: for x = x0 + s n with x0 ~ N(mu, S), E[x0 | x] = mu + S (S + s^2 I)^-1 (x - mu);
    # check it against a Monte Carlo regression of x0 on x at one noise level.
    torch.manual_seed(0)
    x0 = mu + torch.randn(200000, 4) @ torch.linalg.cholesky(cov).T
    s = 0.7
    x = x0 + s * torch.randn_like(x0)
    d = teacher.net(x.reshape(-1, 1, 2, 2), torch.tensor(s)).reshape(-1, 4)
    assert float(((x0 - d) ** 2).mean()) < float(((x0 - x) ** 2).mean())
    gain = torch.linalg.lstsq(torch.cat([x, torch.ones(len(x), 1)], 1), x0).solution[:4].T
    exact = cov @ torch.linalg.inv(cov + s**2 * torch.eye(4))
    torch.testing.assert_close(gain, exact, atol=0.01, rtol=0.02)


def test_sid_drives_affine_generator_to_target(tmp_path: Path) -> None:
    torch.manual_seed(0)
    mu, cov = random_gaussian(4, seed=0)
    teacher = GaussianTeacher(mu, cov)
    cfg = compose(["method=sid", "method.augment_p=0", "method.dropout=null", "method.lr=2e-2"])
    sid = METHODS.get("sid")(teacher, cfg.method, torch.device("cpu"), cfg)
    start = teacher.distance(sid.generator)
    trainer_cfg = OmegaConf.merge(cfg.trainer, {"kimg": 25.6, "batch": 256, "checkpoint_every_kimg": 0, "eval_every_kimg": 0})
    Trainer(trainer_cfg, sid, tmp_path, torch.device("cpu")).train()
    end = teacher.distance(sid.generator)
    assert start > 1.0
    assert end < 0.03, f"SiD left the affine generator at Frechet distance {end:.4f} from the target (start {start:.3f})"
