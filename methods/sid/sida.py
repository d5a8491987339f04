"""SiDA and SiD²A (Zhou et al. 2024, arXiv 2410.14919) as one method plugin: SiD plus an
adversarial term on real images, the discriminator being the fake score's own encoder (no new
network). The formulas are in `sida_loss.py` and SiD's `loss.py`; the published iteration is in
docs/sid.md#sida.

One iteration:
  1. fake-score and discriminator update on a real batch (x_r, c): x_g = G(sigma_init z, c) with G
     in eval mode and no graph; x_g and x_r augmented independently; ONE call of the fake score
     (train mode) on [x_g + sigma n, x_r + sigma n] (the same sigma and noise for both; GroupNorm
     is per sample, so this is two calls' computation, and DDP sees one forward) gives the
     denoised x_g and the logits of both; the real half stops after the encoder
     (`decode_first`), as the published code's encoder-only call on real images does; loss loss_scale_fake_score * L_fs + discriminator_weight
     * L_D (the published `ls` and `lsd`, each on its own term), gradients clipped per value;
  2. from `generator_start_kimg` on, the generator update on labels of a fresh real batch: SiD's
     loss, and from `adversarial_start_kimg` on, mixed with the adversarial term on the logits the
     same fake-score call (eval mode) returns.
The phases are stages (`stages()`), so a resumed run is in the phase it left. Before
`generator_start_kimg` the generator's update is skipped altogether (the published loop computes
it and takes no step): the same training, less compute.

SiD²A is `method=sid2a method.init=<a trained SiD generator>` (`sid2a.py`: a file, a run, an MLflow
run id or a released generator); `method=sida method.generator_init=<file>` does the same from a
file: G, and so its EMA, start from it; the fake score and both optimisers start fresh, and the kimg
schedule counts from 0.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from sidbench.config import ConfigError
from sidbench.diffusion import edm_training_sigma, edm_weight, sigma_data_of
from sidbench.methods.base import Stage, register_method
from sidbench.methods.sid.loss import normaliser
from sidbench.methods.sid.method import GeneratorPass, SiD
from sidbench.methods.sid.settings import SiDASettings
from sidbench.methods.sid.sida_loss import adversarial_generator_loss, discriminator_logits, discriminator_loss
from sidbench.teachers.teacher import Teacher
from sidbench.trainer.context import StepContext

#: The phases, in order: only the fake score trains; + SiD's generator loss; + the adversarial term.
PHASES = ("fake-score warm-up", "sid", "sida")

def micro_batch_warning(micro_batches: list[int], published: int | None) -> str | None:
    """One line if this process's micro-batches differ from the published runs' micro-batch.

    The BCE of each adversarial term is one mean over a micro-batch's logits (then weighted per
    sample), so the micro-batch is part of the training signal, not only of the memory."""
    if published is None or all(m == published for m in micro_batches):
        return None
    sizes = "/".join(str(m) for m in sorted(set(micro_batches), reverse=True))
    return (f"method=sida averages its adversarial BCE terms over each micro-batch; this run's micro-batches hold {sizes} "
            f"images (trainer.batch_gpu), the published runs' {published} (method.published_batch_gpu), so its "
            f"adversarial averaging differs from the published runs'")


@register_method("sida")
class SiDA(SiD):
    description = "SiDA / SiD²A (Zhou et al. 2024): SiD plus an adversarial term, the fake score's encoder as discriminator"
    settings = SiDASettings

    @classmethod
    def uses_real_data(cls, cfg: DictConfig) -> bool:
        return True  # the discriminator's real batch, and the labels of the generator's

    def __init__(self, teacher: Teacher, cfg: DictConfig, device: torch.device, full_cfg: DictConfig | None = None):
        super().__init__(teacher, cfg, device, full_cfg)
        if cfg.get("generator_init"):
            self._load_generator(Path(str(cfg.generator_init)), what=f"method.generator_init={cfg.generator_init}")
        self.phase = 0

    def _load_generator(self, path: Path, what: str) -> None:
        """SiD²A: G's weights from a trained SiD generator of this teacher's architecture (`what`
        names the setting in errors)."""
        from sidbench.teachers.load import load_teacher_file

        net, constructor, _ = load_teacher_file(str(path), kind="generator")
        # Settings that change no weight: the run's dropout applies whatever the file was trained with,
        # and precision and the sigma range are the run's.
        ignore = ("dropout", "label_dropout", "use_fp16", "sigma_min", "sigma_max")
        mine = {k: v for k, v in self.teacher.constructor.items() if k not in ignore}
        theirs = {k: v for k, v in constructor.items() if k not in ignore}
        if mine != theirs:
            changed = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
            raise ConfigError(f"{what}: {path} is a network of another architecture than the teacher's "
                              f"(differs in {', '.join(changed)}); give a generator distilled from this teacher")
        self.generator.load_state_dict(net.state_dict(), strict=True)

    # -- contract ------------------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        starts = (0.0, float(self.cfg.generator_start_kimg), float(self.cfg.adversarial_start_kimg))
        return [Stage(name, start=start, unit="kimg") for name, start in zip(PHASES, starts)]

    def enter_stage(self, index: int, stage: Stage) -> None:
        self.phase = index

    def state_dict(self) -> dict[str, Any]:
        return {"phase": self.phase}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.phase = int(state["phase"])

    def prepare(self, ctx: StepContext) -> None:
        # before the first iteration of a fresh or resumed run: the micro-batch is part of the signal
        note = micro_batch_warning(ctx.micro_batches, self.cfg.get("published_batch_gpu"))
        if note:
            ctx.warn(note)

    # -- one iteration -------------------------------------------------------------------------
    def train_step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        clip = self.cfg.get("clip_grad_value_fake_score")
        # The loss scalings are inside the loss (L_fs's and L_D's apart, as published): loss_scale 1.
        logs = ctx.update("fake_score", lambda n: self._fake_score_loss(ctx, n),
                          clip_grad_value=None if clip is None else float(clip))
        if self.phase >= 1:
            logs |= ctx.update("generator", lambda n: self._generator_loss(ctx, n))
        ctx.log("phase", float(self.phase))
        return logs

    def _fake_score_loss(self, ctx: StepContext, n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x_r, labels = ctx.real(n)
        x_g = self._fake_samples(n, labels)
        aug = None
        if self.augment is not None:  # each batch its own draws
            x_g, aug_g = self.augment(x_g)
            x_r, aug_r = self.augment(x_r)
            aug = torch.cat([aug_g, aug_r])
        sigma = edm_training_sigma(n, self.cfg.p_mean, self.cfg.p_std, device=self.device)
        noise = sigma * torch.randn_like(x_g)
        both = None if labels is None else torch.cat([labels, labels])
        fake = ctx.net("fake_score").train()
        # the real half needs only the encoder's logits: the decoder runs on the generated half alone
        denoised, bottleneck = fake(torch.cat([x_g + noise, x_r + noise]), sigma.flatten().repeat(2), both,
                                    augment_labels=aug, return_bottleneck=True, decode_first=n)
        denoised = denoised.float()
        logits = discriminator_logits(bottleneck)
        l_fake, l_real = logits[:n], logits[n:]
        # SiD's loss and drop, a sample with a NaN logit leaving both sums
        fs, keep = self._kept_fake_score_loss(ctx, denoised, x_g, sigma, l_fake, l_real)
        weight = edm_weight(sigma, sigma_data_of(self.fake_score))
        d = discriminator_loss(l_real[keep], l_fake[keep], weight[keep]) if keep.any() else fs.new_zeros(())
        total = float(self.cfg.loss_scale_fake_score) * fs + float(self.cfg.discriminator_weight) * d
        return total, {"fake_score": fs.detach() / n, "discriminator": d.detach() / n}

    def _kept_score_loss(self, ctx: StepContext, passed: GeneratorPass) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the generator's score term summed over the kept samples, the kept mask, the value to
        log) before its loss scale and the adversarial mix: SiD's loss (Uni-Instruct's divergence
        replaces it)."""
        return self._kept_generator_loss(ctx, passed.x_g, passed.y_real, passed.y_fake)

    def _generator_loss(self, ctx: StepContext, n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        _, labels = ctx.real(n)  # the labels of a fresh real batch; its images are not used
        adversarial = self.phase >= 2
        passed = self._generator_forward(ctx, n, labels, bottleneck=adversarial)
        x_g, y_real, bottleneck = passed.x_g, passed.y_real, passed.bottleneck
        sid, keep, value = self._kept_score_loss(ctx, passed)
        total = float(self.cfg.loss_scale_generator) * sid
        logs = {"generator": value}
        if adversarial:
            numel = x_g[0].numel()
            logits = discriminator_logits(bottleneck)
            adv = (adversarial_generator_loss(logits[keep], normaliser(x_g, y_real)[keep], numel) if keep.any()
                   else sid.new_zeros(()))
            mix = float(self.cfg.adversarial_mix)
            total = (1 - mix) * total + mix * float(self.cfg.adversarial_scale) * adv
            logs["adversarial"] = adv.detach() / n
        return total, logs
