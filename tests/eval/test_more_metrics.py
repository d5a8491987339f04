"""FD-DINOv2 and precision/recall: each on a tiny random network built here and saved as a weights
file, so it runs through the path the published weights take (found by setting, environment
variable or cache; loaded as tensors only); each checked against a hand computation on known
features; their references made by `sidbench stats`; several metrics in one evaluation."""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from sidbench.cli.score import stats_command, stats_for_dataset
from sidbench.config import ConfigError, compose
from sidbench.download import DownloadError
from sidbench.eval.dinov2 import DINOV2_WEIGHTS, DINOv2ViT
from sidbench.eval.evaluator import Evaluator
from sidbench.eval.factory import build_metric
from sidbench.eval.fd_dinov2 import FDDINOv2
from sidbench.eval.metric_refs import default_reference_path, load_features, save_features
from sidbench.eval.precision_recall import PrecisionRecall, inside, manifold_radii, precision_recall
from sidbench.eval.reference import ReferenceStatsError, load_reference_stats, save_reference_stats
from sidbench.eval.vgg16 import VGG16_WEIGHTS, VGGFeatures
from sidbench.eval.weights import detector_weights
from sidbench.testing.file_server import serving, without_proxies


def _console() -> Console:
    return Console(file=io.StringIO(), width=150, force_terminal=False)


def _tiny_dinov2(path: Path) -> Path:
    """A random ViT with DINOv2's layout: width 64 (one head of 64), 2 blocks, patch 14, a 4x4 grid."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = DINOv2ViT(dim=64, depth=2, heads=1, hidden=96, patch=14, grid=4)
        for p in net.parameters():
            torch.nn.init.normal_(p, std=0.2)
    torch.save(net.state_dict(), path)
    return path


def _tiny_vgg(path: Path) -> Path:
    """A random VGG-shaped network: conv, ReLU, pool, conv, ReLU, pool, then fc1, fc2 (width 32), classes."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        convs = {0: (3, 4), 3: (4, 8)}
        net = VGGFeatures(convs, 6, 2, (8 * 2 * 2, 32), (32, 32), 10)
        for p in net.parameters():
            torch.nn.init.normal_(p, std=0.3)
    torch.save(net.state_dict(), path)
    return path


def _images(n: int, seed: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8)


def _npz(path: Path, images: np.ndarray) -> Path:
    np.savez(path, images=images)
    return path


# -- precision and recall: the geometry by hand ------------------------------------------------------
# Real points on a line at 0, 1, 2, 3, 10 (k = 3). Each one's 3rd nearest other point:
#   0 -> {1, 2, 3}: radius 3      1 -> {0, 2, 3}: 2      2 -> {1, 3, 0}: 2      3 -> {2, 1, 0}: 3
#   10 -> {3, 2, 1}: radius 9
REAL = np.array([[0.0], [1.0], [2.0], [3.0], [10.0]])
REAL_RADII = [3.0, 2.0, 2.0, 3.0, 9.0]
# Generated points 5, 20, 19.5, 30, -4:
#   5: 5 from 10 <= 9 -> inside;  20: 10 from 10 > 9, 17 from 3 > 3 -> outside;  19.5: 9.5 from 10 > 9 -> outside;
#   30: outside;  -4: 4 from 0 > 3, 5 from 1 > 2, 14 from 10 > 9 -> outside.          precision = 1/5
# Their own radii, in the same order:
#   5 -> {-4: 9, 19.5: 14.5, 20: 15}: 15      20 -> {19.5: .5, 30: 10, 5: 15}: 15     19.5 -> {20: .5, 30: 10.5, 5: 14.5}: 14.5
#   30 -> {20: 10, 19.5: 10.5, 5: 25}: 25     -4 -> {5: 9, 19.5: 23.5, 20: 24}: 24
# Real points inside the generated manifold: 0, 1, 2, 3 (4 to 7 from -4, radius 24), 10 (5 from 5, radius 15):
#   recall = 5/5.
GEN = np.array([[5.0], [20.0], [19.5], [30.0], [-4.0]])


