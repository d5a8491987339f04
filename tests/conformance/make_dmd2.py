"""Makes fixtures/dmd2.pt and fixtures/dmd2.json for test_dmd2_conformance.py from the DMD2 authors'
own EDM training step (tianweiy/DMD2: main/edm/train_edm.py `Trainer.train_one_step`, with
edm_unified_model.py and edm_guidance.py behind it), run on tiny random networks.

    .venv/bin/python tests/conformance/make_dmd2.py --reference /path/to/DMD2-checkout

What is the authors' and what is set up here:
- Their code runs unchanged: `train_one_step` (TTUR, loss weights, backward, clip, AdamW steps,
  schedule steps), `EDMUniModel`, `EDMGuidance` (DM loss, fake-score loss, GAN head and losses),
  their EDM fork's networks (`third_party/edm`, with `return_bottleneck`), built by their
  `get_edm_network`. Their imports that the step never uses (wandb, accelerate, diffusers, the
  LMDB dataset, the plotting helpers) are stubbed.
- The sizes are tiny: `get_imagenet_edm_config` is replaced by a small ADM configuration with
  their dropout 0 and label dropout 0 (16x16 RGB, 10 classes, an 8x8 bottleneck), and their GAN
  head, written for 768 channels and 32 groups, is built at the bottleneck's 8 channels and
  2 groups (the layer sequence, kernels, strides and paddings are theirs).
- What `Trainer.__init__` sets up (it needs accelerate, wandb and the dataset) is set up here as it
  does: AdamW (0.9, 0.999), weight decay 0.01, over the parameters that require gradients;
  diffusers' `constant_with_warmup` (LR factor step / 500, then 1) stepped 7 times per call, as
  accelerate steps a prepared schedule once per process (their comment on train_edm.py:110; 7 GPUs).
  The accelerator does what it does on one process: `backward` is `loss.backward()`,
  `clip_grad_norm_` is torch's (the fixture records the norm), `gather` returns its input.
- The teacher, generator and fake score get DISTINCT random weights (the teacher's plus noise), so
  the DM gradient is not zero; the real batch is random images with random labels.
- Two cases: TTUR only, and the GAN run (`--gan_classifier --diffusion_gan
  --diffusion_gan_max_timestep 1000`, weights 3e-3 and 1e-2). Each runs iterations 10 (a
  generator iteration: 10 % 5 == 0) and 11 (the fake score only). Before them the schedules have
  been stepped 10 times, so the LR is 70/500 and then 77/500 of its peak, not 0. The TTUR case clips at the published 10, which these tiny networks' gradients stay under;
  the GAN case clips at 0.05, so that the clip acts in each of its updates.

Recorded: every random draw (draws.Recorder), the loss values, the gradients each AdamW saw when it
stepped (draws.step_gradients) and the pre-clip norms, the images G made on the GAN case's
iteration 10, and, after the GAN case, part of the weights (the mapping layers and output conv of both networks, the
whole head: enough to pin AdamW's update).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import pickle
import subprocess
import sys
import tempfile
import types
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from draws import Recorder, step_gradients  # noqa: E402

BATCH = 3
RESOLUTION = 16
LABEL_DIM = 10
# the authors' ADM configuration (main/edm/edm_network.py) at a tiny size; dropout and label dropout as theirs
TINY_ADM = dict(augment_dim=0, model_channels=8, channel_mult=[1, 1], channel_mult_emb=2, num_blocks=1,
                attn_resolutions=[], dropout=0.0, label_dropout=0)
HEAD_CHANNELS, HEAD_GROUPS = 8, 2  # the bottleneck's width, and 4 channels a group (theirs: 768 and 32)
LR = 1e-3                          # large enough for the AdamW steps to show in float32 weights
GPUS, WARMUP = 7, 500
START = 10                         # the first iteration run (a generator iteration)
GEN_WEIGHT, DISC_WEIGHT = 3e-3, 1e-2
#: per case: GAN head on?, iterations run (from START), gradient-norm clip. The TTUR case keeps the
#: published clip 10 (above these tiny networks' norms: it does not act); the GAN case clips at 0.05
#: so that the clip acts in each of its updates (recorded norms in dmd2.json)
CASES = {"ttur": (False, 2, 10.0), "gan": (True, 2, 0.05)}
#: the weights kept after the GAN case's updates: the mapping layers and the output conv of G and the
#: fake score, and the whole head (enough elements to pin AdamW's update; the fixture stays small)
FINAL_KEYS = ("map_", "out_conv", "cls_pred_branch")


def stub_unused_imports() -> None:
    """train_edm.py's imports that `train_one_step` does not use."""

    def module(name: str, **attrs: object) -> None:
        sys.modules[name] = types.SimpleNamespace(__name__=name, **attrs)

    unused = lambda *a, **k: None  # noqa: E731
    module("wandb")
    module("accelerate", Accelerator=unused)
    module("accelerate.utils", ProjectConfiguration=unused, set_seed=unused)
    module("diffusers")
    module("diffusers.optimization", get_scheduler=unused)
    module("main.utils", prepare_images_for_saving=unused, draw_valued_array=unused, cycle=unused,
           draw_probability_histogram=unused)
    module("main.data")
    module("main.data.lmdb_dataset", LMDBDataset=unused)


