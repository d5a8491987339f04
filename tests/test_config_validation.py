"""Bad settings are refused in the parent process, before torchrun starts: exit code 2 and one line
that names the setting, the bad value and what is allowed (sidbench/schema.py)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import sidbench.cli.run
import sidbench.run
from sidbench.cli import main

UNKNOWN_RUN_ID = "0123456789abcdef0123456789abcdef"


def _folder(root: Path, checkpoint: bytes | None) -> None:
    """A run folder of the default settings, with `checkpoint` as its checkpoint file (None: none)."""
    from omegaconf import OmegaConf

    from sidbench.config import compose

    (root / "runs" / "digits" / "old").mkdir(parents=True)
    (root / "runs" / "digits" / "old" / "config.yaml").write_text(OmegaConf.to_yaml(compose([])))
    if checkpoint is not None:
        (root / "runs" / "digits" / "old" / "checkpoint.pt").write_bytes(checkpoint)


# (overrides, the line starts with, and holds; files to make under the run folder first)
BAD: list[tuple[list[str], str, str, Callable[[Path], None] | None]] = [
    (["trainer.batch=-3"], "trainer.batch=-3:", "must be an integer >= 1", None),
    (["trainer.batch=abc"], "trainer.batch=abc:", "must be an integer >= 1", None),
    (["trainer.batch=1.5"], "trainer.batch=1.5:", "must be an integer >= 1", None),
    (["trainer.batch=127"], "trainer.batch=127:", "multiple of the 2 processes", None),  # the default's 2 processes
    (["trainer.batch_gpu=0"], "trainer.batch_gpu=0:", "null or an integer >= 1", None),
    (["method.alpha=abc"], "method.alpha=abc:", "must be a number", None),
    (["method.sigma_init=0"], "method.sigma_init=0:", "a number > 0", None),
    (["method.t_max=1200"], "method.t_max=1200:", "a number in (0, 1000]", None),
    (["method.lr=nan"], "method.lr=nan:", "a number > 0", None),
    (["method.betas_generator=[1,0.999]"], "method.betas_generator=[1, 0.999]:", "a pair of numbers in [0, 1)", None),
    (["method.betas=[0.9]"], "method.betas=[0.9]:", "a pair of numbers in [0, 1)", None),
    (["method.eps=null"], "method.eps=null:", "must be a number > 0", None),
    (["method.g_beta1=0.9"], "method.g_beta1 is now method.betas_generator", "(a pair, e.g. method.betas_generator=[0.9,0.999])", None),
    (["method.dropout=1.5"], "method.dropout=1.5:", "null or a number in [0, 1)", None),
    (["method.augment_p=2"], "method.augment_p=2:", "a number in [0, 1]", None),
    (["method.augment_resample=bicubic"], "method.augment_resample=bicubic:", "one of sym6, bilinear", None),
    (["method=dmd2", "method.ttur=0"], "method.ttur=0:", "an integer >= 1", None),  # a baseline's own schema
    (["method=sida", "dataset=cifar10"], "method=sida trains on real images", "dataset.images.path=", None),
    (["method=dmd2", "dataset=ffhq64", "method.gan.enabled=true"], "method=dmd2 trains on real images",
     "dataset.images.path=", None),
    (["method=progressive", "dataset=cifar10", "method.data=real"], "method=progressive trains on real images",
     "dataset.images.path=", None),
    (["method=sida", "method.adversarial_mix=2"], "method.adversarial_mix=2:", "a number in [0, 1]", None),
    (["method=sida", "method.generator_init=/nowhere/g.safetensors"], "method.generator_init=/nowhere/g.safetensors:",
     "an existing generator file", None),
    (["method=dmd", "method.teacher_samples_file=/nowhere/p.safetensors"],
     "method.teacher_samples_file=/nowhere/p.safetensors:", "an existing path", None),
    (["method=dmd", "method.regression.pairs=8"], "method.regression.pairs is now method.num_teacher_samples", "", None),
    (["method=dmd2", "+method.grad_clip=1"], "method.grad_clip is now method.clip_grad_norm", "", None),
    # relations between settings, refused before anything starts (the teacher is not loaded)
    (["method=sida", "method.generator_start_kimg=2", "method.adversarial_start_kimg=1"],
     "method.adversarial_start_kimg=1 is before method.generator_start_kimg=2", "", None),
    (["method=dmd2", "method.dm_index_max=1000"], "method.dm_index_min=20, dm_index_max=1000:", "< method.grid_points=1000", None),
    (["method=dmd", "method.regression.distance=lpips"], "method.regression.distance=lpips on a 1-channel teacher",
     "method.regression.lpips_adapt_gray=true", None),
    (["method=progressive", "method.start_steps=12"], "method.start_steps=12 is not a power of two", "", None),
    (["method=progressive", "method.start_steps=4", "method.final_steps=8"], "method.final_steps=8 is above", "", None),
    (["method=progressive", "method.warmup_iterations=280"], "method.warmup_iterations=280 must be shorter than a stage",
     "stage_iterations=280", None),
    (["method=consistency", "method.sampling_sigmas=[80.0,0.001]"], "method.sampling_sigmas=[80.0, 0.001] must be a decreasing list",
     "sigma_min=0.002", None),
    (["method=consistency", "method.lpips_net=alex", "method.lpips_pooling=avg"],
     "method.lpips_pooling='avg' with method.lpips_net='alex'", "use method.lpips_pooling=max", None),
    (["method=consistency", "method.distance=lpips"], "method.distance=lpips needs RGB images", "lpips_adapt_gray=true", None),
    (["method=progressive", "method.lr=abc"], "method.lr=abc:", "a number > 0", None),
    (["method=progressive", "method.lr_anneal=cos"], "method.lr_anneal=cos:", "one of constant, linear, cosine", None),
    (["method=progressive", "method.data=disk"], "method.data=disk:", "one of teacher, real", None),
    (["method=consistency", "method.mu=abc"], "method.mu=abc:", "a number in [0, 1)", None),
    (["method=consistency", "method.lpips_resize=-3"], "method.lpips_resize=-3:", "null or an integer >= 1", None),
    (["method=consistency", "method.sampling_sigmas=[80,-1]"], "method.sampling_sigmas=[80, -1]:", "> 0", None),
    (["method=dmd2", "method.gan.enabled=maybe"], "method.gan.enabled=maybe:", "true or false", None),
    (["method=dmd2", "method.betas=[0.9,1.5]"], "method.betas=[0.9, 1.5]:", "in [0, 1)", None),
    (["trainer.precision=fp8"], "trainer.precision=fp8:", "one of fp32, bf16, fp16", None),
    (["trainer.compile_mode=turbo"], "trainer.compile_mode=turbo:", "one of default, reduce-overhead, max-autotune", None),
    (["trainer.kimg=-5"], "trainer.kimg=-5:", "null or a number > 0", None),
    (["trainer.budget.unit=hours"], "trainer.budget.unit=hours:", "one of kimg, passes, flops, seconds", None),
    (["trainer.budget.value=0"], "trainer.budget.value=0:", "a number > 0", None),
    (["trainer.max_seconds=-1"], "trainer.max_seconds=-1:", "null or a number > 0", None),
    (["trainer.eval_at_fraction=[0.5,2]"], "trainer.eval_at_fraction=[0.5, 2]:", "a list of numbers in (0, 1]", None),
    (["trainer.eval_at_kimg=[abc]"], "trainer.eval_at_kimg=['abc']:", "a list of numbers >= 0", None),
    (["trainer.max_nonfinite=0"], "trainer.max_nonfinite=0:", "an integer >= 1", None),
    (["eval.metric=inception_score"], "eval.metric=inception_score:", "one of fd_digits, fd_dinov2, fd_pixel, fid", None),
    (["eval.metrics=[inception_score]"], "eval.metrics=['inception_score']:", "a list of one of fd_digits", None),
    (["eval.metric=precision_recall"], "eval.metric=precision_recall", "gives 2 values (precision, recall)", None),
    (["eval.metrics=[fd_dinov2]"], "eval.refs.fd_dinov2=null:", "sidbench stats", None),
    (["eval.final_metrics=[precision_recall]", "eval.refs.precision_recall=/nowhere/pr.npz"],
     "eval.refs.precision_recall=/nowhere/pr.npz:", "no such file", None),
    (["eval.dinov2_path=/nowhere/d.pth"], "eval.dinov2_path=/nowhere/d.pth:", "an existing DINOv2", None),
    (["eval.num_samples=0"], "eval.num_samples=0:", "an integer >= 1", None),
    (["eval.fid_mode=fast"], "eval.fid_mode=fast:", "one of legacy_tensorflow, clean", None),
    (["device=cuda"], "device=cuda:", "no CUDA device", None),
    (["device=gpu"], "device=gpu:", "auto, cpu, cuda or cuda:N", None),
    (["processes=0"], "processes=0:", "an integer >= 1", None),
    (["threads=-1"], "threads=-1:", "null or an integer >= 1", None),
    (["dry_run=yes"], "dry_run=yes:", "true or false", None),
    (["dataset.teacher.path=/nonexistent/teacher.pkl"], "dataset.teacher.path=/nonexistent/teacher.pkl:", "an existing file", None),
    (["resume=runs/digits/gone"], "resume=runs/digits/gone:", "no such run folder", None),
    (["resume=runs/digits/old"], "resume=runs/digits/old:", "holds no checkpoint.pt", lambda root: _folder(root, None)),
    (["resume=runs/digits/old"], "resume=runs/digits/old:", "not a run folder (no config.yaml)",
     lambda root: (root / "runs" / "digits" / "old").mkdir(parents=True)),
    (["resume=runs/digits/old", "trainer.seed=1"], "resume=runs/digits/old:", "other settings (trainer.seed 0 -> 1)",
     lambda root: _folder(root, None)),
    (["run_name=../../x"], "run_name='../../x'", "single folder name", None),
    (["run_name=/abs/path"], "run_name='/abs/path'", "single folder name", None),
    (["run_name=.."], "run_name='..'", "single folder name", None),
    (["resume=runs/digits/old"], "resume=runs/digits/old:", "is unreadable", lambda root: _folder(root, b"PK\x03\x04cut")),
    ([f"resume={UNKNOWN_RUN_ID}"], f"resume={UNKNOWN_RUN_ID}:", "no MLflow store", None),  # none made yet
]


@pytest.fixture
def no_launch(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """As on the CPU machine of the default run (2 processes); records torchrun launches instead
    of starting them, and fails the test if a run starts in this process."""
    launched: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sidbench.cli.run, "relaunch_with_torchrun", lambda n, overrides: launched.append(n) or 0)
    monkeypatch.setattr(sidbench.run, "run", lambda cfg, overrides=None: pytest.fail("a run started"))
    return launched


@pytest.mark.parametrize(("overrides", "head", "allowed", "setup"), BAD,
                         ids=[" ".join(b[0]) + ("" if b[3] is None else f" ({b[2]})") for b in BAD])
def test_bad_setting_is_one_line_before_torchrun(overrides: list[str], head: str, allowed: str,
                                                  setup: Callable[[Path], None] | None, run_env: Path,
                                                  no_launch: list[int], capfd: pytest.CaptureFixture[str]) -> None:
    if setup is not None:
        setup(run_env)
    assert main(["run", *overrides]) == 2
    out, err = capfd.readouterr()
    assert no_launch == [] and out == ""
    assert err.count("\n") == 1, err  # exactly one line
    line = err.strip().removeprefix("error: ")
    assert line.startswith(head) and allowed in line, line


def test_unknown_mlflow_run_id_is_one_line_and_a_known_one_passes(run_env: Path, no_launch: list[int],
                                                                  capfd: pytest.CaptureFixture[str]) -> None:
    from mlflow.tracking import MlflowClient

    # an empty store where run_env points MLFLOW_TRACKING_URI, then one run that logged its folder
    client = MlflowClient(tracking_uri=f"sqlite:///{run_env / 'mlflow.db'}")
    _folder(run_env, None)
    torch.save({"mlflow_run_id": None}, run_env / "runs" / "digits" / "old" / "checkpoint.pt")
    known = client.create_run(client.create_experiment("digits"), tags={"sidbench.run_dir": str(run_env / "runs" / "digits" / "old")})
    capfd.readouterr()  # MLflow's lines about creating its tables

    assert main(["run", f"resume={UNKNOWN_RUN_ID}"]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and f"resume={UNKNOWN_RUN_ID}: not a run folder" in err and "not found" in err, err
    assert main(["run", f"resume={known.info.run_id}"]) == 0 and no_launch == [2]


@pytest.mark.parametrize("overrides", [
    [],                                                        # the default: 2 processes under torchrun
    ["trainer.kimg=3"],
    ["trainer.budget.unit=passes", "trainer.budget.value=1e6"],
    ["trainer.precision=bf16", "trainer.batch_gpu=16", "method.alpha=-0.5", "method.dropout=null"],
    ["eval.metric=fd_digits", "device=cpu", "threads=1", "trainer.eval_at_fraction=[0.25,1]"],
    ["resume=runs/digits/old"],                                # a folder with a readable checkpoint
], ids=lambda o: " ".join(o) or "default")
def test_good_settings_reach_torchrun(overrides: list[str], run_env: Path, no_launch: list[int],
                                      capfd: pytest.CaptureFixture[str]) -> None:
    _folder(run_env, None)
    torch.save({"mlflow_run_id": None}, run_env / "runs" / "digits" / "old" / "checkpoint.pt")
    assert main(["run", *overrides]) == 0
    assert no_launch == [2] and capfd.readouterr().err == ""


@pytest.mark.parametrize("dataset", ["digits", "digits-cond", "cifar10", "cifar10-cond", "ffhq64", "afhqv2-64", "imagenet64"])
def test_every_dataset_dry_run_passes(dataset: str, run_env: Path, no_launch: list[int], capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["run", f"dataset={dataset}", "dry_run=true"]) == 0
    assert no_launch == [] and capfd.readouterr().err == ""
