"""Makes fixtures/sida.pt and fixtures/sida.json from the official SiDA code (github.com/mingyuanzhou/SiD,
`sida` branch): one published SiDA iteration on tiny random networks, with the authors' own
encoder-decoder networks (`sida_training/sida_networks.py`, whose `return_flag` returns the
encoder's logits) and losses (`sida_training/sida_loss.py`), the two updates done the way their
training loop (`sida_training/sida_training_loop.py`, `use_gan=True`) does them:

- fake score and discriminator: x_g from G (eval, no graph) on the real batch's labels;
  `fakescore_discriminator_share_encoder_loss` on [x_g, the real batch] (the same sigma and noise);
  `sum * ls / batch_gpu_total + sum * lsd / batch_gpu_total`, backward, `nan_to_num`, every
  gradient clipped to [-1, 1], Adam;
- generator: `generator_share_encoder_loss` (G train, fake score eval); the adversarial term
  averaged over pixels, times C H W, `sum * lsg_gan / batch_gpu_total`; SiD's term
  `sum * lsg / batch_gpu_total`; after 200 kimg the backward is of 0.5 SiD + 0.5 adversarial, before
  it of SiD alone; `nan_to_num`; Adam steps only after 100 kimg.

    .venv/bin/python tests/conformance/make_sida.py --reference /path/to/SiD-sida-checkout

Nothing is fetched and nothing of the checkout is copied; it runs on the CPU. The fixture holds per
case the networks' starting weights, the real batches (images and labels) of every round, the
draws of each update, the per-round loss sums, the gradients each Adam sees when it steps (none for
the generator in the warm-up), and the official network's encoder logits and denoised output on a
fixed input (for sidbench's `return_bottleneck`).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from draws import Recorder  # noqa: E402
from make_sid import (build, distinct_weights, grads, image_shape, one_hot_rounds, reference_commit,  # noqa: E402
                      sanitise, tiny_constructor)

#: published values (run_sida.sh, sida_train.py): sigma_init, t_max, alpha, the loss scalings, the clip, eps in fp32
INIT_SIGMA = 2.5
TMAX = 800
ALPHA = 1.0
LS, LSG, LSD, LSG_GAN = 1.0, 100.0, 1.0, 0.01
CLIP = 1.0
ADAM_EPS = 1e-8
LR = 1e-5
G_START_NIMG, GAN_START_NIMG = 100 * 1000, 200 * 1000


def real_rounds(shape: tuple[int, int, int], label_dim: int, rounds: int, batch_gpu: int,
                seed: int) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Data-loader batches as the loop reads them: uint8 pixels mapped by x / 127.5 - 1, one-hot labels."""
    gen = torch.Generator().manual_seed(seed)
    labels = one_hot_rounds(label_dim, rounds, batch_gpu, seed + 1)
    return [(torch.randint(0, 256, (batch_gpu, *shape), generator=gen).to(torch.float32) / 127.5 - 1, labels[r])
            for r in range(rounds)]


