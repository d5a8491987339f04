"""Consistency distillation against the authors' code (openai/consistency_models, arXiv 2303.01469;
fixtures/consistency.json says what make_consistency.py recorded, from which commit).

Each case runs sidbench's `ConsistencyDistillation.train_step` (its loss, the step context's
reduction, RAdam, the target's EMA) once through a `StepContext`, on the fixture's weights, with
the fixture's 4 images as its training images (drawn in order: the sample-index draw is replayed as
0, 1, 2, 3; the reference takes the batch as it is) and the reference's grid indices and noise
replayed. It compares the loss and the gradients RAdam sees, per parameter, and for "imagenet64"
the student and the target after the step. Tolerance: rtol 1e-4 and an atol of 1e-6 of the
largest gradient (float32; the two programs compute the grid in different precisions and the
network's time input as 250 ln(sigma) / 1000 against ln(sigma) / 4, which differ in the last bits).

The "dropout" case pins that the target network's call starts from the random state the online
call started from (the reference restores it, so both calls drop the same units): dropout draws
its mask from torch's global stream, and each call gets the reference's mask for the random state
it starts from, in order of first appearance. A target call from a state of its own has no
recorded mask and fails. The LPIPS cases need the `lpips` package (skipped without it): sidbench's
LPIPS is built on it with random weights shared with the fixture's piq LPIPS. Comparing the two
metrics alone, the gradients to the 8x8 image get rtol 1e-3 and an atol of 2e-4 of the largest:
each sums a VGG16 backward over 224x224 positions, and piq's input normalisation
((x + 1)/2 - mean)/std rounds differently from lpips' (x - shift)/scale, the same map in exact
arithmetic. The atol is for a CPU's own kernels: on an AVX2-only CPU (oneDNN's avx2 convolutions
sum in another order than the AVX-512 machine that recorded the fixture) one small element of 384
was off by 7.3e-5 of the largest gradient.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from draws import Replay, step_gradients
from make_consistency import lpips_random_weights, rng_key, unpack, weights_digest

import sidbench.methods.baselines.consistency.method as cd_module
from sidbench.config import compose
from sidbench.methods.baselines import distance
from sidbench.methods.baselines.distance import image_distance, with_pooling
from sidbench.methods.baselines.teacher_samples import TeacherSamples
from sidbench.teachers.networks import build_edm_network
from sidbench.teachers.teacher import Teacher
from sidbench.trainer.compute import Cost
from sidbench.trainer.context import StepContext

FIXTURE = Path(__file__).parent / "fixtures" / "consistency.pt"
RTOL, ATOL = 1e-4, 1e-6


@pytest.fixture(scope="module")
def fixture() -> dict:
    return torch.load(FIXTURE, weights_only=False)


def random_lpips(fixture: dict, pooling: str) -> torch.nn.Module:
    """The `lpips` package's VGG LPIPS with the fixture's random weights and `pooling`, as
    `distance.load_lpips` builds it from the published weights."""
    lpips = pytest.importorskip("lpips")
    vgg, lins = lpips_random_weights(fixture["lpips"]["seed"])
    assert weights_digest(vgg, lins) == fixture["lpips"]["digest"], "the random LPIPS weights are not the fixture's"
    with warnings.catch_warnings():  # lpips passes torchvision its deprecated `pretrained` argument
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="vgg", pretrained=False, pnet_rand=True, verbose=False)
    convs = [(name, m) for s in (model.net.slice1, model.net.slice2, model.net.slice3, model.net.slice4,
                                 model.net.slice5) for name, m in s.named_children() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 13
    with torch.no_grad():
        for name, conv in convs:
            conv.weight.copy_(vgg[f"{name}.weight"])
            conv.bias.copy_(vgg[f"{name}.bias"])
        for lin, w in zip(model.lins, lins):
            lin.model[-1].weight.copy_(w)
    return with_pooling(model, pooling).eval().requires_grad_(False)


def use_random_lpips(fixture: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    models: dict[str, torch.nn.Module] = {}

    def load(net: str = "vgg", device: object = "cpu", pooling: str = "max") -> torch.nn.Module:
        assert net == "vgg"
        if pooling not in models:
            models[pooling] = random_lpips(fixture, pooling)
        return models[pooling]

    monkeypatch.setattr(distance, "load_lpips", load)
    monkeypatch.setattr(cd_module, "load_lpips", load)


class ReplayDropout:
    """Dropout with the reference's masks, looked up by the random state each call starts from."""

    def __init__(self, masks: list[torch.Tensor]) -> None:
        self.masks = masks
        self.keys: list[str] = []
        self.calls: list[int] = []

    def __call__(self, x: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
        if not training or p == 0:
            return x
        key = rng_key()
        torch.empty_like(x).bernoulli_(1 - p)  # moves the stream on as the reference's draw did
        if key not in self.keys:
            self.keys.append(key)
        index = self.keys.index(key)
        self.calls.append(index)
        if index >= len(self.masks):
            raise AssertionError(f"dropout call {len(self.calls)} starts from a random state the reference never "
                                 f"reached ({len(self.masks)} states): the target did not reuse the online call's")
        mask = self.masks[index]
        assert mask.shape == x.shape
        return x * mask / (1 - p)


def run_case(fixture: dict, name: str, monkeypatch: pytest.MonkeyPatch):
    case = fixture["cases"][name]
    s = case["settings"]
    weights = fixture["weights"][s["nets"]]
    cond = s["nets"] == "cond"
    constructor = {**fixture["constructor"], "label_dim": fixture["label_dim"] if cond else 0}
    net = build_edm_network(constructor)
    net.load_state_dict(unpack(weights["teacher"]))
    teacher = Teacher(net.eval().requires_grad_(False), constructor, source="conformance fixture")
    if s["distance"] == "lpips":
        use_random_lpips(fixture, monkeypatch)
    overrides = {"num_points": s["num_points"], "mu": s["mu"], "lr": s["lr"], "dropout": s["dropout"],
                 "distance": s["distance"], "lpips_pooling": s.get("lpips_pooling", "max"), "num_teacher_samples": 4}
    cfg = compose(["method=consistency", "dataset=digits", *[f"method.{k}={v}" for k, v in overrides.items()]])
    cd = cd_module.ConsistencyDistillation(teacher, cfg.method, torch.device("cpu"), cfg)
    cd.generator.load_state_dict(unpack(weights["student"]))
    cd.target.module.load_state_dict(unpack(weights.get("target", weights["student"])))
    x, classes = fixture["x"], fixture["classes"] if cond else None
    cd.images.samples = TeacherSamples(x, classes, constructor["label_dim"], Cost())
    ctx = StepContext(cd.networks(), cd.optimizers(), torch.device("cpu"), batch=x.shape[0])
    seen = step_gradients(cd.opt, {p: n for n, p in cd.generator.named_parameters()})
    draws = {**case["draws"], "randint": [torch.arange(x.shape[0]), *case["draws"]["randint"]]}
    with Replay(draws) as replay:
        logs = cd.train_step(ctx)
    replay.assert_exhausted()
    return cd, logs, seen


def assert_tensors_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    atol = ATOL * max(float(v.abs().max()) for v in want.values())
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=RTOL, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("name", ["cifar10", "imagenet64"])
def test_one_update_sees_the_references_gradients(fixture: dict, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cd, logs, seen = run_case(fixture, name, monkeypatch)
    case = fixture["cases"][name]
    assert float(logs["consistency"]) == pytest.approx(case["loss"], rel=RTOL)
    assert_tensors_close(seen, unpack(case["grads"]))
    if "student_after" in case:  # RAdam's first step, then the target's EMA with mu on the new weights
        assert_tensors_close(dict(cd.generator.named_parameters()), unpack(case["student_after"]))
        assert_tensors_close(dict(cd.target.module.named_parameters()), unpack(case["target_after"]))


def test_the_target_call_drops_the_units_the_online_call_dropped(fixture: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    case = fixture["cases"]["dropout"]
    dropout = ReplayDropout(case["dropout_masks"])
    monkeypatch.setattr(torch.nn.functional, "dropout", dropout)
    _, logs, seen = run_case(fixture, "dropout", monkeypatch)
    assert dropout.calls == case["dropout_calls"].tolist()  # online 0..k-1, then the target 0..k-1 again
    assert float(logs["consistency"]) == pytest.approx(case["loss"], rel=RTOL)
    assert_tensors_close(seen, unpack(case["grads"]))


def test_lpips_update_with_average_pooling_sees_the_references_gradients(fixture: dict,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("lpips")
    _, logs, seen = run_case(fixture, "lpips", monkeypatch)
    case = fixture["cases"]["lpips"]
    assert float(logs["consistency"]) == pytest.approx(case["loss"], rel=RTOL)
    assert_tensors_close(seen, unpack(case["grads"]))


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_lpips_is_piqs_with_the_same_weights(fixture: dict, pooling: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both poolings against piq.LPIPS(replace_pooling=avg) with shared random weights: the input
    scaling and normalisation, the layers, the feature normalisation, the linear weights, the
    spatial mean, the pooling and the bilinear resize to 224, values and gradients."""
    pytest.importorskip("lpips")
    use_random_lpips(fixture, monkeypatch)
    ref = fixture["lpips"]
    x = ref["x"].clone().requires_grad_(True)
    d = image_distance(x, ref["y"], "lpips", lpips_net="vgg", lpips_pooling=pooling, lpips_resize=224)
    d.sum().backward()
    torch.testing.assert_close(d.detach(), ref[pooling]["distance"], rtol=RTOL, atol=0)
    want = ref[pooling]["grad_x"]
    torch.testing.assert_close(x.grad, want, rtol=1e-3, atol=2e-4 * float(want.abs().max()))
