"""Writes fixtures/ect.pt and .json: the loss of easy consistency tuning (ECT, arXiv 2406.14548) as
its authors' code computes it, and their few-step sampler, for test_ect_conformance.py.

The loss is `training.loss.ECMLoss` of locuslab/ect on its own networks (`training.networks.
ECMPrecond` around a tiny 8x8 SongUNet, in train mode as the training loop keeps it), reduced as
`training/ct_training_loop.py` reduces it: the mean over the batch times loss_scaling 1, backward,
then `nan_to_num(nan=0, posinf=1e5, neginf=-1e5)` on every gradient. The loss shares the dropout
mask of its two calls by restoring `torch.cuda`'s generator state; on this CPU-only run, where
dropout draws from the CPU generator, `torch.cuda.get_rng_state` / `set_rng_state` are pointed at
the CPU generator for the duration (the same sharing on the device the masks come from).

Cases (all c = 0 unless said): "stage0" (stage 0, q = 2: r clips to 0 for t < 1.95, the data is the
target there), "stage3_huber" (stage 3, pseudo-Huber c = 0.03), "dropout" (stage 1, dropout 0.2 as
the published CIFAR-10 run; the random state before the loss is stored: the masks come from it),
"data_target" (P_mean -5: every r is 0, the target call is skipped), "const_cond" (the "const"
mapping at stage 2 on a class-conditional network). "sample": the training loop's `generator_fn`
with mid_t = [0.821] (two steps) on the network in eval mode (ECMPrecond's sampling-time c_skip,
c_out with sigma_min 0.003), and its noise draw.

Run from the repository root with the project's environment:
    .venv/bin/python tests/conformance/make_ect.py --reference /path/to/locuslab/ect
psutil is stubbed (imported by the training loop's module, unused by generator_fn).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import sys
import types
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from draws import Recorder  # noqa: E402
from make_consistency import pack  # noqa: E402
from make_sid import reference_commit  # noqa: E402

FIXTURE = HERE / "fixtures" / "ect.pt"
#: the tiny networks (the reference's DDPM++ options, run_ecm.sh --arch=ddpmpp, at 8x8)
NETWORK = {
    "img_resolution": 8, "img_channels": 3, "model_type": "SongUNet", "model_channels": 4, "channel_mult": [1, 2],
    "num_blocks": 1, "attn_resolutions": [4], "embedding_type": "positional", "encoder_type": "standard",
    "decoder_type": "standard", "channel_mult_noise": 1, "resample_filter": [1, 1],
}
BATCH = 4
LABELS = 4
#: the loss settings of run_ecm.sh / ct_train.py (P_mean, P_std, q, k, b, c, mapping); cases override
PUBLISHED = {"P_mean": -1.1, "P_std": 2.0, "q": 2.0, "k": 8.0, "b": 1.0, "c": 0.0, "adj": "sigmoid"}
CASES = {
    "stage0": {"stage": 0, "dropout": 0.0, "label_dim": 0},
    "stage3_huber": {"stage": 3, "dropout": 0.0, "label_dim": 0, "c": 0.03},
    "dropout": {"stage": 1, "dropout": 0.2, "label_dim": 0},
    "data_target": {"stage": 0, "dropout": 0.0, "label_dim": 0, "P_mean": -5.0, "P_std": 0.5},
    "const_cond": {"stage": 2, "dropout": 0.0, "label_dim": LABELS, "adj": "const"},
}


@contextlib.contextmanager
def cpu_generator_as_cuda():
    """The reference saves and restores torch.cuda's generator around its two calls; here the
    masks come from the CPU generator, so that is the one it saves and restores."""
    original = torch.cuda.get_rng_state, torch.cuda.set_rng_state
    torch.cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()
    torch.cuda.set_rng_state = lambda state, device="cuda": torch.set_rng_state(state)
    try:
        yield
    finally:
        torch.cuda.get_rng_state, torch.cuda.set_rng_state = original


def build(ref: types.SimpleNamespace, seed: int, label_dim: int) -> nn.Module:
    torch.manual_seed(seed)
    net = ref.ECMPrecond(label_dim=label_dim, dropout=0.0, **NETWORK)
    with torch.no_grad():  # EDM zero-initialises some layers: random weights everywhere exercise every path
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net.train().requires_grad_(True)


def with_dropout(net: nn.Module, p: float) -> nn.Module:
    """A copy of `net` whose blocks drop with probability p (a UNetBlock's dropout holds no weights)."""
    net = copy.deepcopy(net)
    for m in net.modules():
        if isinstance(getattr(m, "dropout", None), float):
            m.dropout = p
    return net


def reference_loss(ref: types.SimpleNamespace, net: nn.Module, case: dict, x: torch.Tensor,
                   labels: torch.Tensor | None) -> dict:
    """One accumulation round of the reference's loop on (x, labels): draws, losses, gradients."""
    settings = {**PUBLISHED, **case}
    loss_fn = ref.ECMLoss(P_mean=settings["P_mean"], P_std=settings["P_std"], q=settings["q"], c=settings["c"],
                          k=settings["k"], b=settings["b"], adj=settings["adj"])
    loss_fn.update_schedule(settings["stage"])
    net.zero_grad(set_to_none=True)
    torch.manual_seed(1000 + settings["stage"])
    state = torch.get_rng_state()
    with Recorder() as rec, cpu_generator_as_cuda():
        loss = loss_fn(net=net, images=x, labels=labels, augment_pipe=None)
    loss.mul(1.0).mean().backward()  # loss_scaling = 1 (ct_train.py --ls default)
    grads = {}
    for name, p in net.named_parameters():
        if p.grad is not None:
            torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
            grads[name] = p.grad.detach().clone()
    draws = rec.nonempty()
    t = (draws["randn"][0] * settings["P_std"] + settings["P_mean"]).exp()
    return {"settings": settings, "rng_state": state, "draws": draws, "t": t, "r": loss_fn.t_to_r(t),
            "ratio": loss_fn.ratio, "loss_per_sample": loss.detach().clone(), "grads": pack(grads)}


def reference_sample(ref: types.SimpleNamespace, net: nn.Module) -> dict:
    """The loop's generator_fn, two steps (mid_t = [0.821], ct_train.py's default), eval mode."""
    net.eval()
    g = torch.Generator().manual_seed(21)
    z = torch.randn(BATCH, 3, 8, 8, generator=g)
    torch.manual_seed(22)
    with Recorder() as rec:
        images = ref.generator_fn(net, z, None, t_max=80, mid_t=[0.821])
    net.train()
    return {"z": z, "mid_t": [0.821], "draws": rec.nonempty(), "images": images.float()}


def import_reference(reference: Path) -> types.SimpleNamespace:
    sys.modules.setdefault("psutil", types.ModuleType("psutil"))
    sys.path.insert(0, str(reference))
    from training.ct_training_loop import generator_fn
    from training.loss import ECMLoss
    from training.networks import ECMPrecond

    return types.SimpleNamespace(ECMLoss=ECMLoss, ECMPrecond=ECMPrecond, generator_fn=generator_fn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="a checkout of locuslab/ect")
    args = parser.parse_args()
    reference = args.reference.resolve()
    ref = import_reference(reference)
    torch.set_num_threads(1)

    g = torch.Generator().manual_seed(11)
    x = torch.rand(BATCH, 3, 8, 8, generator=g) * 2 - 1
    classes = torch.tensor([1, 0, 3, 1])
    onehot = torch.nn.functional.one_hot(classes, LABELS).float()
    nets = {"uncond": build(ref, seed=1, label_dim=0), "cond": build(ref, seed=2, label_dim=LABELS)}
    weights = {name: pack(net.state_dict()) for name, net in nets.items()}
    results = {}
    for name, case in CASES.items():
        net = with_dropout(nets["cond" if case["label_dim"] else "uncond"], case["dropout"])
        results[name] = reference_loss(ref, net, case, x, onehot if case["label_dim"] else None)
        r = results[name]
        print(f"{name}: loss {r['loss_per_sample'].mean():.6g}, r = 0 for {int((r['r'] == 0).sum())} of {BATCH}")
    sample = reference_sample(ref, copy.deepcopy(nets["uncond"]))

    fixture = {"network": NETWORK, "label_dim": LABELS, "x": x, "classes": classes, "weights": weights,
               "cases": results, "sample": sample}
    FIXTURE.parent.mkdir(exist_ok=True)
    torch.save(fixture, FIXTURE)
    commit = reference_commit(reference)
    meta = {
        "reference": "https://github.com/locuslab/ect",
        "commit": commit,
        "command": "python tests/conformance/make_ect.py --reference <checkout of locuslab/ect>",
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "contains": (
            "Per case, one ECMLoss call (training/loss.py) of the reference on its ECMPrecond around an 8x8 SongUNet "
            "(weights['uncond'] or, for const_cond, weights['cond']; state_dict names = EDM's), the batch x of 4 "
            "(and one-hot labels of 'classes' "
            "for const_cond): the draws of torch.randn (ln t) and torch.randn_like (the shared noise), the random "
            "state before the call ('rng_state': the dropout masks come from it), t and r, the per-sample losses, "
            "and the gradients of loss.mean() after the loop's nan_to_num (per state_dict name). Cases: stage0, "
            "stage3_huber (c 0.03), dropout (0.2, stage 1), data_target (P_mean -5: every r = 0), const_cond (const "
            "mapping, stage 2, conditional). 'sample': generator_fn (training/ct_training_loop.py) with mid_t "
            "[0.821] on the eval-mode network of weights['uncond']: z, the noise draw, the images. torch.cuda's "
            "generator calls of the loss use the CPU generator on this CPU-only run (see the script). Dicts of "
            "tensors are packed: one flat float32 tensor with names and shapes (make_consistency.unpack)."),
    }
    FIXTURE.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
