"""The offline digits distances (fd_pixel, fd_digits), their classifier and their noise floor."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sidbench.data.digits import load_digits_tensors
from sidbench.eval.base import Metric
from sidbench.eval import METRICS
from sidbench.eval.digits import FDDigits, FDPixel
from sidbench.assets.digits_floor import DEFAULT_OUT as FLOOR_JSON
from sidbench.assets.train_digits_classifier import (
    MIN_ACCURACY,
    digits_split,
    heldout_accuracy,
    train_digits_classifier,
)
from sidbench.eval.digits_classifier import DEFAULT_WEIGHTS, load_digits_classifier, real_digits_uint8
from sidbench.eval.images import generated_batches, to_uint8

NAMES = ["fd_pixel", "fd_digits"]


@pytest.fixture(scope="module")
def real() -> torch.Tensor:
    return load_digits_tensors()[0]


@pytest.fixture(scope="module")
def metrics() -> dict[str, Metric]:
    return {name: METRICS.get(name)() for name in NAMES}


@pytest.fixture(scope="module")
def floor() -> dict:
    return json.loads(FLOOR_JSON.read_text())


def _noised(x: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    return x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))


def _blurred(x: torch.Tensor, amount: float) -> torch.Tensor:
    """Mix each image with its 3x3 box blur (background-padded)."""
    box = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), value=-1.0), 3, stride=1)
    return (1 - amount) * x + amount * box


@pytest.mark.parametrize("name", NAMES)
def test_real_against_itself_scores_zero(metrics, real, name):
    m = metrics[name]
    assert abs(m.compute([to_uint8(real)])) < 1e-6
    assert abs(m.compute(to_uint8(real).split(100))) < 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_degradation_is_monotone_and_bad_generators_are_far_above_the_floor(metrics, real, floor, name):
    m = metrics[name]
    score = lambda x: m.compute([to_uint8(x)])  # noqa: E731
    noise = [score(_noised(real, s)) for s in (0.0, 0.1, 0.2, 0.4)]
    blur = [score(_blurred(real, a)) for a in (0.0, 0.1, 0.25, 0.5)]
    zeros = score(torch.zeros(2000, 1, 8, 8))
    pure_noise = score(torch.randn(2000, 1, 8, 8, generator=torch.Generator().manual_seed(1)))
    assert noise == sorted(noise) and len(set(noise)) == len(noise), noise
    assert blur == sorted(blur) and len(set(blur)) == len(blur), blur
    bootstrap = floor[name]["bootstrap_2000_vs_real"]["mean"]
    halves = floor[name]["halves_898_vs_899"]["mean"]
    for bad in (zeros, pure_noise):
        assert bad > 20 * halves > 20 * bootstrap
        assert bad > 2 * max(noise[2], blur[2])
    # A slight degradation lands between a perfect generator and a broken one.
    for slight in (noise[2], blur[1]):
        assert bootstrap < slight < min(zeros, pure_noise) / 5


def test_fd_digits_sees_what_fd_pixel_misses(floor):
    # A Gaussian with the real pixel moments is at the floor in pixel space, far off in classifier features.
    px, dg = floor["fd_pixel"], floor["fd_digits"]
    assert px["gaussian_2000_vs_real"]["mean"] < 2 * px["bootstrap_2000_vs_real"]["mean"]
    assert dg["gaussian_2000_uint8_vs_real"]["mean"] > 20 * dg["halves_898_vs_899"]["mean"]


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_and_order_independent(metrics, real, name):
    m = metrics[name]
    images = to_uint8(_noised(real, 0.15))
    d = m.compute([images])
    assert m.compute([images]) == d
    assert METRICS.get(name)().compute([images]) == d  # a fresh object, a fresh reference
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(3))
    assert m.compute(images[perm].split(97)) == pytest.approx(d, rel=1e-9, abs=1e-9)
    assert m.compute(iter(images.flip(0).split(500))) == pytest.approx(d, rel=1e-9, abs=1e-9)


def test_reference_goes_through_to_uint8(metrics, real):
    # An explicit float reference is quantised like generated images: it matches the default reference.
    explicit = FDPixel(real=real)
    for a, b in zip(explicit.reference_statistics, metrics["fd_pixel"].reference_statistics):
        np.testing.assert_array_equal(a, b)
    # Real images in float: 0.5 / 127.5 off at most from what the metrics see.
    seen = real_digits_uint8()[0].float() / 127.5 - 1
    assert (seen - real).abs().max() <= 0.5 / 127.5 + 1e-6


def test_reference_statistics_are_cached(metrics):
    m = metrics["fd_pixel"]
    assert m.reference_statistics is m.reference_statistics


def test_scores_the_generated_batches_stream(metrics, real):
    # A "generator" that returns real digits (cycled) through the standard sampling path.
    drawn = []

    def sample_fn(z, labels):
        idx = (torch.arange(len(z)) + sum(drawn)) % len(real)
        drawn.append(len(z))
        return real[idx]

    # All 1797 real digits plus the first 203 again: close to, but not at, 0; under the halves' floor.
    d = metrics["fd_pixel"].compute(generated_batches(sample_fn, 2000, 512, (1, 8, 8)))
    assert drawn == [512, 512, 512, 464]
    assert 0 < d < 0.05


def test_shipped_classifier_reaches_its_recorded_accuracy():
    record = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text())
    assert record["heldout_accuracy"] >= MIN_ACCURACY >= 0.97
    assert record["sha256"] == hashlib.sha256(DEFAULT_WEIGHTS.read_bytes()).hexdigest()
    assert DEFAULT_WEIGHTS.stat().st_size < 300_000
    model = load_digits_classifier()
    assert model.feature_dim == record["feature_dim"]
    _, labels = real_digits_uint8()
    train, heldout = digits_split(labels)
    assert heldout.tolist() == record["split"]["heldout_indices"]
    assert len(train) == record["split"]["num_train"] and not set(train) & set(heldout)
    accuracy = heldout_accuracy(model)
    assert accuracy >= 0.97
    assert accuracy == pytest.approx(record["heldout_accuracy"], abs=0.5 / len(heldout))
    assert "digits_classifier" in record["command"] and "--seed 0 --epochs 60" in record["command"]


def test_fd_digits_features_have_the_recorded_width(metrics, real):
    feats = metrics["fd_digits"].features([to_uint8(real[:5])])
    assert feats.shape == (5, json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text())["feature_dim"])
    assert feats.dtype == np.float64


def test_an_undertrained_classifier_is_refused_and_nothing_written(tmp_path):
    out = tmp_path / "c.safetensors"
    with pytest.raises(RuntimeError, match="held-out accuracy"):
        train_digits_classifier(out, epochs=1, verbose=False)
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_registered_by_name():
    assert METRICS.get("fd_pixel") is FDPixel and METRICS.get("fd_digits") is FDDigits
    assert [METRICS.get(n).name for n in NAMES] == NAMES  # the registered name is the logged one
    assert "pixel space" in FDPixel.reference and "not FID" in FDDigits.reference
    with pytest.raises(KeyError, match="fd_digits, fd_dinov2, fd_pixel, fid, precision_recall") as err:
        METRICS.get("fd_pxel")
    assert "'fd_pxel'" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "batch, error",
    [
        (torch.arange(3, dtype=torch.uint8).view(1, 3, 1, 1).expand(4, 3, 8, 8), ValueError),  # colour
        (torch.zeros(4, 1, 16, 16, dtype=torch.uint8), ValueError),  # wrong resolution
        (torch.zeros(4, 8, 8, dtype=torch.uint8), ValueError),  # no channel axis
        (torch.zeros(4, 1, 8, 8), TypeError),  # float, not uint8
        (np.zeros((4, 1, 8, 8), dtype=np.uint8), TypeError),  # not a tensor
    ],
)
def test_wrong_inputs_get_a_clear_error(metrics, name, batch, error):
    with pytest.raises(error, match=rf"{name}: expected .*\[B, 1, 8, 8\]|{name}: expected uint8 image batches"):
        metrics[name].compute([batch])


@pytest.mark.parametrize("name", NAMES)
def test_gray_stored_as_rgb_scores_as_gray(metrics, real, name):
    # image files come back as RGB, grayscale repeated (clean-fid's reader)
    gray = to_uint8(real[:50])
    assert metrics[name].compute([gray.expand(-1, 3, -1, -1)]) == metrics[name].compute([gray])


@pytest.mark.parametrize("name", NAMES)
def test_too_few_images(metrics, name):
    with pytest.raises(ValueError, match="no images"):
        metrics[name].compute([])
    with pytest.raises(ValueError, match="at least 2"):
        metrics[name].compute([torch.zeros(1, 1, 8, 8, dtype=torch.uint8)])


def test_floor_record_agrees_with_an_independent_measurement(floor):
    # The same fd_pixel floor measured by other code before this project was written (a feasibility
    # run on the same data): halves 0.284 +- 0.022, bootstrap 0.067 +- 0.011, Gaussian 0.070.
    px = floor["fd_pixel"]
    assert px["halves_898_vs_899"]["mean"] == pytest.approx(0.284, abs=0.02)
    assert px["bootstrap_2000_vs_real"]["mean"] == pytest.approx(0.067, abs=0.01)
    assert px["gaussian_2000_vs_real"]["mean"] == pytest.approx(0.070, abs=0.01)
    for name in NAMES:
        assert floor[name]["bootstrap_2000_vs_real"]["mean"] < floor[name]["halves_898_vs_899"]["mean"]
