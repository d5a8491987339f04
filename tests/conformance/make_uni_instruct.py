"""Makes fixtures/uni_instruct.pt and fixtures/uni_instruct.json from Uni-Instruct's public code
(github.com/a-little-hoof/Uni_Instruct, built on the official SiDA code): its generator loss
`FSIM_EDMLoss.generator_share_encoder_loss` (`fsim_training/fsim_loss.py`) on tiny random networks
of its own class (`fsim_training/fsim_networks.py`, whose `return_flag` returns the encoder's
logits), then its training loop's forward-KL branch (`fsim_training/fsim_training_loop.py`, after
200 kimg, `divergence == "Forward-KL"`, `variance_reduction` off, as the published `-sid` runs of
`run_uni_instruct.sh` use it):

    density_ratio = -loss_gan / (1 - loss_gan)        (no gradient)
    (loss * density_ratio).sum() * lsg / batch + loss_gan.sum() * lsg_gan / batch

with lsg = 100, lsg_gan = 0.01, loss the per-element SiD term (alpha = 1 form) and loss_gan the
per-sample adversarial term (the batch's BCE times C H W / wf). Recorded: the gradient w.r.t. the
generated images of the divergence term alone and of the whole sum (what reaches the generator).

    .venv/bin/python tests/conformance/make_uni_instruct.py --reference /path/to/Uni_Instruct-checkout

Nothing is fetched and nothing of the checkout is copied; it runs on the CPU in float32. The
fake score is wrapped in a module that only keeps what it returns (the denoised image and the
encoder's logits), so the fixture holds the logits that the paper's ratio exp(logit) is read from.
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
from make_sid import build, distinct_weights, image_shape, one_hot_rounds, reference_commit, tiny_constructor  # noqa: E402

#: published values (run_uni_instruct.sh): t_max, the generator's loss scalings
TMAX = 800
LSG, LSG_GAN = 100.0, 0.01

CASES: dict[str, dict[str, Any]] = {
    "uncond": dict(model_type="SongUNet", label_dim=0, batch=4),
    "cond": dict(model_type="DhariwalUNet", label_dim=4, batch=3),
}


class Keeping(torch.nn.Module):
    """Calls `net` and keeps what it returns."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.returned: list[Any] = []

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.net(*args, **kwargs)
        self.returned.append(out)
        return out


def import_reference(path: Path) -> Any:
    sys.path.insert(0, str(path))
    from fsim_training.fsim_loss import FSIM_EDMLoss
    from fsim_training.fsim_networks import EDMPrecond_EncoderDecoder

    class Ref:
        pass

    Ref.EDMPrecond, Ref.FSIM_EDMLoss = EDMPrecond_EncoderDecoder, FSIM_EDMLoss
    return Ref


def forward_kl_step(ref: Any, constructor: dict[str, Any], weights: dict[str, dict[str, torch.Tensor]],
                    images: torch.Tensor, labels: torch.Tensor | None) -> dict[str, Any]:
    teacher = build(ref.EDMPrecond, constructor, "_EncoderDecoder")
    fake = build(ref.EDMPrecond, constructor, "_EncoderDecoder")
    teacher.load_state_dict(weights["teacher"], strict=True)
    fake.load_state_dict(weights["fake_score"], strict=True)
    teacher.eval().requires_grad_(False)
    fake.eval().requires_grad_(False)
    kept = Keeping(fake)
    batch = images.shape[0]
    c, h, w = images.shape[1:]
    x = images.clone().requires_grad_(True)
    with Recorder() as rec:
        loss, loss_gan, y_real, y_fake, _ = ref.FSIM_EDMLoss().generator_share_encoder_loss(
            true_score=teacher, fake_score=kept, images=x, labels=labels, augment_pipe=None, tmax=TMAX)
    loss_gan = loss_gan.mean(dim=[1, 2, 3], keepdim=True) * (c * h * w)
    with torch.no_grad():
        density_ratio = -loss_gan / (1 - loss_gan)
    divergence_term = (loss * density_ratio).sum().mul(LSG / batch)
    adversarial_term = loss_gan.sum().mul(LSG_GAN / batch)
    (grad_divergence,) = torch.autograd.grad(divergence_term, x, retain_graph=True)
    (grad_total,) = torch.autograd.grad(divergence_term + adversarial_term, x)
    (_, logits), = kept.returned
    return {"draws": rec.nonempty(), "y_real": y_real.detach(), "y_fake": y_fake.detach(), "logits": logits.detach(),
            "loss": loss.detach(), "loss_gan": loss_gan.detach(), "density_ratio": density_ratio,
            "divergence_term": divergence_term.detach(), "adversarial_term": adversarial_term.detach(),
            "grad_divergence": grad_divergence, "grad_total": grad_total}