def sida_iteration(ref: Any, constructor: dict[str, Any], weights: dict[str, dict[str, torch.Tensor]], *,
                   batch: int, batch_gpu: int, real: dict[str, list], cur_nimg: int) -> dict[str, Any]:
    nets = {}
    for name in ("teacher", "fake_score", "generator"):
        nets[name] = build(ref.EDMPrecond, constructor, "_EncoderDecoder")
        nets[name].load_state_dict(weights[name], strict=True)
    teacher, fake, G = nets["teacher"], nets["fake_score"], nets["generator"]
    teacher.eval().requires_grad_(False)
    loss_fn = ref.SIDA_EDMLoss()
    opt_fake = torch.optim.Adam(fake.parameters(), lr=LR, betas=(0.0, 0.999), eps=ADAM_EPS)
    opt_g = torch.optim.Adam(G.parameters(), lr=LR, betas=(0.0, 0.999), eps=ADAM_EPS)
    fake.eval().requires_grad_(False)
    G.eval().requires_grad_(False)
    rounds = batch // batch_gpu
    c, h, w = image_shape(constructor)
    sums: dict[str, list[float]] = {"fake_score": [], "discriminator": [], "generator": [], "adversarial": []}

    fake.train().requires_grad_(True)
    opt_fake.zero_grad(set_to_none=True)
    with Recorder() as rec_fake:
        for r in range(rounds):
            real_images, labels = real["fake_score"][r]
            z = INIT_SIGMA * torch.randn_like(real_images)
            with torch.no_grad():
                images = G(z, INIT_SIGMA * torch.ones(batch_gpu, 1, 1, 1), labels, augment_labels=torch.zeros(batch_gpu, 9))
            loss, loss_d = loss_fn.fakescore_discriminator_share_encoder_loss(
                fake_score=fake, images=images, labels=labels, augment_pipe=None, real_images=real_images,
                true_score=teacher, alpha=ALPHA)
            sums["fake_score"].append(loss.sum().item())
            sums["discriminator"].append(loss_d.sum().item())
            (loss.sum().mul(LS / batch) + loss_d.sum().mul(LSD / batch)).backward()
    fake.eval().requires_grad_(False)
    sanitise(fake)
    # the largest value before the clip: the scale of the float error in what is left after it
    scale_fake = max(p.grad.abs().max().item() for p in fake.parameters() if p.grad is not None)
    torch.nn.utils.clip_grad_value_(fake.parameters(), CLIP)
    grads_fake = grads(fake)
    opt_fake.step()

    G.train().requires_grad_(True)
    opt_g.zero_grad(set_to_none=True)
    with Recorder() as rec_g:
        for r in range(rounds):
            real_images, labels = real["generator"][r]
            z = INIT_SIGMA * torch.randn_like(real_images)
            images = G(z, INIT_SIGMA * torch.ones(batch_gpu, 1, 1, 1), labels, augment_labels=torch.zeros(batch_gpu, 9))
            loss, loss_gan = loss_fn.generator_share_encoder_loss(true_score=teacher, fake_score=fake, images=images, labels=labels,
                                                                  augment_pipe=None, alpha=ALPHA, tmax=TMAX)
            loss_gan = loss_gan.mean(dim=[1, 2, 3], keepdim=True) * (c * h * w)
            sums["generator"].append(loss.sum().item())
            sums["adversarial"].append(loss_gan.sum().item())
            loss_gan = loss_gan.sum().mul(LSG_GAN / batch)
            loss = loss.sum().mul(LSG / batch)
            (0.5 * loss + 0.5 * loss_gan if cur_nimg > GAN_START_NIMG else loss).backward()
    G.eval().requires_grad_(False)
    sanitise(G)
    stepped = cur_nimg > G_START_NIMG
    grads_g = grads(G) if stepped else None  # in the warm-up the loop computes the gradients and takes no step
    if stepped:
        opt_g.step()
    return {"draws": {"fake_score": rec_fake.nonempty(), "generator": rec_g.nonempty()}, "loss_sums": sums,
            "grads": {"fake_score": grads_fake, "generator": grads_g}, "grad_scale_before_clip": {"fake_score": scale_fake},
            "generator_stepped": stepped}


