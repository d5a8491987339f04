"""`sidbench fid` and `sidbench stats` from the command line, offline.

The Inception detector is replaced by a small feature function through the factory every FID and
`sidbench stats` use (`sidbench.eval.fid.inception_extractor`), so no weights file is needed; the digits
sources use their own offline metric (`fd_pixel`) and need no detector at all.
"""
from __future__ import annotations

import math
import socket
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sidbench.cli import main
from sidbench.testing.tiny import tiny_overrides

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit:FutureWarning")


# ------------------------------------------------------------------------------------------------
# Helpers


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Print the CLI's tables without wrapping, so that their text can be searched."""
    from rich.console import Console

    import sidbench.cli

    monkeypatch.setattr(sidbench.cli, "console", Console(stderr=True, width=400))


def _features(x: torch.Tensor) -> torch.Tensor:
    """A 24-dimensional stand-in for Inception features of uint8 [B, 3, H, W]."""
    pooled = torch.nn.functional.adaptive_avg_pool2d(x.double() / 255, 2).flatten(1)
    return torch.cat([pooled, pooled**2], dim=1)


@pytest.fixture
def fake_inception(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Replace the detector factory; returns the list of the calls it received."""
    import sidbench.eval.fid as fid

    calls: list[dict] = []

    def factory(mode: str = "legacy_tensorflow", **kwargs):
        calls.append({"mode": mode, **kwargs})
        return _features

    monkeypatch.setattr(fid, "inception_extractor", factory)
    monkeypatch.delenv("SIDBENCH_INCEPTION", raising=False)
    return calls


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


def _write_folder(path: Path, images: np.ndarray) -> Path:
    path.mkdir(parents=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(path / f"{i:05d}.png")
    return path


def _machine_line(out: str) -> tuple[str, float]:
    """The last line of standard output: `<metric> <value>`."""
    name, value = out.strip().splitlines()[-1].split()
    return name, float(value)


def _one_line_error(err: str) -> str:
    err = err.strip()
    assert err.startswith("error:") and err.count("\n") == 0, err
    return err


def _measurements(root: Path, experiment: str) -> list:
    """The teacher measurement runs in `root`'s MLflow store (run_env's), newest first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return list(client.search_runs([exp.experiment_id], "tags.`sidbench.kind` = 'teacher_measurement'",
                                   order_by=["attributes.start_time DESC"]))


# ------------------------------------------------------------------------------------------------
# Image files against statistics made by `sidbench stats`