def test_radii_precision_and_recall_by_hand() -> None:
    assert manifold_radii(REAL, 3).tolist() == REAL_RADII
    assert manifold_radii(GEN, 3).tolist() == [15.0, 15.0, 14.5, 25.0, 24.0]
    assert inside(GEN, REAL, torch.tensor(REAL_RADII)).tolist() == [True, False, False, False, False]
    assert precision_recall(REAL, GEN, 3) == (pytest.approx(0.2), pytest.approx(1.0))


def test_a_point_on_a_boundary_is_inside_and_blocks_do_not_change_anything() -> None:
    # 19 is 9 from real point 10 (radius 9): on the boundary, inside; 19.0001 is outside every ball.
    # -3 is 3 from real point 0 (radius 3): inside; -3.0001 is outside every ball.
    probes = np.array([[19.0], [19.0001], [-3.0], [-3.0001]])
    assert inside(probes, REAL, torch.tensor(REAL_RADII)).tolist() == [True, False, True, False]
    rng = np.random.default_rng(0)
    real, gen = rng.normal(size=(37, 5)), rng.normal(0.5, 1.2, size=(29, 5))
    assert precision_recall(real, gen, 3, block=7) == precision_recall(real, gen, 3, block=4096)


def test_precision_recall_against_a_plain_loop() -> None:
    """Random points in general position: the metric equals a direct transcription of the paper's
    definition, one point at a time in float64."""
    rng = np.random.default_rng(1)
    real, gen = rng.normal(size=(40, 6)), rng.normal(0.3, 1.1, size=(30, 6))

    def kth(points: np.ndarray, i: int, k: int = 3) -> float:
        return sorted(np.linalg.norm(points - points[i], axis=1))[k]  # [0] is the point itself

    def share(probes: np.ndarray, manifold: np.ndarray) -> float:
        radii = [kth(manifold, i) for i in range(len(manifold))]
        hits = [any(np.linalg.norm(p - m) <= r for m, r in zip(manifold, radii)) for p in probes]
        return sum(hits) / len(hits)

    p, r = precision_recall(real, gen, 3, block=8)
    assert (p, r) == (pytest.approx(share(gen, real)), pytest.approx(share(real, gen)))
    assert 0 < p < 1 and 0 < r < 1  # the sets overlap partly: the test can tell a wrong inequality


def test_too_few_points_is_one_line() -> None:
    from sidbench.errors import InputError

    with pytest.raises(InputError, match="k=3 needs at least 4 points"):
        manifold_radii(np.zeros((3, 2)), 3)


# -- the networks, through their weights files ------------------------------------------------------
def test_vgg_layout_is_torchvisions_vgg16() -> None:
    """The layout read from torchvision's VGG16 (random weights) gives torchvision's own fc2 activations."""
    import torchvision

    tv = torchvision.models.vgg16(weights=None).eval()
    net = VGGFeatures.from_state_dict(tv.state_dict()).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = tv.classifier[:5](torch.flatten(tv.avgpool(tv.features(x)), 1))
        assert torch.equal(net(x), expected)
    assert expected.shape == (1, 4096)


def test_precision_recall_metric_with_a_tiny_vgg_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = _tiny_vgg(tmp_path / "tiny-vgg.pth")
    monkeypatch.setenv("SIDBENCH_VGG16", str(weights))
    real = _npz(tmp_path / "real.npz", _images(12, 0))
    ref = stats_command(real, tmp_path / "refs" / "pr", metric="precision_recall", device="cpu", console=_console())
    features = load_features(ref, "precision_recall")
    assert ref.suffix == ".npz" and features.shape == (12, 32)
    metric = PrecisionRecall(ref, device="cpu")
    values = metric.compute_values(torch.from_numpy(_images(12, 0)).split(5))
    assert values == {"precision": 1.0, "recall": 1.0}  # the reference images themselves
    # the same numbers by hand from the features the network gives
    other = _images(9, 3)
    gen = metric.features([torch.from_numpy(other)])
    assert metric.compute_values([torch.from_numpy(other)]) == dict(zip(("precision", "recall"),
                                                                        precision_recall(features, gen, 3)))
    with pytest.raises(TypeError, match="two values"):
        metric.compute([torch.from_numpy(other)])