class NarrowHeadLayers:
    """`torch.nn` for edm_guidance.py's GAN head: its 768-channel, 32-group layers at the tiny width."""

    def __getattr__(self, name: str) -> object:
        return getattr(torch.nn, name)

    @staticmethod
    def Conv2d(**kw: int) -> torch.nn.Conv2d:  # noqa: N802
        return torch.nn.Conv2d(**{k: HEAD_CHANNELS if k.endswith("channels") and v == 768 else v for k, v in kw.items()})

    @staticmethod
    def GroupNorm(num_groups: int, num_channels: int) -> torch.nn.GroupNorm:  # noqa: N802
        assert (num_groups, num_channels) == (32, 768)
        return torch.nn.GroupNorm(HEAD_GROUPS, HEAD_CHANNELS)


class OneProcessAccelerator:
    """What accelerate's Accelerator does in `train_one_step` on one process."""

    device = torch.device("cpu")
    is_main_process = False  # no wandb logging

    def __init__(self) -> None:
        self.norms: list[float] = []

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_grad_norm_(self, params, max_norm: float) -> torch.Tensor:  # noqa: ANN001
        norm = torch.nn.utils.clip_grad_norm_(list(params), max_norm)
        self.norms.append(float(norm))
        return norm

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def wait_for_everyone(self) -> None:
        pass