def test_stats_then_fid_of_npz_and_folder(tmp_path: Path, fake_inception: list[dict],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    real = _write_folder(tmp_path / "real", _images(40, 0))
    assert main(["stats", str(real), "--out", str(tmp_path / "refs" / "real"), "--batch", "16", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    stats_path = tmp_path / "refs" / "real.npz"
    assert out == f"stats {stats_path}"
    with np.load(stats_path) as data:
        assert data["mu"].shape == (24,) and data["sigma"].shape == (24, 24) and data["mu"].dtype == np.float64

    # The same images as an .npz (NHWC) and as the folder itself: FID ~ 0 against their own stats.
    np.savez(tmp_path / "same.npz", images=_images(40, 0))
    assert main(["fid", str(tmp_path / "same.npz"), "--ref", str(stats_path), "--batch", "7", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    name, value = _machine_line(captured.out)
    assert name == "fid" and value == pytest.approx(0, abs=1e-6)
    assert "FID" in captured.err and str(stats_path) in captured.err  # the rich table

    assert main(["fid", str(real), "--ref", str(stats_path), "--device", "cpu"]) == 0
    assert _machine_line(capsys.readouterr().out) == ("fid", pytest.approx(0, abs=1e-6))

    # Other images are far; --num takes the first images only.
    np.savez(tmp_path / "other.npz", images=_images(40, 1) // 2)
    assert main(["fid", str(tmp_path / "other.npz"), "--ref", str(stats_path), "--device", "cpu"]) == 0
    far = _machine_line(capsys.readouterr().out)[1]
    assert main(["fid", str(tmp_path / "other.npz"), "--ref", str(stats_path), "--num", "20", "--device", "cpu"]) == 0
    part = _machine_line(capsys.readouterr().out)[1]
    assert far > 0.01 and part > 0.01 and part != far

    # The mode reaches the detector factory, for both commands.
    assert main(["stats", str(real), "--out", str(tmp_path / "clean.npz"), "--mode", "clean", "--device", "cpu"]) == 0
    assert main(["fid", str(real), "--ref", str(tmp_path / "clean.npz"), "--mode", "clean", "--device", "cpu"]) == 0
    assert [c["mode"] for c in fake_inception] == ["legacy_tensorflow"] * 5 + ["clean", "clean"]


def test_fid_of_files_needs_a_reference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.savez(tmp_path / "x.npz", images=_images(4, 0))
    assert main(["fid", str(tmp_path / "x.npz")]) == 2
    assert "--ref" in _one_line_error(capsys.readouterr().err)


def test_missing_or_bad_sources_are_one_line(tmp_path: Path, fake_inception: list[dict],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere"
    assert main(["stats", str(missing), "--out", str(tmp_path / "r.npz")]) == 1
    assert str(missing) in _one_line_error(capsys.readouterr().err)

    real = _write_folder(tmp_path / "real", _images(8, 0))
    assert main(["stats", str(real), "--out", str(tmp_path / "r.npz"), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["fid", str(real), "--ref", str(tmp_path / "r.npz"), "--num", "100", "--device", "cpu"]) == 1
    assert "fewer than the 100" in _one_line_error(capsys.readouterr().err)
    assert main(["fid", str(real), "--ref", str(tmp_path / "missing.npz"), "--device", "cpu"]) == 1
    assert "missing.npz" in _one_line_error(capsys.readouterr().err)
    # An unfinished run folder (no generator yet) is not scored as a folder of its sample grids.
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    (run / "config.yaml").write_text("dataset: {name: digits}\n")
    Image.fromarray(_images(1, 0)[0]).save(run / "samples" / "grid.png")
    assert main(["fid", str(run)]) == 1
    assert "generator.safetensors" in _one_line_error(capsys.readouterr().err)


def test_a_programming_error_inside_fid_keeps_its_traceback(tmp_path: Path, fake_inception: list[dict],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import sidbench.cli.score as commands

    real = _write_folder(tmp_path / "real", _images(8, 0))

    def broken(*args, **kwargs):
        raise ValueError("a bug, not the user's input")

    monkeypatch.setattr(commands, "save_reference_stats", broken)
    with pytest.raises(ValueError, match="a bug"):  # not turned into a one-line "error:"
        main(["stats", str(real), "--out", str(tmp_path / "r.npz"), "--device", "cpu"])


def test_counts_and_batch_sizes_are_checked_by_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["stats", "x", "--out", "r.npz", "--batch", "0"])
    assert info.value.code == 2 and "--batch: 0 is not >= 1" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# Missing Inception weights


def test_missing_inception_file_is_one_line_with_address_and_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from sidbench.eval.fid import INCEPTION_FILENAME, INCEPTION_URL

    monkeypatch.delenv("SIDBENCH_INCEPTION", raising=False)
    real = _write_folder(tmp_path / "real", _images(4, 0))
    wanted = tmp_path / "weights" / "inception.pt"
    assert main(["stats", str(real), "--out", str(tmp_path / "r.npz"), "--inception", str(wanted)]) == 1
    err = _one_line_error(capsys.readouterr().err)
    assert INCEPTION_URL in err and str(wanted) in err

    # No explicit file: the download into the cache fails (offline) and says where to put a copy.
    import sidbench.download as download

    def offline(*args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr(download, "_transfer", offline)
    monkeypatch.setenv("SIDBENCH_CACHE", str(tmp_path / "cache"))
    from sidbench.eval.reference import save_reference_stats

    ref = save_reference_stats(tmp_path / "ref.npz", np.zeros(2048), np.eye(2048))
    np.savez(tmp_path / "x.npz", images=_images(4, 0))
    assert main(["fid", str(tmp_path / "x.npz"), "--ref", str(ref), "--device", "cpu"]) == 1
    err = _one_line_error(capsys.readouterr().err)
    assert INCEPTION_URL in err and str(tmp_path / "cache" / INCEPTION_FILENAME) in err and "SIDBENCH_INCEPTION" in err


# ------------------------------------------------------------------------------------------------
# The teacher, and the teacher's value as the reference line of runs


def test_fid_teacher_on_digits_is_fd_pixel_and_cached(tiny_teacher: Path, run_env: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    args = ["fid", "teacher", "dataset=digits", f"dataset.teacher.path={tiny_teacher}", "--num", "48", "--batch", "16",
            "dataset.teacher.sampler_steps=2", "device=cpu"]
    assert main(args) == 0
    captured = capsys.readouterr()
    name, value = _machine_line(captured.out)
    assert name == "fd_pixel" and math.isfinite(value) and value > 0
    assert "fd_pixel" in captured.err and "not FID" in captured.err and "Heun, 2 steps" in captured.err

    # Recorded for runs as a FINISHED run of the dataset's experiment, tagged with what identifies it.
    from sidbench.download import sha256_file

    (rec,) = _measurements(run_env, "digits")
    tags = rec.data.tags
    assert rec.info.status == "FINISHED" and rec.info.run_name == "teacher-tiny-fd_pixel"
    assert (tags["sidbench.kind"], tags["metric"], tags["num_samples"], tags["steps"], tags["teacher_sha256"]) == \
        ("teacher_measurement", "fd_pixel", "48", "2", sha256_file(tiny_teacher))
    assert "fid_mode" not in tags and "ref" not in tags and tags["teacher"] == str(tiny_teacher.resolve())
    assert tags["code_version"] and tags["dataset"] == "digits"
    assert rec.data.metrics == {"teacher/fd_pixel": pytest.approx(value, rel=1e-5)}
    from mlflow.tracking import MlflowClient

    exp = MlflowClient(tracking_uri=f"sqlite:///{run_env / 'mlflow.db'}").get_experiment_by_name("digits")
    assert exp.artifact_location == (run_env / "runs" / "mlartifacts").as_uri()  # where start_tracker puts them
    assert not (run_env / "cache" / "teacher-metrics.json").exists()
    # The same command again gives the same number and a second measurement (the newest wins).
    assert main(args) == 0
    assert _machine_line(capsys.readouterr().out)[1] == pytest.approx(value, rel=1e-6)
    assert len(_measurements(run_env, "digits")) == 2
    # With tracking off nothing is recorded ...
    assert main([*args, "tracking.enabled=false"]) == 0
    assert "recorded as" not in capsys.readouterr().err and len(_measurements(run_env, "digits")) == 2
    record = {"value": rec.data.metrics["teacher/fd_pixel"]}

    # A run with that evaluation size and those steps finds it; other settings do not.
    from sidbench.config import compose
    from sidbench.run import reference_metrics

    info = {"metrics": {"fd_pixel": 1.0}}  # what the tiny teacher stores with its weights
    cfg = compose(tiny_overrides(tiny_teacher, **{"eval.num_samples": 48, "dataset.teacher.sampler_steps": 2}))
    assert reference_metrics(cfg, info, tiny_teacher) == {"fd_pixel": pytest.approx(record["value"])}
    # ... and nothing looked up.
    cfg_off = compose(tiny_overrides(tiny_teacher, **{"eval.num_samples": 48, "dataset.teacher.sampler_steps": 2,
                                                     "tracking.enabled": "false"}))
    assert reference_metrics(cfg_off, info, tiny_teacher) == {"fd_pixel": 1.0}
    cfg = compose(tiny_overrides(tiny_teacher, **{"eval.num_samples": 48}))  # 18 steps: not measured
    assert reference_metrics(cfg, info, tiny_teacher) == {"fd_pixel": 1.0}
    cfg = compose(tiny_overrides(tiny_teacher, **{"eval.num_samples": 64, "eval.final_samples": 64,
                                                  "dataset.teacher.sampler_steps": 2}))
    assert reference_metrics(cfg, info, tiny_teacher) == {"fd_pixel": 1.0}


def test_teacher_reference_at_the_end_comes_from_a_measurement_at_the_ends_size(tiny_teacher: Path) -> None:
    # The digits protocol scores the curve on 2000 images and the end on 20000: the card's values
    # at each size go to each, and a value at another size goes nowhere.
    from sidbench.config import compose
    from sidbench.run import reference_metrics

    cfg = compose(["tracking.enabled=false"])
    assert (cfg.eval.num_samples, cfg.eval.final_samples) == (2000, 20000)
    card = {"metrics": {"fd_pixel": 0.146}, "metric_samples": 2000,
            "final_metrics": {"fd_pixel": 0.0928}, "final_metric_samples": 20000}
    assert reference_metrics(cfg, card, tiny_teacher) == {"fd_pixel": 0.146, "fd_pixel_final": 0.0928}
    assert reference_metrics(cfg, {**card, "final_metric_samples": 10000}, tiny_teacher) == {"fd_pixel": 0.146}
    same = compose(["tracking.enabled=false", "eval.final_samples=2000"])
    assert reference_metrics(same, card, tiny_teacher) == {"fd_pixel": 0.146}


def test_teacher_reference_on_a_real_dataset_cached_else_published(tiny_teacher: Path, run_env: Path) -> None:
    from sidbench.config import compose
    from sidbench.eval.teacher_metrics import record_teacher_metric
    from sidbench.run import reference_metrics

    cfg = compose(["dataset=cifar10", f"dataset.teacher.path={tiny_teacher}"])
    info = {"published": {"fid": 1.97, "nfe": 35}}
    assert reference_metrics(cfg, info, tiny_teacher) == {"fid_published": 1.97}

    def record(value: float, mode: str = "legacy_tensorflow", ref: str = str(cfg.dataset.ref_stats), **kw) -> None:
        setting = dict(metric="fid", num_samples=50_000, steps=18, settings={"fid_mode": mode, "ref": ref})
        record_teacher_metric(cfg, tiny_teacher, value=value, **{**setting, **kw})

    record(9.0, mode="clean")                  # another FID mode
    record(8.0, ref="/data/other-stats.npz")   # another reference
    record(7.0, num_samples=1000)              # another sample count
    record(6.0, steps=40)                      # another sampler
    assert reference_metrics(cfg, info, tiny_teacher) == {"fid_published": 1.97}
    record(2.2, num_samples=int(cfg.eval.num_samples))  # the evaluation size (10k): the curve's line; the
    # end (50k images) is never divided by a 10k measurement, so the published figure stays for it
    assert reference_metrics(cfg, info, tiny_teacher) == {"fid": 2.2, "fid_published": 1.97}
    record(2.01)                               # the final size (50k): the end's, and the curve's without a 10k one
    assert reference_metrics(cfg, info, tiny_teacher) == {"fid": 2.2, "fid_final": 2.01}
    record(2.3, num_samples=int(cfg.eval.num_samples))  # a newer measurement of the same wins
    assert reference_metrics(cfg, info, tiny_teacher) == {"fid": 2.3, "fid_final": 2.01}
    # Both sizes come from one search and one hash of the file (an EDM teacher is hundreds of MB).
    import sidbench.eval.teacher_metrics as teacher_metrics

    hashed: list[Path] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(teacher_metrics, "teacher_fingerprint",
                      lambda f, _real=teacher_metrics.teacher_fingerprint: hashed.append(f) or _real(f))
        assert reference_metrics(cfg, info, tiny_teacher) == {"fid": 2.3, "fid_final": 2.01}
    assert hashed == [tiny_teacher]
    only_final = compose(["dataset=cifar10", f"dataset.teacher.path={tiny_teacher}", "eval.num_samples=5000"])
    assert reference_metrics(only_final, info, tiny_teacher) == {"fid": 2.01, "fid_final": 2.01}
    # Another teacher file (another SHA-256) does not match, nor does another dataset's experiment.
    other = run_env / "other.safetensors"
    other.write_bytes(tiny_teacher.read_bytes() + b" ")
    assert reference_metrics(cfg, info, other) == {"fid_published": 1.97}
    ffhq = compose(["dataset=ffhq64", f"dataset.teacher.path={tiny_teacher}", "dataset.teacher.sampler_steps=18",
                    f"dataset.ref_stats={cfg.dataset.ref_stats}", "eval.num_samples=10000"])
    assert reference_metrics(ffhq, info, tiny_teacher) == {"fid_published": 1.97}
    # With tracking off nothing is recorded, nor looked up.
    off = compose(["dataset=cifar10", f"dataset.teacher.path={tiny_teacher}", "tracking.enabled=false"])
    assert record_teacher_metric(off, tiny_teacher, metric="fid", value=1.0, num_samples=10_000, steps=18) is None
    assert reference_metrics(off, info, tiny_teacher) == {"fid_published": 1.97}
    assert len(_measurements(run_env, "cifar10")) == 7


def test_fid_teacher_on_a_real_dataset_uses_its_reference_and_is_cached(
        tmp_path: Path, run_env: Path, fake_inception: list[dict], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The whole default path of `sidbench fid teacher dataset=cifar10`, with a 32x32 RGB stand-in."""
    import sidbench.eval.reference as reference
    from sidbench.config import compose
    from sidbench.run import reference_metrics
    from sidbench.testing.tiny import make_tiny_teacher

    teacher = make_tiny_teacher(tmp_path / "t32.safetensors", img_resolution=32, img_channels=3)
    real = _write_folder(tmp_path / "real", np.random.default_rng(0).integers(0, 256, (30, 32, 32, 3), dtype=np.uint8))
    assert main(["stats", str(real), "--out", str(tmp_path / "cifar10-32x32.npz"), "--device", "cpu"]) == 0
    fetched: list[str] = []
    monkeypatch.setattr(reference, "_fetch", lambda url, **kw: fetched.append(url) or tmp_path / "cifar10-32x32.npz")
    capsys.readouterr()

    overrides = ["dataset=cifar10", f"dataset.teacher.path={teacher}", "dataset.teacher.sampler_steps=2"]
    assert main(["fid", "teacher", *overrides, "--num", "20", "--batch", "8", "device=cpu"]) == 0
    captured = capsys.readouterr()
    name, value = _machine_line(captured.out)
    assert name == "fid" and value > 0 and math.isfinite(value)
    cfg = compose(overrides)
    assert fetched == [cfg.dataset.ref_stats]  # the dataset's own reference statistics
    assert fake_inception[-1]["mode"] == "legacy_tensorflow" and str(fake_inception[-1]["device"]) == "cpu"
    assert "20 images; the protocol uses 50,000" in captured.err

    # Cached for runs with that evaluation size: logged as a measurement, not the published 1.97,
    # which stays only for the end (50k images, not measured).
    info = {"published": {"fid": 1.97}}
    assert reference_metrics(compose([*overrides, "eval.num_samples=20"]), info, teacher) == \
        {"fid": pytest.approx(value, rel=1e-6), "fid_published": 1.97}
    assert reference_metrics(cfg, info, teacher) == {"fid_published": 1.97}  # 10k/50k images: not measured
    # Against another reference the value is FID all the same, but not the teacher's reference line.
    assert main(["fid", "teacher", *overrides, "--num", "20", "--ref", str(tmp_path / "cifar10-32x32.npz"),
                 "--mode", "clean", "device=cpu"]) == 0
    capsys.readouterr()
    (record,) = _measurements(run_env, "cifar10")
    assert (record.data.tags["fid_mode"], record.data.tags["ref"], record.data.tags["num_samples"]) == \
        ("legacy_tensorflow", cfg.dataset.ref_stats, "20")


def test_teacher_of_another_shape_than_the_dataset_is_refused(tiny_teacher: Path, run_env: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fid", "teacher", "dataset=cifar10", f"dataset.teacher.path={tiny_teacher}", "device=cpu"]) == 2
    err = _one_line_error(capsys.readouterr().err)
    assert "dataset=" in err and "32x32" in err
    assert not (run_env / "cache").exists()  # refused before any download


# ------------------------------------------------------------------------------------------------
# A generator saved by a run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_teacher: Path):
    """A finished tiny SiD run on digits, after `sidbench fid teacher` measured the teacher for it to log."""
    from sidbench.config import compose
    from sidbench.run import run

    root = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("SIDBENCH_CACHE", str(root / "cache"))
        cfg = compose(tiny_overrides(tiny_teacher, run_name="fid"))
        # The run's evaluation size and the card's 18 Heun steps: the setting the run looks up.
        assert main(["fid", "teacher", "dataset=digits", f"dataset.teacher.path={tiny_teacher}",
                     "--num", str(cfg.eval.num_samples), "device=cpu"]) == 0
        result = run(cfg)
    result.run_dir = root / result.run_dir  # the run folder is relative to the working directory
    return root, result


def test_run_logs_cached_teacher_value_and_eval_seconds(tiny_run) -> None:
    from mlflow.tracking import MlflowClient

    root, result = tiny_run
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    metrics = client.get_run(result.mlflow_run_id).data.metrics
    (measured,) = _measurements(root, "digits")
    # The measurement wins over the value stored in the file (1.0).
    assert measured.data.metrics["teacher/fd_pixel"] != 1.0
    assert metrics["teacher/fd_pixel"] == pytest.approx(measured.data.metrics["teacher/fd_pixel"], rel=1e-6)
    history = client.get_metric_history(result.mlflow_run_id, "eval/seconds_total")
    per_eval = client.get_metric_history(result.mlflow_run_id, "eval/seconds")
    assert len(history) >= 2 and history[-1].value == pytest.approx(sum(m.value for m in per_eval))
    assert [h.value for h in history] == sorted(h.value for h in history)


def test_fid_of_a_saved_generator_matches_the_run(tiny_run, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    root, result = tiny_run
    monkeypatch.chdir(root)
    monkeypatch.setenv("SIDBENCH_CACHE", str(root / "cache"))
    gen = result.run_dir / "generator.safetensors"
    assert main(["fid", str(gen), "dataset=digits", "--num", "64", "--batch", "64", "device=cpu"]) == 0
    captured = capsys.readouterr()
    name, value = _machine_line(captured.out)
    assert name == "fd_pixel" and "one_step (sigma 2.5), 1 NFE" in captured.err and "sid" in captured.err
    # The same noise, labels and weights as the run's own last evaluation: the same number.
    assert value == pytest.approx(result.metrics["eval/fd_pixel"], rel=1e-4)

    # The run folder itself; the dataset comes from the run's config; other batches, same images.
    assert main(["fid", str(result.run_dir), "--num", "64", "--batch", "24", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert _machine_line(captured.out) == ("fd_pixel", pytest.approx(value, rel=1e-6))
    assert "config.yaml" in captured.err


def test_fid_of_a_saved_generator_against_statistics(tiny_run, tmp_path: Path, fake_inception: list[dict],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A generator scored with FID (`--ref`), on the detector's device, images as `generated_batches` makes."""
    from sidbench.eval.generators import load_generator
    from sidbench.eval.images import generated_batches

    _, result = tiny_run
    gen = load_generator(result.run_dir)
    images = torch.cat(list(generated_batches(gen, 32, 32, gen.shape, 0, "cpu", seed=12345)))
    np.savez(tmp_path / "same.npz", images=images.permute(0, 2, 3, 1).numpy())
    np.savez(tmp_path / "other.npz", images=_images(32, 3))
    assert main(["stats", str(tmp_path / "same.npz"), "--out", str(tmp_path / "gen.npz"), "--device", "cpu"]) == 0
    assert main(["stats", str(tmp_path / "other.npz"), "--out", str(tmp_path / "other-stats.npz"), "--device", "cpu"]) == 0
    capsys.readouterr()
    gen_file = str(result.run_dir / "generator.safetensors")
    assert main(["fid", gen_file, "dataset=digits", "--ref", str(tmp_path / "gen.npz"), "--num", "32",
                 "--batch", "10", "--device", "cpu"]) == 0
    assert _machine_line(capsys.readouterr().out) == ("fid", pytest.approx(0, abs=1e-6))
    assert main(["fid", gen_file, "dataset=digits", "--ref", str(tmp_path / "other-stats.npz"), "--num", "32",
                 "--device", "cpu"]) == 0
    assert _machine_line(capsys.readouterr().out)[1] > 0.01


def test_load_generator_follows_the_recipe_the_method_wrote(tiny_run, tmp_path: Path) -> None:
    from sidbench.eval.generators import load_generator
    from sidbench.teachers.load import TeacherLoadError, load_native_teacher, save_native_teacher

    _, result = tiny_run
    gen = load_generator(result.run_dir)
    assert gen.shape == (1, 8, 8) and gen.label_dim == 0
    assert gen.recipe == {"sampler": "one_step", "sigmas": [2.5], "nfe": 1} and gen.nfe == 1 and gen.method == "sid"
    z = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(gen(z, None), gen.net(2.5 * z, torch.full((3,), 2.5), None))

    constructor, state, info = load_native_teacher(result.run_dir / "generator.safetensors")
    net = gen.net
    other = save_native_teacher(net, constructor, tmp_path / "g.safetensors",
                                {**info, "sampling": {"sampler": "one_step", "sigmas": [1.5], "nfe": 1}})
    torch.testing.assert_close(load_generator(other)(z, None), net(1.5 * z, torch.full((3,), 1.5), None))
    # a multi-step recipe: Heun on the given grid, 2 x 2 - 1 = 3 NFE
    calls = []
    steps = load_generator(save_native_teacher(net, constructor, tmp_path / "heun.safetensors",
                                               {**info, "sampling": {"sampler": "heun", "sigmas": [80.0, 1.0, 0.0], "nfe": 3}}))
    steps.net.register_forward_pre_hook(lambda m, a: calls.append(a[1][0].item()))
    steps(z, None)
    assert calls == pytest.approx([80.0, 1.0, 1.0])
    # no recipe, no guess
    bare = save_native_teacher(net, constructor, tmp_path / "bare.safetensors", {})
    with pytest.raises(TeacherLoadError, match="records no sampling recipe"):
        load_generator(bare)
    assert len(state) == len(net.state_dict())