def encoder_outputs(ref: Any, constructor: dict[str, Any], state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """The official network's logits ('encoder') and (denoised, logits) ('encoder_decoder') on a fixed input."""
    net = build(ref.EDMPrecond, constructor, "_EncoderDecoder")
    net.load_state_dict(state, strict=True)
    net.eval()
    gen = torch.Generator().manual_seed(seed)
    n = 3
    x = torch.randn(n, *image_shape(constructor), generator=gen) * 2
    sigma = torch.tensor([0.05, 1.0, 20.0])
    labels = one_hot_rounds(constructor["label_dim"], 1, n, seed)[0]
    with torch.no_grad():
        logits = net(x, sigma, labels, return_flag="encoder")
        denoised, logits_both = net(x, sigma, labels, return_flag="encoder_decoder")
    return {"x": x, "sigma": sigma, "labels": labels, "logits": logits, "denoised": denoised, "logits_encoder_decoder": logits_both}


def import_reference(path: Path) -> Any:
    sys.path.insert(0, str(path))
    from sida_training.sida_loss import SIDA_EDMLoss
    from sida_training.sida_networks import EDMPrecond_EncoderDecoder

    class Ref:
        pass

    Ref.EDMPrecond, Ref.SIDA_EDMLoss = EDMPrecond_EncoderDecoder, SIDA_EDMLoss
    return Ref


#: the cases: network, labels, batch and micro-batch, images seen before the iteration (the phase),
#: and the case whose networks it reuses
CASES: dict[str, dict[str, Any]] = {
    # after 200 kimg: SiD's and the adversarial terms; two accumulation rounds, so the BCE means are
    # per round and the reductions divide by the process's batch
    "adversarial": dict(model_type="SongUNet", label_dim=0, batch=4, batch_gpu=2, cur_nimg=300_000),
    # between 100 and 200 kimg: SiD's generator loss, the discriminator trained alongside the fake score
    "sid-phase": dict(model_type="DhariwalUNet", label_dim=4, batch=3, batch_gpu=3, cur_nimg=150_000),
    # before 100 kimg: the generator takes no step
    "warm-up": dict(model_type="SongUNet", label_dim=0, batch=4, batch_gpu=2, cur_nimg=50_000, networks_of="adversarial"),
}


def make(reference: Path, seed: int = 10) -> dict[str, Any]:
    ref = import_reference(reference)
    cases: dict[str, Any] = {}
    for i, (name, spec) in enumerate(CASES.items()):
        constructor = tiny_constructor(spec["model_type"], spec["label_dim"])
        if "networks_of" in spec:
            weights = cases[spec["networks_of"]]["weights"]  # the same tensors: stored once
        else:
            torch.manual_seed(seed + i)
            weights = distinct_weights(build(ref.EDMPrecond, constructor, "_EncoderDecoder"), seed + 100 + i)
        batch, batch_gpu = spec["batch"], spec["batch_gpu"]
        rounds = batch // batch_gpu
        shape = image_shape(constructor)
        real = {"fake_score": real_rounds(shape, spec["label_dim"], rounds, batch_gpu, seed + 200 + i),
                "generator": real_rounds(shape, spec["label_dim"], rounds, batch_gpu, seed + 300 + i)}
        torch.manual_seed(seed + 400 + i)
        out = sida_iteration(ref, constructor, weights, batch=batch, batch_gpu=batch_gpu, real=real, cur_nimg=spec["cur_nimg"])
        cases[name] = {"constructor": constructor, "weights": weights, "real": real, "batch": batch, "batch_gpu": batch_gpu,
                       "cur_nimg": spec["cur_nimg"], **out}
        if "networks_of" not in spec:
            cases[name]["encoder"] = encoder_outputs(ref, constructor, weights["fake_score"], seed + 500 + i)
    settings = {"alpha": ALPHA, "lr": LR, "t_max": TMAX, "sigma_init": INIT_SIGMA, "adam_eps": ADAM_EPS,
                "loss_scale_fake_score": LS, "loss_scale_generator": LSG, "discriminator_weight": LSD,
                "adversarial_scale": LSG_GAN, "adversarial_mix": 0.5, "fake_score_clip_value": CLIP,
                "generator_start_kimg": G_START_NIMG / 1000, "adversarial_start_kimg": GAN_START_NIMG / 1000}
    info = {
        "reference": "https://github.com/mingyuanzhou/SiD (sida branch)",
        "commit": reference_commit(reference),
        "files_run": ["sida_training/sida_networks.py (EDMPrecond_EncoderDecoder, return_flag)",
                      "sida_training/sida_loss.py (SIDA_EDMLoss.fakescore_discriminator_share_encoder_loss, "
                      ".generator_share_encoder_loss)"],
        "loop_followed": "sida_training/sida_training_loop.py with use_gan=True: reductions by batch_gpu_total, "
                         "nan_to_num, clip_grad_value_(1) for the fake score, the 100/200 kimg schedule on cur_nimg (strict >)",
        "command": "python tests/conformance/make_sida.py --reference <checkout of the sida branch>",
        "date": dt.date.today().isoformat(),
        "torch": torch.__version__,
        "settings": settings,
        "cases": CASES,
        "contents": "per case: constructor, weights {teacher, fake_score, generator} (state_dict names), real batches "
                    "per update and round (images in [-1, 1], labels), draws per update, loss_sums per update and round "
                    "(unscaled: fake_score, discriminator, generator = SiD's sum, adversarial = sum_i g C H W / wf_i), "
                    "grads per optimiser (None: no step), grad_scale_before_clip (the fake score's largest gradient "
                    "before the clip), encoder: the official logits and denoised output on a fixed input",
        "precision": "float32, CPU, dropout 0, augmentation off",
    }
    return {"info": info, "settings": settings, "cases": cases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="a checkout of the SiD repository's sida branch")
    parser.add_argument("--out", type=Path, default=HERE / "fixtures")
    args = parser.parse_args()
    fixture = make(args.reference.resolve())
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, args.out / "sida.pt")
    (args.out / "sida.json").write_text(json.dumps(fixture["info"], indent=1) + "\n")
    print(f"wrote {args.out / 'sida.pt'} ({(args.out / 'sida.pt').stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
