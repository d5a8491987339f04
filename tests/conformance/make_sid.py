"""Makes fixtures/sid.pt and fixtures/sid.json from the official SiD code (github.com/mingyuanzhou/SiD,
main branch): one published SiD iteration, run on tiny random networks with the authors' own network
classes (`training/networks.py`) and loss (`training/sid_loss.py`), and the two updates done the way
their training loop (`training/sid_training_loop.py`) does them.

    .venv/bin/python tests/conformance/make_sid.py --reference /path/to/SiD-main-checkout

Nothing is fetched and nothing of the checkout is copied: it is put on sys.path and run on the
CPU (its custom CUDA ops are never reached there).

Per case the fixture holds the three networks' starting weights (teacher, fake score, generator;
all distinct, keyed by state_dict names, the key layout of sidbench's EDM networks), the labels of
every accumulation round, the random draws of each update (recorded per torch function by
`draws.Recorder`), the per-round loss sums, and the gradients each Adam sees when it steps (after
the loss scaling, the division by the per-process batch and `nan_to_num`).

`make_sida.py` reuses the tiny networks and weights made here.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from draws import Recorder  # noqa: E402

#: published values (run_sid.sh, sid_train.py): sigma_init, t_max, loss scalings, Adam's betas and eps in fp32
INIT_SIGMA = 2.5
TMAX = 800
LOSS_SCALE_FAKE = 1.0
LOSS_SCALE_G = 100.0
ADAM_EPS = 1e-8


def tiny_constructor(model_type: str, label_dim: int, resolution: int = 8, channel_mult: tuple[int, ...] = (1, 2),
                     augment_dim: int = 0) -> dict[str, Any]:
    """EDM-form constructor of a tiny RGB network: 4 base channels, two resolutions, one block each;
    SongUNet attends at the lower one (DhariwalUNet's 64 channels per head leave it no head here)."""
    attn = [resolution // 2] if model_type == "SongUNet" else []
    kw: dict[str, Any] = dict(precond="EDMPrecond", img_resolution=resolution, img_channels=3, label_dim=label_dim,
                              model_type=model_type, model_channels=4, channel_mult=list(channel_mult), num_blocks=1,
                              attn_resolutions=attn, dropout=0.0)
    if augment_dim:
        kw["augment_dim"] = augment_dim
    return kw


def image_shape(constructor: dict[str, Any]) -> tuple[int, int, int]:
    r = constructor["img_resolution"]
    return (constructor["img_channels"], r, r)


def compact(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors as views into one float32 buffer: torch.save then writes one storage, not
    one per tensor (keeps the fixture small)."""
    flat = torch.cat([v.detach().reshape(-1).to(torch.float32) for v in tensors.values()])
    out, i = {}, 0
    for k, v in tensors.items():
        out[k] = flat[i:i + v.numel()].view(v.shape)
        i += v.numel()
    return out


def build(cls: type, constructor: dict[str, Any], model_suffix: str = "") -> torch.nn.Module:
    kw = {k: v for k, v in constructor.items() if k != "precond"}
    kw["model_type"] = kw["model_type"] + model_suffix
    return cls(**kw)


def distinct_weights(net: torch.nn.Module, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """Teacher, fake score and generator: the network's initial weights plus three different
    perturbations (std 0.1 per value, also on EDM's near-zero output layers), so that no two agree
    and every gradient is non-trivial. Drawn from a private generator, not torch's global one."""
    gen = torch.Generator().manual_seed(seed)
    base = net.state_dict()
    out = {}
    for name in ("teacher", "fake_score", "generator"):
        out[name] = compact({k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in base.items()})
    return out


def one_hot_rounds(label_dim: int, rounds: int, batch_gpu: int, seed: int) -> list[torch.Tensor | None]:
    if not label_dim:
        return [None] * rounds
    gen = torch.Generator().manual_seed(seed)
    return [torch.eye(label_dim)[torch.randint(0, label_dim, (batch_gpu,), generator=gen)] for _ in range(rounds)]


def grads(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return compact({k: p.grad for k, p in net.named_parameters() if p.grad is not None})


def sanitise(net: torch.nn.Module) -> None:
    for p in net.parameters():
        if p.grad is not None:
            torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)


def sid_iteration(ref: Any, constructor: dict[str, Any], weights: dict[str, dict[str, torch.Tensor]], *,
                  batch: int, batch_gpu: int, labels: dict[str, list], alpha: float, lr: float,
                  augment_p: float = 0.0) -> dict[str, Any]:
    """One iteration of the official loop (one process): the fake-score update, then the generator
    update, each accumulated over batch / batch_gpu rounds and divided by the process's batch."""
    nets = {}
    for name in ("teacher", "fake_score", "generator"):
        nets[name] = build(ref.EDMPrecond, constructor)
        nets[name].load_state_dict(weights[name], strict=True)
    teacher, fake, G = nets["teacher"], nets["fake_score"], nets["generator"]
    teacher.eval().requires_grad_(False)
    loss_fn = ref.SID_EDMLoss()
    opt_fake = torch.optim.Adam(fake.parameters(), lr=lr, betas=(0.0, 0.999), eps=ADAM_EPS)
    opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=(0.0, 0.999), eps=ADAM_EPS)
    augment_pipe = None
    if augment_p:
        augment_pipe = ref.AugmentPipe(p=augment_p, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
    # the state both networks are in when an iteration starts (after the previous one's updates)
    fake.eval().requires_grad_(False)
    G.eval().requires_grad_(False)
    rounds = batch // batch_gpu
    placeholder = torch.zeros(batch_gpu, *image_shape(constructor))  # the data loader's images: only their shape is used

    sums: dict[str, list[float]] = {"fake_score": [], "generator": []}
    fake.train().requires_grad_(True)
    opt_fake.zero_grad(set_to_none=True)
    with Recorder() as rec_fake:
        for r in range(rounds):
            c = labels["fake_score"][r]
            z = INIT_SIGMA * torch.randn_like(placeholder)
            images = G(z, INIT_SIGMA * torch.ones(batch_gpu, 1, 1, 1), c, augment_labels=torch.zeros(batch_gpu, 9))
            loss = loss_fn(fake_score=fake, images=images, labels=c, augment_pipe=augment_pipe)
            sums["fake_score"].append(loss.sum().item())
            loss.sum().mul(LOSS_SCALE_FAKE / batch).backward()
    fake.eval().requires_grad_(False)
    sanitise(fake)
    grads_fake = grads(fake)
    opt_fake.step()

    G.train().requires_grad_(True)
    opt_g.zero_grad(set_to_none=True)
    with Recorder() as rec_g:
        for r in range(rounds):
            c = labels["generator"][r]
            z = INIT_SIGMA * torch.randn_like(placeholder)
            images = G(z, INIT_SIGMA * torch.ones(batch_gpu, 1, 1, 1), c, augment_labels=torch.zeros(batch_gpu, 9))
            loss = loss_fn.generator_loss(true_score=teacher, fake_score=fake, images=images, labels=c,
                                          augment_pipe=None, alpha=alpha, tmax=TMAX)
            sums["generator"].append(loss.sum().item())
            loss.sum().mul(LOSS_SCALE_G / batch).backward()
    G.eval().requires_grad_(False)
    sanitise(G)
    grads_g = grads(G)
    opt_g.step()
    return {"draws": {"fake_score": rec_fake.nonempty(), "generator": rec_g.nonempty()},
            "loss_sums": sums, "grads": {"fake_score": grads_fake, "generator": grads_g}}


def reference_commit(path: Path) -> str:
    marker = path / ".commit"
    if marker.is_file():
        return marker.read_text().strip()
    return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()


def import_reference(path: Path) -> Any:
    """The checkout's network, loss and augmentation classes (the checkout first on sys.path)."""
    sys.path.insert(0, str(path))
    from training.augment import AugmentPipe
    from training.networks import EDMPrecond
    from training.sid_loss import SID_EDMLoss

    class Ref:
        pass

    Ref.EDMPrecond, Ref.SID_EDMLoss, Ref.AugmentPipe = EDMPrecond, SID_EDMLoss, AugmentPipe
    return Ref


#: the cases: network, labels, batch and micro-batch, alpha, learning rate, augmentation probability
CASES: dict[str, dict[str, Any]] = {
    "uncond": dict(model_type="SongUNet", label_dim=0, batch=3, batch_gpu=3, alpha=1.2, lr=1e-5, augment_p=0.0),
    # two accumulation rounds: the division is by the process's batch, not by the round's
    "cond": dict(model_type="DhariwalUNet", label_dim=4, batch=4, batch_gpu=2, alpha=1.2, lr=1e-5, augment_p=0.0),
    # the fake-score update through the authors' augmentation pipe (published multipliers; p = 0.5
    # so that a batch of 4 sees every transform); 16x16, where EDM's padding covers the maps drawn
    "augment": dict(model_type="SongUNet", label_dim=0, batch=4, batch_gpu=4, alpha=1.2, lr=1e-5, augment_p=0.5,
                    resolution=16, channel_mult=(1, 1), augment_dim=9),
}


def make(reference: Path, seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    ref = import_reference(reference)
    torch.manual_seed(seed)
    cases: dict[str, Any] = {}
    for i, (name, spec) in enumerate(CASES.items()):
        constructor = tiny_constructor(spec["model_type"], spec["label_dim"], spec.get("resolution", 8),
                                       spec.get("channel_mult", (1, 2)), spec.get("augment_dim", 0))
        torch.manual_seed(seed + i)
        weights = distinct_weights(build(ref.EDMPrecond, constructor), seed + 100 + i)
        batch, batch_gpu = spec["batch"], spec["batch_gpu"]
        rounds = batch // batch_gpu
        labels = {"fake_score": one_hot_rounds(spec["label_dim"], rounds, batch_gpu, seed + 200 + i),
                  "generator": one_hot_rounds(spec["label_dim"], rounds, batch_gpu, seed + 300 + i)}
        torch.manual_seed(seed + 400 + i)
        out = sid_iteration(ref, constructor, weights, batch=batch, batch_gpu=batch_gpu, labels=labels,
                            alpha=spec["alpha"], lr=spec["lr"], augment_p=spec["augment_p"])
        settings = {"alpha": spec["alpha"], "lr": spec["lr"], "augment_p": spec["augment_p"], "t_max": TMAX,
                    "sigma_init": INIT_SIGMA, "loss_scale_generator": LOSS_SCALE_G,
                    "loss_scale_fake_score": LOSS_SCALE_FAKE, "adam_eps": ADAM_EPS}
        cases[name] = {"constructor": constructor, "weights": weights, "labels": labels, "batch": batch,
                       "batch_gpu": batch_gpu, "settings": settings, **out}
    info = {
        "reference": "https://github.com/mingyuanzhou/SiD (main branch)",
        "commit": reference_commit(reference),
        "files_run": ["training/networks.py (EDMPrecond)", "training/sid_loss.py (SID_EDMLoss.__call__, .generator_loss)"],
        "loop_followed": "training/sid_training_loop.py: fake-score update (G eval, no graph; fake score train; "
                         "sum * loss_scaling / batch_gpu_total; nan_to_num), then generator update (G train, fake score "
                         "eval; sum * loss_scaling_G / batch_gpu_total; nan_to_num)",
        "command": "python tests/conformance/make_sid.py --reference <checkout of the main branch>",
        "date": dt.date.today().isoformat(),
        "torch": torch.__version__,
        "cases": {k: {**v, "channel_mult": list(v.get("channel_mult", (1, 2)))} for k, v in CASES.items()},
        "contents": "per case: constructor, weights {teacher, fake_score, generator} (state_dict names), labels per "
                    "update and round, draws per update (torch function -> tensors in call order), loss_sums per "
                    "update and round (unscaled sums), grads per optimiser (what Adam sees at its step)",
        "precision": "float32, CPU, dropout 0; augmentation (training/augment.py, AugmentPipe with the published "
                     "multipliers) only in the case 'augment'",
    }
    return {"info": info, "cases": cases}, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="a checkout of the SiD repository's main branch")
    parser.add_argument("--out", type=Path, default=HERE / "fixtures")
    args = parser.parse_args()
    fixture, info = make(args.reference.resolve())
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, args.out / "sid.pt")
    (args.out / "sid.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"wrote {args.out / 'sid.pt'} ({(args.out / 'sid.pt').stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
