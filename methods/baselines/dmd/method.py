"""DMD2 (Yin et al. 2024, arXiv 2405.14867) as a method plugin, in the authors' EDM (ImageNet 64)
form, and DMD (Yin et al. 2023, arXiv 2311.18828) beside it: the same distribution matching, no
TTUR or GAN, plus a regression onto (noise, teacher sample) pairs made before training.

One DMD2 iteration (docs/baselines.md#dmd2):
  1. on a generator iteration (every `ttur`-th, the two time-scale update rule): x = G(80 z, 80, c)
     with a graph; L_G = L_DM (+ gan.generator_weight * L_GAN_G); the scores (and the head) are
     frozen and pass gradients to x only;
  2. every iteration, on the same x detached and the same labels (made without a graph on the other
     iterations): L_fake = L_fs (+ gan.discriminator_weight * L_GAN_D), the fake score and its GAN
     head trained jointly.
Every logits evaluation draws its own grid index on the whole grid and its own noise. The fake
score sees the real, the fake and its own denoising input in ONE call (concatenated): the network
is per-sample (GroupNorm, no batch statistics), so this is the same computation as three calls,
and DDP allows one forward per backward. A sample whose scores are not finite leaves L_DM alone
(counted in `train/dropped_dm`; docs/baselines.md#non-finite-samples).

DMD's iteration is the same code (`DistributionMatching`) with `ttur` 1, no GAN head, and its
regression term added to the generator's loss (`DMD._generator_terms`).

Dropout and modes. The authors build the generator and the fake score (and their teacher copy)
with dropout 0 and label dropout 0, whatever the teacher was trained with, and call `train()` on
all of them every step; train mode changes nothing at dropout 0. Here the students are built with
`method.dropout` (default 0, as published; null keeps the teacher's) and stay in train mode, and
the teacher stays in eval mode: the same computation. Copying a teacher trained with dropout (EDM's
ImageNet 64: 0.10) unchanged would run both students with dropout active, and the DM gradient
would not vanish even where the fake score equals the teacher.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from sidbench.config import ConfigError
from sidbench.diffusion import karras_ascending, sigma_data_of
from sidbench.methods.base import Method, Recipe, register_method
from sidbench.methods.baselines.dmd.gan_head import GANHead, bottleneck_shape
from sidbench.methods.baselines.distance import image_distance
from sidbench.methods.baselines.dmd.settings import DMD2Settings, DMDSettings
from sidbench.methods.baselines.teacher_samples import (
    SampleSpec, TeacherSamples, charge_recorded, label_freq, load_teacher_samples, samples_for_training, teacher_identity,
)
from sidbench.methods.baselines.dmd.f_distill_loss import weighted_distribution_matching_loss
from sidbench.methods.baselines.dmd.loss import (
    distribution_matching_loss, dmd_fake_score_loss, gan_discriminator_loss, gan_generator_loss, sample_grid_sigma,
)
from sidbench.teachers.teacher import Teacher
from sidbench.trainer.context import StepContext
from sidbench.trainer.schedule import lr_schedule


def student_overrides(cfg: DictConfig) -> dict[str, Any]:
    """Constructor changes of the generator and fake score: `method.dropout` (null: the teacher's)."""
    return {"dropout": float(cfg.dropout)} if cfg.get("dropout") is not None else {}


class DistributionMatching(Method):
    """DMD2's iteration, which DMD shares: the generator at sigma_init, the fake score (and DMD2's
    optional GAN head), the DM loss, AdamW with a warm-up, the two time-scale update rule, and the
    fake-score update; subclasses add their own terms to the generator's loss (`_generator_terms`)."""

    def __init__(self, teacher: Teacher, cfg: DictConfig, device: torch.device, full_cfg: DictConfig | None = None):
        super().__init__(teacher, cfg, device, full_cfg)
        overrides = student_overrides(cfg)
        self.generator = teacher.init_generator(**overrides)
        self.fake_score = teacher.copy_network(**overrides)
        self.gan_head: GANHead | None = None  # DMD2's, when its GAN is enabled
        self._networks: dict[str, torch.nn.Module] = {"generator": self.generator, "fake_score": self.fake_score}
        self.grid = karras_ascending(int(cfg.grid_points)).to(device)
        self._stash: list[tuple[torch.Tensor, torch.Tensor | None]] = []  # x and labels of each micro-batch

    def _build_optimizers(self) -> None:
        cfg = self.cfg

        def adamw(net: torch.nn.Module, lr: float, betas: Any) -> torch.optim.AdamW:
            return torch.optim.AdamW(net.parameters(), lr=lr, betas=tuple(betas), weight_decay=cfg.weight_decay)

        # the GAN head trains with the fake score (one joint update), at its rate and betas
        self._optimizers = {name: adamw(net, cfg.lr_generator, cfg.betas_generator) if name == "generator"
                            else adamw(net, cfg.lr_fake_score, cfg.betas_fake_score) for name, net in self._networks.items()}
        # fractional on purpose: the published warm-up is 500 schedule steps at 7 per iteration (dmd/settings.py)
        self._schedulers = {k: lr_schedule(opt, warmup=float(cfg.warmup_iterations)) for k, opt in self._optimizers.items()}

    # -- contract ------------------------------------------------------------------------------
    def networks(self) -> dict[str, torch.nn.Module]:
        return self._networks

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self._optimizers

    def schedulers(self) -> dict[str, torch.optim.lr_scheduler.LRScheduler]:
        return self._schedulers

    def sampling(self) -> Recipe:
        return {"sampler": "one_step", "sigmas": [float(self.cfg.sigma_init)], "nfe": 1}

    @classmethod
    def plan_networks(cls, cfg: DictConfig, teacher_constructor: dict[str, Any]) -> dict[str, dict[str, Any]]:
        student = {**teacher_constructor, **student_overrides(cfg)}
        nets = {"teacher": dict(teacher_constructor), "generator": student, "fake_score": dict(student)}
        if cfg.get("gan") and cfg.gan.enabled:
            nets["gan_head"] = {"GANHead": "on the fake score's bottleneck (methods/baselines/dmd/gan_head.py)"}
        return nets

    # -- one iteration -------------------------------------------------------------------------
    def train_step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        logs: dict[str, Any] = {}
        self._stash = []
        clip = self.cfg.clip_grad_norm
        if ctx.iteration % int(self.cfg.ttur) == 0:
            logs |= ctx.update("generator", lambda n: self._generator_loss(ctx, n), clip_grad_norm=clip)
        critic = ["fake_score", "gan_head"] if self.gan_head is not None else "fake_score"
        logs |= ctx.update(critic, lambda n: self._fake_loss(ctx, n), clip_grad_norm=clip)
        return logs

    def _generator_loss(self, ctx: StepContext, n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labels = ctx.labels(n)
        generator = ctx.net("generator")
        x = self._generate(generator, n, labels)
        self._stash.append((x.detach(), labels))
        dm, dm_value = self._dm_loss(ctx, x, labels)
        total, logs = self._generator_terms(ctx, generator, x, labels, dm * n, {"dm": dm_value})
        return total, logs

    def _generator_terms(self, ctx: StepContext, generator: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor | None,
                         total: torch.Tensor, logs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The generator's loss summed over the micro-batch: `total` (n L_DM) plus the method's
        own terms, here DMD2's GAN term when its head is enabled."""
        if self.gan_head is not None:  # the frozen fake score and head pass the gradient to x only
            n = x.shape[0]
            sigma = self._sigma(n, 0, len(self.grid) - 1)
            _, features = self.fake_score(x + sigma * torch.randn_like(x), sigma.flatten(), labels, return_bottleneck=True)
            gan = gan_generator_loss(self.gan_head(features).float())
            total = total + float(self.cfg.gan.generator_weight) * gan * n
            logs["gan_generator"] = gan.detach()
        return total, logs

    def _fake_loss(self, ctx: StepContext, n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, labels = self._fake_inputs(ctx, n)
        fake = ctx.net("fake_score")
        sigma = self._sigma(n, 0, len(self.grid) - 1)
        x_t = x + sigma * torch.randn_like(x)
        if self.gan_head is None:
            denoised = fake(x_t, sigma.flatten(), labels).float()
            fs = self._denoising_loss(denoised, x, sigma)
            return fs, {"fake_score": fs.detach() / n}
        x_real, labels_real = ctx.real(n)
        s_real, s_fake = self._sigma(n, 0, len(self.grid) - 1), self._sigma(n, 0, len(self.grid) - 1)
        inputs = torch.cat([x_t, x_real + s_real * torch.randn_like(x_real), x + s_fake * torch.randn_like(x)])
        sigmas = torch.cat([sigma, s_real, s_fake]).flatten()
        all_labels = None if labels is None else torch.cat([labels, labels_real, labels])
        denoised, features = fake(inputs, sigmas, all_labels, return_bottleneck=True)
        logits = ctx.net("gan_head")(features[n:]).float()
        l_real, l_fake = logits[:n], logits[n:]
        fs = self._denoising_loss(denoised[:n].float(), x, sigma)
        d = gan_discriminator_loss(l_real, l_fake)
        ctx.log("logits_real", l_real.mean())
        ctx.log("logits_fake", l_fake.mean())
        total = fs + float(self.cfg.gan.discriminator_weight) * d * n
        return total, {"fake_score": fs.detach() / n, "gan_discriminator": d.detach()}

    # -- pieces of an iteration ----------------------------------------------------------------
    def _sigma(self, n: int, low: int, high: int) -> torch.Tensor:
        return sample_grid_sigma(n, self.grid, low, high, device=self.device)

    def _generate(self, net: torch.nn.Module, n: int, labels: torch.Tensor | None) -> torch.Tensor:
        z = torch.randn(n, *self.teacher.shape, device=self.device)
        return self.sample(net, z, labels).float()

    def _dm_loss(self, ctx: StepContext, x: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_DM on the micro-batch as a mean over its elements, its value to log). The scores run
        without a graph; samples whose scores are not finite leave L_DM (counted in `dropped_dm`),
        and the logged value is NaN when all of them did (a failure to see, not a zero loss)."""
        n = x.shape[0]
        sigma = self._sigma(n, int(self.cfg.dm_index_min), int(self.cfg.dm_index_max))
        x_t = x.detach() + sigma * torch.randn_like(x)
        with torch.no_grad():
            mu_real = self.teacher.net(x_t, sigma.flatten(), labels).float()
            mu_fake, weights = self._dm_fake_score(ctx, x_t, sigma, labels)
        if weights is None:
            dm, keep = distribution_matching_loss(x, mu_real, mu_fake)
        else:
            dm, keep = weighted_distribution_matching_loss(x, mu_real, mu_fake, weights)
        ctx.log("dropped_dm", (~keep).sum())
        return dm, torch.where(keep.any(), dm.detach(), torch.full_like(dm, float("nan")))

    def _dm_fake_score(self, ctx: StepContext, x_t: torch.Tensor, sigma: torch.Tensor,
                       labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mu_fake at the DM term's x_t, per-sample weights of the DM gradient or None: DMD's
        unweighted gradient). Called without a graph; f-distill weighs each sample by h(r)."""
        return self.fake_score(x_t, sigma.flatten(), labels).float(), None

    def _fake_inputs(self, ctx: StepContext, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This micro-batch's x and labels: the generator update's, detached, or new ones."""
        if self._stash:
            return self._stash.pop(0)
        labels = ctx.labels(n)
        with torch.no_grad():
            return self._generate(self.generator, n, labels), labels

    def _denoising_loss(self, denoised: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """L_fs summed over the micro-batch's samples, each the mean over its elements (the context
        divides by the batch: the published mean over all elements)."""
        return dmd_fake_score_loss(denoised, x, sigma, sigma_data_of(self.fake_score)).flatten(1).mean(1).sum()


@register_method("dmd2")
class DMD2(DistributionMatching):
    description = "DMD2 (Yin et al. 2024): distribution matching, two time-scale updates, optional GAN head"
    settings = DMD2Settings

    @classmethod
    def uses_real_data(cls, cfg: DictConfig) -> bool:
        return bool(cfg.gan.enabled)  # the GAN head alone reads real images

    def __init__(self, teacher: Teacher, cfg: DictConfig, device: torch.device, full_cfg: DictConfig | None = None):
        super().__init__(teacher, cfg, device, full_cfg)
        if cfg.gan.enabled:
            try:
                c, h, w = bottleneck_shape(self.fake_score, teacher.shape)
            except TypeError as e:  # a network that cannot return its bottleneck features
                raise ConfigError(f"method.gan.enabled=true needs a fake score that returns its bottleneck "
                                  f"(return_bottleneck=True); {type(self.fake_score).__name__} cannot ({e})") from None
            self.gan_head = GANHead(c, h).to(device)
            self._networks["gan_head"] = self.gan_head
        self._build_optimizers()


@register_method("dmd")
class DMD(DistributionMatching):
    """DMD: L_G = L_DM + regression.weight * d(G(z_ref), y_ref) on pairs (z_ref, y_ref) of the
    teacher's deterministic Heun sampler, made once before training (charged to the run, cached
    on disk and reused: a run that reuses them is charged their recorded cost, so a warm cache
    changes no budget); the fake score as in DMD2, every iteration."""

    description = "DMD (Yin et al. 2023): distribution matching plus regression on teacher ODE pairs"
    settings = DMDSettings

    def __init__(self, teacher: Teacher, cfg: DictConfig, device: torch.device, full_cfg: DictConfig | None = None):
        super().__init__(teacher, cfg, device, full_cfg)
        self.spec = SampleSpec(teacher_identity(teacher), int(cfg.teacher_sampler_steps), int(cfg.num_teacher_samples),
                               int(cfg.teacher_sample_seed), int(cfg.teacher_sample_batch), tuple(teacher.shape),
                               teacher.label_dim, label_freq(teacher, full_cfg))
        self.pairs: TeacherSamples | None = None
        if cfg.get("teacher_samples_file"):  # pairs the user made elsewhere: they must be this teacher's
            self.pairs = self._checked_pairs(Path(str(cfg.teacher_samples_file)))
        self._build_optimizers()

    def _checked_pairs(self, path: Path) -> TeacherSamples:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                recorded = json.loads((f.metadata() or {})["spec"])
        except Exception as e:  # noqa: BLE001 - any unreadable file is the same mistake
            raise ConfigError(f"method.teacher_samples_file={path}: not a teacher-samples file ({type(e).__name__}: {e})") from None
        if recorded.get("teacher") != self.spec.teacher:
            raise ConfigError(f"method.teacher_samples_file={path}: made by teacher {recorded.get('teacher')!r}, "
                              f"not by this run's {self.spec.teacher!r}; remove the setting to make new pairs")
        spec = SampleSpec(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in recorded.items() if k != "format"})
        pairs = load_teacher_samples(path, spec)
        if pairs is None or pairs.noise is None:
            raise ConfigError(f"method.teacher_samples_file={path}: unreadable or without the noise of its samples")
        self.spec = spec
        return pairs

    def prepare(self, ctx: StepContext) -> None:
        if self.pairs is not None:  # a file the user gave: charged what it recorded
            charge_recorded(ctx, self.pairs)
        else:
            self.pairs, _ = samples_for_training(self.teacher, self.spec, self.device, ctx)

    def _generator_terms(self, ctx: StepContext, generator: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor | None,
                         total: torch.Tensor, logs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """DMD's regression term: weight * d(G(z_ref), y_ref) summed over a draw of n pairs."""
        reg_cfg = self.cfg.regression
        z_ref, y_ref, labels_ref = self.pairs.draw_pairs(x.shape[0], self.device)
        x_ref = self.sample(generator, z_ref, labels_ref).float()
        reg = image_distance(x_ref, y_ref, str(reg_cfg.distance), adapt_gray=bool(reg_cfg.lpips_adapt_gray))
        return total + float(reg_cfg.weight) * reg.sum(), {**logs, "regression": reg.detach().mean()}
