"""Uni-Instruct's generator loss against the authors' code where the code matches the paper
(fixtures/uni_instruct.pt, made by make_uni_instruct.py; fixtures/uni_instruct.json says which
commit): the forward-KL branch of its training loop.

sidbench's EDM networks are built from the fixture's weights; sigma and the noise are the draws the
code made (sigma from u on Karras' schedule read backwards, as SiD's `generator_sigma` and the code map it); the denoised outputs and the
encoder's logits are compared with the code's. Then sidbench's `uni_instruct_loss.generator_loss`
(forward KL) is given the code's density ratio and `ratio_gradient=False`, the one point where the
code departs from the derived gradient but that is a choice of the ratio, not of the loss: with a
ratio treated as a constant of x, forward KL's Fisher-type term is 0 and its SiD-type term must be
the code's `loss * density_ratio`. Its gradient w.r.t. the generated images, times 100 / batch, is
compared with the code's, and with SiDA's adversarial term (weight 0.01, unmixed, as the code's
forward-KL branch adds it) the whole generator gradient is.

Last, sidbench's plugin itself runs its last phase's generator update (its `_generator_loss` through
`StepContext.update`, under `Replay` of the code's draws, a generator fixed to the fixture's images)
and its optimiser must see the code's gradient w.r.t. the images (halved: the 0.5 / 0.5 mix).

What the code does that sidbench does not (docs/frontier.md#uni-instruct): its ratio is
-L / (1 - L) of the per-sample adversarial loss L (about 1.003 here, where exp(logit) is 1.03-1.3),
and it drops the DMD-type term of the ratio's gradient.

Tolerance: rtol 1e-4, atol 1e-6 times the largest gradient (float32; sidbench's and the code's
networks agree to about 1e-6 on the same input, as for SiD and SiDA).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from sidbench.diffusion import karras_sigma
from sidbench.methods.sid.loss import normaliser
from sidbench.methods.sid.sida_loss import adversarial_generator_loss, discriminator_logits
from sidbench.methods.sid.uni_instruct_loss import density_ratio, generator_loss
from sidbench.teachers.networks import build_edm_network

FIXTURE = Path(__file__).parent / "fixtures" / "uni_instruct.pt"
RTOL, ATOL = 1e-4, 1e-6


def load() -> dict[str, Any]:
    if not FIXTURE.is_file():
        pytest.fail(f"{FIXTURE} missing: run tests/conformance/make_uni_instruct.py --reference <Uni_Instruct checkout>")
    return torch.load(FIXTURE, weights_only=False)


FIX = load()
SETTINGS = FIX["info"]["settings"]


def network(case: dict[str, Any], name: str) -> torch.nn.Module:
    net = build_edm_network(case["constructor"])
    net.load_state_dict(case["weights"][name], strict=True)
    return net.eval().requires_grad_(False)


def forward(case: dict[str, Any]) -> dict[str, torch.Tensor]:
    """x_g (a leaf), sigma, y_real, y_fake and the logits, as the code computed them."""
    (u,), (noise,) = case["draws"]["rand"], case["draws"]["randn_like"]
    sigma = karras_sigma(1 - u * SETTINGS["t_max"] / 1000)
    x_g = case["images"].clone().requires_grad_(True)
    x_t = x_g + noise * sigma
    labels = case["labels"]
    y_real = network(case, "teacher")(x_t, sigma.flatten(), labels)
    y_fake, bottleneck = network(case, "fake_score")(x_t, sigma.flatten(), labels, return_bottleneck=True)
    return {"x_g": x_g, "sigma": sigma, "y_real": y_real, "y_fake": y_fake, "logits": discriminator_logits(bottleneck)}


def close(seen: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    scale = expected.abs().max().item()
    assert scale > 0, f"{what}: the code's value is zero; the fixture pins nothing"
    torch.testing.assert_close(seen, expected, rtol=RTOL, atol=ATOL * scale, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("name", list(FIX["cases"]))
def test_networks_give_the_codes_outputs(name: str) -> None:
    case = FIX["cases"][name]
    out = forward(case)
    for key in ("y_real", "y_fake", "logits"):
        close(out[key].detach(), case[key], f"{name} {key}")


@pytest.mark.parametrize("name", list(FIX["cases"]))
def test_forward_kl_sid_type_term_is_the_codes(name: str) -> None:
    case = FIX["cases"][name]
    out = forward(case)
    x_g, batch = out["x_g"], out["x_g"].shape[0]
    per_element = generator_loss(x_g, out["y_real"], out["y_fake"], case["density_ratio"], out["sigma"], "forward_kl",
                                 ratio_gradient=False)
    close(per_element.detach(), case["loss"] * case["density_ratio"], f"{name} per-element loss")
    divergence_term = per_element.sum() * SETTINGS["loss_scale_generator"] / batch
    (grad,) = torch.autograd.grad(divergence_term, x_g, retain_graph=True)
    close(grad, case["grad_divergence"], f"{name} gradient of the divergence term")
    numel = x_g[0].numel()
    adversarial = adversarial_generator_loss(out["logits"], normaliser(x_g, out["y_real"]), numel)
    adversarial_term = adversarial * SETTINGS["adversarial_scale"] / batch
    close(adversarial_term.detach(), case["adversarial_term"], f"{name} adversarial term")
    (grad_total,) = torch.autograd.grad(divergence_term + adversarial_term, x_g)
    close(grad_total, case["grad_total"], f"{name} generator gradient")


def test_the_fixture_pins_the_ratio_weight() -> None:
    """Unweighted SiD (or the paper's exp(logit) in place of the code's ratio) gives another
    gradient: the comparison above sees the weight."""
    case = FIX["cases"]["cond"]
    out = forward(case)
    r = density_ratio(out["logits"])
    assert not torch.allclose(r, case["density_ratio"], rtol=0.01)
    loss = generator_loss(out["x_g"], out["y_real"], out["y_fake"], r, out["sigma"], "forward_kl", ratio_gradient=False)
    (grad,) = torch.autograd.grad(loss.sum() * SETTINGS["loss_scale_generator"] / out["x_g"].shape[0], out["x_g"])
    assert not torch.allclose(grad, case["grad_divergence"], rtol=0.01)


# -- the plugin's own generator update --------------------------------------------------------------
class FixedImages(torch.nn.Module):
    """A generator whose output is the fixture's generated images whatever its input: the gradient
    its optimiser sees is the gradient of the update's loss w.r.t. the images, averaged as the
    update averages it."""

    def __init__(self, images: torch.Tensor) -> None:
        super().__init__()
        self.images = torch.nn.Parameter(images.clone())

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        return self.images + 0 * x


class LabelsOnly:
    """Real data for the generator's update, which reads only the labels of a real batch."""

    def __init__(self, labels: torch.Tensor | None) -> None:
        self.labels = labels

    def draw(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        return torch.zeros(n), self.labels


@pytest.mark.parametrize("name", list(FIX["cases"]))
def test_the_plugins_generator_update_is_the_codes_forward_kl_step(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """sidbench's `uni_instruct` plugin, in its last phase, with forward KL, `ratio_gradient=false`
    and the code's ratio in place of exp(logit) (the one documented difference): its generator
    update through `StepContext.update`, under `Replay` of the code's sigma and noise, gives the
    optimiser the code's gradient w.r.t. the images, halved: sidbench mixes the divergence and
    adversarial terms 0.5 / 0.5 (SiDA's `adversarial_mix`), the code adds them (1 / 1)."""
    from draws import Replay, step_gradients

    from sidbench.config import compose
    from sidbench.methods import METHODS
    from sidbench.teachers.teacher import Teacher
    from sidbench.trainer.context import StepContext

    case = FIX["cases"][name]
    cfg = compose(["method=uni_instruct", "method.dropout=0.0", "method.augment_p=0", "method.divergence=forward_kl",
                   "method.ratio_gradient=false", f"method.t_max={SETTINGS['t_max']}",
                   f"method.loss_scale_generator={SETTINGS['loss_scale_generator']}",
                   f"method.adversarial_scale={SETTINGS['adversarial_scale']}", "method.adversarial_mix=0.5"])
    teacher = Teacher(net=network(case, "teacher"), constructor=dict(case["constructor"]), source="fixture")
    ui = METHODS.get("uni_instruct")(teacher, cfg.method, torch.device("cpu"), cfg)
    ui.fake_score.load_state_dict(case["weights"]["fake_score"], strict=True)
    ui.generator = FixedImages(case["images"])
    ui._optimizers["generator"] = torch.optim.SGD(ui.generator.parameters(), lr=0.0)
    for i in (1, 2):
        ui.enter_stage(i, ui.stages()[i])
    monkeypatch.setattr("sidbench.methods.sid.uni_instruct.density_ratio", lambda logits: case["density_ratio"])
    batch = case["images"].shape[0]
    ctx = StepContext(ui.networks(), ui.optimizers(), torch.device("cpu"), batch=batch, real_data=LabelsOnly(case["labels"]))
    seen = step_gradients(ui.optimizers()["generator"], {ui.generator.images: "images"})
    z = torch.zeros_like(case["images"])  # the generator's z: FixedImages ignores it
    with Replay({"randn": [z], **case["draws"]}) as replay:
        logs = ctx.update("generator", lambda n: ui._generator_loss(ctx, n))
    replay.assert_exhausted()
    close(2 * seen["images"], case["grad_total"], f"{name} the generator optimiser's gradient, doubled")
    close(torch.as_tensor(float(logs["adversarial"])) * SETTINGS["adversarial_scale"], case["adversarial_term"].detach(),
          f"{name} adversarial term")
