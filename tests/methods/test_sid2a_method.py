"""`method=sid2a method.init=<...>`: SiD²A by name. G and its EMA start from the generator named by
a file, a run folder, an MLflow run id or a released generator's name (served here by a local HTTP
server on 127.0.0.1 as an EDM-format pickle written by the test); the fake score starts from the
teacher; a wrong architecture or a name that is none of these is one line."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from sidbench.cli import main
from sidbench.config import ConfigError, compose
from sidbench.methods import METHODS
from sidbench.teachers.load import load_teacher, save_native_teacher
from sidbench.testing.edm_files import write_edm_pickle
from sidbench.testing.file_server import FileServer, serving, without_proxies
from sidbench.testing.tiny import make_tiny_teacher, tiny_overrides

CPU = torch.device("cpu")


def _trained_generator(teacher_path: Path, folder: Path) -> tuple[Path, torch.nn.Module, dict]:
    """A 'trained SiD generator': the teacher's weights moved a little, saved as a run saves it."""
    teacher = load_teacher({"path": str(teacher_path)}, "cpu")
    net = teacher.net
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    folder.mkdir(parents=True, exist_ok=True)
    path = save_native_teacher(net, teacher.constructor, folder / "generator.safetensors",
                               {"method": "sid", "sampling": {"sampler": "one_step", "sigmas": [2.5], "nfe": 1}})
    return path, net, teacher.constructor


def _make(teacher_path: Path, init: str, *extra: str):
    cfg = compose(["method=sid2a", "dataset=digits", f"dataset.teacher.path={teacher_path}", "method.dropout=0.0",
                   f"method.init={init}", *extra])
    teacher = load_teacher(cfg.dataset.teacher, "cpu")
    return METHODS.get("sid2a")(teacher, cfg.method, CPU, cfg), teacher


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):
    without_proxies(monkeypatch)
    with serving() as s:
        yield s


def _catalogue(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, url: str) -> None:
    from sidbench.eval import published_generators as pg

    path = tmp_path / "catalogue.yaml"
    entry = {"name": name, "dataset": "digits", "method": "sid", "label": "SiD (test)", "url": url, "sha256": None,
             "sampling": {"sampler": "one_step", "sigma": 2.5, "nfe": 1}}
    path.write_text(yaml.safe_dump({"generators": [entry]}))
    monkeypatch.setattr(pg, "CATALOGUE", path)


def test_from_a_file_or_a_run_folder(tiny_teacher: Path, tmp_path: Path) -> None:
    path, trained, _ = _trained_generator(tiny_teacher, tmp_path / "run")
    for init in (path, path.parent):
        sid2a, teacher = _make(tiny_teacher, str(init))
        assert _same(sid2a.generator, trained)
        assert _same(sid2a.fake_score, teacher.net)  # fresh from the teacher
        assert not _same(sid2a.generator, teacher.net)
        assert sid2a.sampling() == {"sampler": "one_step", "sigmas": [2.5], "nfe": 1}


def test_from_a_released_generator_by_name(tiny_teacher: Path, tmp_path: Path, run_env: Path, server: FileServer,
                                           monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A released file, SiDA's class names and all: downloaded from the (local) address into the cache
    and loaded by the safe loader."""
    _, trained, constructor = _trained_generator(tiny_teacher, tmp_path / "run")
    pkl = write_edm_pickle(tmp_path / "served.pkl", trained, {**constructor, "model_type": "SongUNet_EncoderDecoder"},
                           precond_class="EDMPrecond_EncoderDecoder")
    server.files["/sid-digits.pkl"] = pkl.read_bytes()
    _catalogue(monkeypatch, tmp_path, "sid-digits", server.url("/sid-digits.pkl"))
    sid2a, _ = _make(tiny_teacher, "sid-digits")
    assert _same(sid2a.generator, trained)
    assert (run_env / "cache" / "sid-digits.pkl").read_bytes() == pkl.read_bytes()
    assert "could not verify sid-digits.pkl" in capsys.readouterr().err  # no hash recorded: warned


def test_a_released_generator_of_another_architecture_is_one_line(tiny_teacher: Path, tmp_path: Path, run_env: Path,
                                                                  server: FileServer, monkeypatch: pytest.MonkeyPatch) -> None:
    other = make_tiny_teacher(tmp_path / "other.safetensors", label_dim=10)
    teacher = load_teacher({"path": str(other)}, "cpu")
    server.files["/x.pkl"] = write_edm_pickle(tmp_path / "x.pkl", teacher.net, teacher.constructor).read_bytes()
    _catalogue(monkeypatch, tmp_path, "sid-digits", server.url("/x.pkl"))
    with pytest.raises(ConfigError, match=r"method.init=sid-digits: .* another architecture .*label_dim"):
        _make(tiny_teacher, "sid-digits")


def test_refusals_are_one_line(refused, tmp_path: Path) -> None:  # noqa: ANN001
    assert "method=sid2a starts from a trained generator: method.init=<" in refused("method=sid2a")
    line = refused("method=sid2a", "method.init=nowhere-at-all")
    assert line.startswith("method.init=nowhere-at-all: no such file or folder, released generator or MLflow run id")
    g = tmp_path / "g.safetensors"
    g.write_bytes(b"")
    assert "takes its generator as method.init=" in refused("method=sid2a", f"method.generator_init={g}")
    line = refused("method=sid2a", "method.init=dmd2-imagenet64")  # released, but not a SiD generator
    assert line.startswith("method.init=dmd2-imagenet64: a DMD2 (+GAN, resumed) generator; SiD²A starts from")


def test_from_an_mlflow_run_id_end_to_end(tiny_teacher: Path, run_env: Path) -> None:
    """A tiny SiD run, then SiD²A from its MLflow run id: the generator starts from the SiD run's. G
    takes no step before generator_start_kimg, so the SiD²A run's saved EMA generator equals the
    generator it started from; the run is labelled sid2a."""
    from mlflow.tracking import MlflowClient

    assert main(["run", *tiny_overrides(tiny_teacher), "run_name=sid"]) == 0
    client = MlflowClient(tracking_uri=f"sqlite:///{run_env / 'mlflow.db'}")
    exp = client.get_experiment_by_name("digits")
    (sid_run,) = client.search_runs([exp.experiment_id])
    start = load_file(run_env / "runs" / "digits" / "sid" / "generator.safetensors")

    overrides = tiny_overrides(tiny_teacher, **{"trainer.kimg": 0.016, "method.generator_start_kimg": 1,
                                                "method.adversarial_start_kimg": 2})
    assert main(["run", "method=sid2a", f"method.init={sid_run.info.run_id}", *overrides, "run_name=sid2a"]) == 0
    end = load_file(run_env / "runs" / "digits" / "sid2a" / "generator.safetensors")
    assert start.keys() == end.keys()
    for k in start:  # the EMA of an unchanged G: the same weights up to the EMA's round-off
        torch.testing.assert_close(end[k], start[k], rtol=1e-6, atol=1e-7)
    teacher = load_file(tiny_teacher)
    assert any(not torch.equal(end[k], teacher[k]) for k in end if k in teacher)  # not the teacher's
    runs = client.search_runs([exp.experiment_id], "tags.method = 'sid2a'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["method.init"] == sid_run.info.run_id