class AcceleratedSchedule:
    """accelerate's prepared scheduler without split batches: `num_processes` steps per call."""

    def __init__(self, scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
        self.scheduler = scheduler

    def step(self) -> None:
        for _ in range(GPUS):
            self.scheduler.step()


def constant_with_warmup(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """diffusers' `get_scheduler("constant_with_warmup", num_warmup_steps=500)`: step / 500, then 1."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: step / max(1.0, WARMUP) if step < WARMUP else 1.0)


def one_storage(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same dict, its float32 tensors views of one buffer: torch.save then writes one file for
    them, not one each (a smaller fixture)."""
    flat = torch.cat([v.detach().reshape(-1) for v in tensors.values()])
    views = flat.split([v.numel() for v in tensors.values()])
    return {k: view.view(v.shape) for (k, v), view in zip(tensors.items(), views)}


def perturbed(state: dict[str, torch.Tensor], seed: int, scale: float) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone() for k, v in state.items()}


def build_model(gan: bool, model_id: str):  # noqa: ANN201
    from main.edm.edm_unified_model import EDMUniModel

    args = argparse.Namespace(
        model_id=model_id, dataset_name="imagenet", resolution=RESOLUTION, label_dim=LABEL_DIM, use_fp16=False,
        sigma_data=0.5, sigma_max=80.0, sigma_min=0.002, rho=7.0, num_train_timesteps=1000, min_step_percent=0.02,
        max_step_percent=0.98, gan_classifier=gan, diffusion_gan=gan, diffusion_gan_max_timestep=1000 if gan else 0,
        initialie_generator=True)
    return EDMUniModel(args, accelerator=None)


def run_case(gan: bool, iterations_run: int, clip: float, model_id: str, weights: dict, real: dict) -> dict:
    from main.edm.train_edm import Trainer

    model = build_model(gan, model_id)
    model.feedforward_model.load_state_dict(weights["generator"])
    model.guidance_model.fake_unet.load_state_dict(weights["fake_score"])
    if gan:
        model.guidance_model.cls_pred_branch.load_state_dict(weights["gan_head"])

    names = {p: n for n, p in model.feedforward_model.named_parameters()}
    names |= {p: n for n, p in model.guidance_model.named_parameters()}
    t = Trainer.__new__(Trainer)
    t.model, t.accelerator = model, OneProcessAccelerator()
    # as Trainer.__init__ (train_edm.py:97-123) builds them
    t.optimizer_guidance = torch.optim.AdamW([p for p in model.guidance_model.parameters() if p.requires_grad],
                                             lr=LR, betas=(0.9, 0.999), weight_decay=0.01)
    t.optimizer_generator = torch.optim.AdamW([p for p in model.feedforward_model.parameters() if p.requires_grad],
                                              lr=LR, betas=(0.9, 0.999), weight_decay=0.01)
    t.scheduler_guidance = AcceleratedSchedule(constant_with_warmup(t.optimizer_guidance))
    t.scheduler_generator = AcceleratedSchedule(constant_with_warmup(t.optimizer_generator))
    for _ in range(START):  # iterations 0..9 of the schedules
        t.scheduler_guidance.step()
        t.scheduler_generator.step()
    t.step, t.dfake_gen_update_ratio, t.max_grad_norm = START, 5, clip
    t.gan_classifier, t.cls_loss_weight, t.gen_cls_loss_weight = gan, DISC_WEIGHT, GEN_WEIGHT if gan else 0
    t.batch_size, t.resolution, t.conditioning_sigma, t.label_dim = BATCH, RESOLUTION, 80.0, LABEL_DIM
    t.eye_matrix = torch.eye(LABEL_DIM)
    t.wandb_iters = 10**6  # the logging branch never runs
    t.real_image_dataloader = iter([real["batch"]] * 2)

    outputs: list[tuple] = []
    model.register_forward_hook(lambda module, args, output: outputs.append(output))
    gen_seen = step_gradients(t.optimizer_generator, names)
    guid_seen = step_gradients(t.optimizer_guidance, names)

    iterations = []
    for _ in range(iterations_run):
        outputs.clear()
        gen_seen.clear(), guid_seen.clear()
        t.accelerator.norms.clear()
        lr = (t.optimizer_generator.param_groups[0]["lr"], t.optimizer_guidance.param_groups[0]["lr"])
        with Recorder() as rec:
            t.train_one_step()
        (gen_losses, gen_log), (guid_losses, _) = outputs
        generator_turn = t.step % 5 == 0
        iterations.append({
            "iteration": t.step,
            "draws": rec.nonempty(),
            "lr": lr,
            "losses": {k: float(v.detach()) for k, v in {**gen_losses, **guid_losses}.items()},
            "generator_grads": one_storage(gen_seen) if generator_turn else None,
            "guidance_grads": one_storage(guid_seen),
            "norms": list(t.accelerator.norms),  # [generator, guidance] or [guidance]
            # G's images, once (the GAN case's generator iteration): the fixture stays under 1 MB
            "x": gen_log["generated_image"].detach().clone() if generator_turn and gan else None,
        })
        t.step += 1
    kept = lambda sd: {k: v.clone() for k, v in sd.items() if any(f in k for f in FINAL_KEYS)}  # noqa: E731
    final = {"generator": one_storage(kept(model.feedforward_model.state_dict())),
             "guidance": one_storage({k: v for k, v in kept(model.guidance_model.state_dict()).items()
                                      if not k.startswith("real_unet.")})} if gan else None
    return {"iterations": iterations, "final": final}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, type=Path, help="a checkout of tianweiy/DMD2")
    parser.add_argument("--out", type=Path, default=HERE / "fixtures")
    opts = parser.parse_args()
    ref = opts.reference.resolve()
    warnings.filterwarnings("ignore", message="Detected call of")  # the schedules run ahead
    sys.path.insert(0, str(ref))
    stub_unused_imports()
    from main.edm import edm_guidance, edm_network
    from third_party.edm.training.networks import EDMPrecond

    edm_network.get_imagenet_edm_config = lambda: dict(TINY_ADM)
    edm_guidance.nn = NarrowHeadLayers()

    torch.manual_seed(0)
    teacher = EDMPrecond(img_resolution=RESOLUTION, img_channels=3, label_dim=LABEL_DIM, use_fp16=False, sigma_min=0,
                         sigma_max=float("inf"), sigma_data=0.5, model_type="DhariwalUNet", **TINY_ADM)
    # random teacher weights: EDM's init leaves the output layer at 0, so every layer gets noise
    teacher.load_state_dict(perturbed(teacher.state_dict(), seed=1, scale=0.1))
    base = {k: v.clone() for k, v in teacher.state_dict().items()}
    torch.manual_seed(2)
    head = build_model(True, _pickle_teacher(teacher)).guidance_model.cls_pred_branch
    weights = {"teacher": base, "generator": perturbed(base, seed=3, scale=0.02),
               "fake_score": perturbed(base, seed=4, scale=0.02), "gan_head": head.state_dict()}
    weights = {k: one_storage(v) for k, v in weights.items()}
    g = torch.Generator().manual_seed(5)
    images = torch.rand(BATCH, 3, RESOLUTION, RESOLUTION, generator=g)
    classes = torch.randint(0, LABEL_DIM, (BATCH, 1), generator=g)
    real = {"batch": {"images": images, "class_labels": classes},
            "image": images * 2.0 - 1.0, "label": torch.eye(LABEL_DIM)[classes.squeeze(dim=1)]}

    model_id = _pickle_teacher(teacher)
    cases = {name: run_case(gan, n, clip, model_id, weights, real) for name, (gan, n, clip) in CASES.items()}

    opts.out.mkdir(parents=True, exist_ok=True)
    config = {"batch": BATCH, "resolution": RESOLUTION, "label_dim": LABEL_DIM, "adm": TINY_ADM,
              "head": {"channels": HEAD_CHANNELS, "groups": HEAD_GROUPS}, "lr": LR, "warmup_steps": WARMUP,
              "gpus": GPUS, "start_iteration": START, "ttur": 5, "weight_decay": 0.01,
              "cases": {k: {"gan": g, "iterations": n, "grad_clip": c} for k, (g, n, c) in CASES.items()},
              "betas": [0.9, 0.999], "gan_weights": [GEN_WEIGHT, DISC_WEIGHT], "grid_points": 1000,
              "dm_index": [20, 980], "sigma_gen": 80.0}
    torch.save({"config": config, "weights": weights, "real": {"image": real["image"], "label": real["label"]},
                "cases": cases}, opts.out / "dmd2.pt")
    commit = (ref / ".commit").read_text().strip() if (ref / ".commit").is_file() else _git_commit(ref)
    norms = {case: [it["norms"] for it in c["iterations"]] for case, c in cases.items()}
    meta = {
        "reference": "https://github.com/tianweiy/DMD2", "commit": commit,
        "command": " ".join(["python", "tests/conformance/make_dmd2.py", *sys.argv[1:]]),
        "date": datetime.date.today().isoformat(), "torch": torch.__version__, "config": config,
        "pre_clip_norms": norms,
        "contents": "weights (teacher, generator, fake_score, gan_head), the real batch, and per case (ttur, gan) "
                    "and iteration (10: generator + fake score; 11: fake score only): the recorded draws, the "
                    "LRs, loss values, the gradients each AdamW saw when it stepped, the pre-clip norms, the "
                    "images G made (GAN case, iteration 10); the GAN case also part of the weights after its updates",
    }
    (opts.out / "dmd2.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {opts.out / 'dmd2.pt'} ({(opts.out / 'dmd2.pt').stat().st_size / 1e6:.2f} MB); pre-clip norms {norms}")


_TEMP = tempfile.TemporaryDirectory()


def _pickle_teacher(net: torch.nn.Module) -> str:
    """The teacher as the EDM pickle their guidance model loads (`{'ema': net}`)."""
    path = Path(_TEMP.name) / "teacher.pkl"
    with path.open("wb") as f:
        pickle.dump({"ema": net}, f)
    return str(path)


def _git_commit(path: Path) -> str:
    with contextlib.suppress(Exception):
        return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    return "unknown"


if __name__ == "__main__":
    main()