def test_fd_dinov2_metric_with_a_tiny_vit_file(tmp_path: Path) -> None:
    weights = _tiny_dinov2(tmp_path / "tiny-dinov2.pth")
    real = _npz(tmp_path / "real.npz", _images(10, 0))
    ref = stats_command(real, tmp_path / "dino", metric="fd_dinov2", weights_path=weights, device="cpu", console=_console())
    mu, sigma = load_reference_stats(ref, "fd_dinov2")
    assert mu.shape == (64,)
    same = FDDINOv2(ref, weights_path=weights, device="cpu")
    assert same.compute(torch.from_numpy(_images(10, 0)).split(3)) == pytest.approx(0.0, abs=1e-8)
    # other images: the Frechet distance of their features, worked out here from its formula
    other = torch.from_numpy(_images(8, 5))
    feats = same.feature_extractor(other)
    m2, s2 = feats.mean(0), np.cov(feats, rowvar=False)
    # tr sqrt(S1 S2) from the eigenvalues of S1^1/2 S2 S1^1/2 (symmetric, PSD)
    w, v = np.linalg.eigh(sigma)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root @ s2 @ root)
    expected = ((mu - m2) ** 2).sum() + np.trace(sigma) + np.trace(s2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum()
    assert same.compute([other]) == pytest.approx(expected, rel=1e-6)
    assert same.num_images == 8


def test_statistics_files_say_whose_they_are(tmp_path: Path) -> None:
    dino = save_reference_stats(tmp_path / "d.npz", np.zeros(3), np.eye(3), metric="fd_dinov2")
    with pytest.raises(ReferenceStatsError, match="holds fd_dinov2 statistics, not fid"):
        load_reference_stats(dino)
    edm = save_reference_stats(tmp_path / "e.npz", np.zeros(3), np.eye(3))  # EDM's format: FID's
    with pytest.raises(ReferenceStatsError, match="holds fid statistics, not fd_dinov2"):
        load_reference_stats(edm, "fd_dinov2")
    with pytest.raises(Exception, match="holds fd_dinov2 features, not precision_recall's|holds no 'features'"):
        load_features(dino, "precision_recall")
    feats = save_features(tmp_path / "f", np.ones((4, 2)), "precision_recall")
    assert feats.name == "f.npz" and load_features(feats, "precision_recall").dtype == np.float32


# -- weights: offline, named, checked --------------------------------------------------------------
def test_missing_weights_offline_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sidbench.download as download

    monkeypatch.delenv("SIDBENCH_DINOV2", raising=False)
    monkeypatch.setattr(download, "_transfer", lambda *a, **k: (_ for _ in ()).throw(OSError("no network")))
    with pytest.raises(DownloadError) as err:
        detector_weights(DINOV2_WEIGHTS, cache_dir=tmp_path, progress=False)
    text = str(err.value)
    assert "\n" not in text and DINOV2_WEIGHTS.url in text and str(tmp_path / DINOV2_WEIGHTS.filename) in text
    assert "eval.dinov2_path" in text and "$SIDBENCH_DINOV2" in text
    with pytest.raises(DownloadError, match=r"DINOv2 ViT-L/14 weights not found at /nowhere/x.pth \(the configured eval.dinov2_path\)"):
        detector_weights(DINOV2_WEIGHTS, "/nowhere/x.pth")
    monkeypatch.setenv("SIDBENCH_VGG16", str(tmp_path / "gone.pth"))
    with pytest.raises(DownloadError, match=r"named by \$SIDBENCH_VGG16.*vgg16-397923af.pth"):
        detector_weights(VGG16_WEIGHTS)


def test_a_first_download_without_a_recorded_digest_prints_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    import sidbench.download as download

    def fake(url, output_file, pup, **kwargs):
        Path(output_file).write_bytes(b"tensors")

    monkeypatch.setattr(download, "_transfer", fake)
    path = detector_weights(DINOV2_WEIGHTS, cache_dir=tmp_path, progress=False)
    digest = download.sha256_file(path)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and digest in err and "dinov2_vitl14_pretrain.pth" in err
    detector_weights(DINOV2_WEIGHTS, cache_dir=tmp_path, progress=False)  # later uses: checked, silent
    assert capsys.readouterr().err == ""
    # VGG16's digest is known: a file that differs is refused
    (tmp_path / VGG16_WEIGHTS.filename).write_bytes(b"not the weights")
    with pytest.raises(download.ChecksumError, match="expected SHA-256"):
        detector_weights(VGG16_WEIGHTS, cache_dir=tmp_path, progress=False)


def test_weights_are_loaded_as_tensors_only(tmp_path: Path) -> None:
    """A pickle that would run code is refused by the loader (weights_only), in one line."""
    from sidbench.errors import InputError
    from sidbench.eval.dinov2 import DINOv2Extractor

    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    path = tmp_path / "evil.pth"
    torch.save({"cls_token": torch.zeros(1), "x": Payload()}, path)
    with pytest.raises(InputError, match="cannot read DINOv2 ViT-L/14 weights"):
        DINOv2Extractor.from_file(path)


# -- from the run config: references, several metrics in one evaluation ----------------------------
def test_references_from_the_config_and_stats_default_place(tmp_path: Path, run_env: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDBENCH_CACHE", str(tmp_path / "cache"))
    vgg = _tiny_vgg(tmp_path / "vgg.pth")
    cfg = compose(["dataset=cifar10", f"eval.vgg16_path={vgg}"])
    with pytest.raises(ConfigError, match=r"eval.refs.precision_recall=null: no precision_recall reference for dataset "
                                          r"cifar10 at .*cifar10-precision_recall.npz"):
        build_metric("precision_recall", cfg, device="cpu")
    real = _npz(tmp_path / "real.npz", _images(8, 0, 32))
    written = stats_for_dataset(real, ["dataset=cifar10", f"eval.vgg16_path={vgg}"], metric="precision_recall", out=None,
                                device="cpu", console=_console())
    assert written == default_reference_path("cifar10", "precision_recall") == tmp_path / "cache" / "refs" / "cifar10-precision_recall.npz"
    metric = build_metric("precision_recall", cfg, device="cpu")
    assert metric.reference == str(written) and metric.weights_path == str(vgg)
    assert type(metric).measurement_settings(cfg) == {"ref": str(written)}


def test_one_evaluation_measures_every_metric_on_the_same_images(tmp_path: Path) -> None:
    vgg = _tiny_vgg(tmp_path / "vgg.pth")
    vit = _tiny_dinov2(tmp_path / "vit.pth")
    real = _images(16, 0)
    pr = PrecisionRecall(np.zeros((0, 1), np.float32), weights_path=vgg, device="cpu")
    pr = PrecisionRecall(pr.features([torch.from_numpy(real)]), weights_path=vgg, device="cpu")
    fd = FDDINOv2(tmp_path / "none.npz", weights_path=vit, device="cpu")
    feats = fd.feature_extractor(torch.from_numpy(real))
    fd = FDDINOv2((feats.mean(0), np.cov(feats, rowvar=False)), weights_path=vit, device="cpu")
    calls: list[int] = []

    def sample(z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        calls.append(z.shape[0])
        return torch.tanh(z)

    ev = Evaluator([fd, pr], 10, 4, (3, 16, 16), 0, torch.device("cpu"))
    out = ev(sample)
    assert sum(calls) == 10  # generated once for both metrics
    assert set(out) == {"eval/fd_dinov2", "eval/precision", "eval/recall", "eval/seconds"}
    assert 0 <= out["eval/precision"] <= 1 and math.isfinite(out["eval/fd_dinov2"])
    # each metric alone on the same noise gives the same numbers
    assert Evaluator(pr, 10, 4, (3, 16, 16), 0, torch.device("cpu"))(sample)["eval/recall"] == out["eval/recall"]
    assert Evaluator(fd, 10, 4, (3, 16, 16), 0, torch.device("cpu"))(sample)["eval/fd_dinov2"] == out["eval/fd_dinov2"]


def test_a_run_logs_every_metric_and_the_leaderboard_shows_them(tiny_teacher: Path, run_env: Path) -> None:
    """eval.metrics at every evaluation and at the end, eval.final_metrics at the end only, the final
    evaluation's size as a tag; the leaderboard's columns from it."""
    from mlflow.tracking import MlflowClient

    from sidbench.cli import main
    from sidbench.harness.leaderboard import build_leaderboard
    from sidbench.testing.tiny import tiny_overrides

    vgg = _tiny_vgg(run_env / "vgg.pth")
    ref = save_features(run_env / "pr.npz", PrecisionRecall(np.zeros((0, 1), np.float32), weights_path=vgg, device="cpu")
                        .features([torch.from_numpy(_images(20, 0, 8))]), "precision_recall")
    extra = {"eval.metrics": "[precision_recall]", "eval.final_metrics": "[fd_digits]", "eval.final_samples": 96,
             "eval.vgg16_path": vgg, "eval.refs.precision_recall": ref}
    assert main(["run", *tiny_overrides(tiny_teacher, **extra), "run_name=more"]) == 0
    client = MlflowClient(tracking_uri=f"sqlite:///{run_env / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    logged = run.data.metrics
    for key in ("eval/fd_pixel", "eval/precision", "eval/recall", "eval/fd_pixel_final", "eval/precision_final",
                "eval/recall_final", "eval/fd_digits_final"):
        assert key in logged, key
    assert "eval/fd_digits" not in logged  # measured at the end only
    assert len(client.get_metric_history(run.info.run_id, "eval/precision")) >= 2
    assert run.data.tags["final_images"] == "96"
    board = build_leaderboard(f"sqlite:///{run_env / 'mlflow.db'}", run_env / "lb").measured
    row = board.iloc[0]
    assert row["metric"] == "fd_pixel" and row["final_mean"] == pytest.approx(logged["eval/fd_pixel_final"])
    assert row["final_precision"] == pytest.approx(logged["eval/precision_final"])
    assert row["final_fd_digits"] == pytest.approx(logged["eval/fd_digits_final"])
    assert row["final_images"] == 96 and bool(row["proxy"]) is True


def test_weights_download_from_a_local_server_and_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The real download path (pooch through sidbench.download) for both detectors, from files this
    test serves on 127.0.0.1: fetched once into the cache, checked (VGG16 against its recorded
    SHA-256, DINOv2 against the digest of its first copy) and loaded as tensors; the features equal
    those of the same file given by path."""
    import dataclasses
    import hashlib

    import sidbench.eval.dinov2 as dinov2
    import sidbench.eval.vgg16 as vgg16

    files = {"/dinov2.pth": _tiny_dinov2(tmp_path / "d.pth").read_bytes(), "/vgg16.pth": _tiny_vgg(tmp_path / "v.pth").read_bytes()}
    with serving(files) as server:
        without_proxies(monkeypatch)
        monkeypatch.delenv("SIDBENCH_DINOV2", raising=False)
        monkeypatch.delenv("SIDBENCH_VGG16", raising=False)
        url = server.url("")
        monkeypatch.setattr(dinov2, "DINOV2_WEIGHTS", dataclasses.replace(DINOV2_WEIGHTS, url=url + "/dinov2.pth"))
        vgg_sha = hashlib.sha256(files["/vgg16.pth"]).hexdigest()
        monkeypatch.setattr(vgg16, "VGG16_WEIGHTS", dataclasses.replace(VGG16_WEIGHTS, url=url + "/vgg16.pth", sha256=vgg_sha))
        cache = tmp_path / "cache"
        images = torch.from_numpy(_images(3, 1))
        for module, make, name in ((dinov2, dinov2.dinov2_extractor, "/dinov2.pth"), (vgg16, vgg16.vgg16_extractor, "/vgg16.pth")):
            downloaded = make(None, device="cpu", cache_dir=cache, progress=False)
            by_path = make(tmp_path / ("d.pth" if name == "/dinov2.pth" else "v.pth"), device="cpu")
            np.testing.assert_array_equal(downloaded(images), by_path(images))
            make(None, device="cpu", cache_dir=cache, progress=False)  # again: from the cache
        assert server.requests == ["/dinov2.pth", "/vgg16.pth"]
        assert (cache / DINOV2_WEIGHTS.filename).read_bytes() == files["/dinov2.pth"]
        assert "records no SHA-256 for dinov2_vitl14_pretrain.pth" in capsys.readouterr().err  # printed once
        # a served file that is not the recorded one is refused
        server.files["/vgg16.pth"] = b"other bytes"
        from sidbench.download import ChecksumError

        with pytest.raises(ChecksumError):
            vgg16.vgg16_extractor(None, device="cpu", cache_dir=tmp_path / "cache2", progress=False)