def make(reference: Path, seed: int = 2505) -> dict[str, Any]:
    ref = import_reference(reference)
    cases: dict[str, Any] = {}
    for i, (name, spec) in enumerate(CASES.items()):
        constructor = tiny_constructor(spec["model_type"], spec["label_dim"])
        torch.manual_seed(seed + i)
        all_weights = distinct_weights(build(ref.EDMPrecond, constructor, "_EncoderDecoder"), seed + 100 + i)
        weights = {k: all_weights[k] for k in ("teacher", "fake_score")}
        gen = torch.Generator().manual_seed(seed + 200 + i)
        images = (0.6 * torch.randn(spec["batch"], *image_shape(constructor), generator=gen)).clamp(-1, 1)
        labels = one_hot_rounds(spec["label_dim"], 1, spec["batch"], seed + 300 + i)[0]
        torch.manual_seed(seed + 400 + i)
        out = forward_kl_step(ref, constructor, weights, images, labels)
        cases[name] = {"constructor": constructor, "weights": weights, "images": images, "labels": labels, **out}
    info = {
        "reference": "https://github.com/a-little-hoof/Uni_Instruct",
        "commit": reference_commit(reference),
        "files_run": ["fsim_training/fsim_networks.py (EDMPrecond_EncoderDecoder, return_flag)",
                      "fsim_training/fsim_loss.py (FSIM_EDMLoss.generator_share_encoder_loss)"],
        "loop_followed": "fsim_training/fsim_training_loop.py, generator update after 200 kimg, divergence Forward-KL, "
                         "variance_reduction 0: loss_gan averaged per sample times C H W; density_ratio = "
                         "-loss_gan / (1 - loss_gan) without gradient; (loss * density_ratio).sum() * lsg / batch + "
                         "loss_gan.sum() * lsg_gan / batch",
        "command": "python tests/conformance/make_uni_instruct.py --reference <Uni_Instruct checkout>",
        "date": dt.date.today().isoformat(),
        "torch": torch.__version__,
        "settings": {"t_max": TMAX, "loss_scale_generator": LSG, "adversarial_scale": LSG_GAN},
        "cases": CASES,
        "contents": "per case: constructor, weights {teacher, fake_score} (state_dict names), the generated images "
                    "(a leaf), labels, the draws of the loss (rand: u of sigma, randn_like: the noise), y_real, "
                    "y_fake, the encoder's logits, loss (per element), loss_gan (per sample), the code's "
                    "density_ratio, the two terms' values and the gradients w.r.t. the images of the divergence "
                    "term alone and of the sum",
        "precision": "float32, CPU, dropout 0",
    }
    return {"info": info, "cases": cases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="a checkout of a-little-hoof/Uni_Instruct")
    parser.add_argument("--out", type=Path, default=HERE / "fixtures")
    args = parser.parse_args()
    fixture = make(args.reference.resolve())
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, args.out / "uni_instruct.pt")
    (args.out / "uni_instruct.json").write_text(json.dumps(fixture["info"], indent=1) + "\n")
    print(f"wrote {args.out / 'uni_instruct.pt'} ({(args.out / 'uni_instruct.pt').stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
