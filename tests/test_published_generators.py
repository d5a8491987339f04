"""`sidbench fid published=<name>`: the catalogue of released generators, their download (offline: one
line), safe loading, sampling with the catalogue's recipe, scoring and the MLflow record.

Nothing here fetches a real file: a local HTTP server on 127.0.0.1 serves an EDM-format pickle made
by the test (`sidbench.testing.edm_files`, no EDM code), a closed local port stands for no network,
and the Inception detector is replaced by a small feature function (as in tests/test_cli_eval.py).
"""
from __future__ import annotations

import csv
import hashlib
import math
import re
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sidbench.cli import main
from sidbench.eval import published_generators as pg
from sidbench.testing.file_server import FileServer, serving, without_proxies

REPO = Path(__file__).resolve().parents[1]
CATALOGUE = yaml.safe_load((REPO / "sidbench" / "harness" / "published_generators.yaml").read_text())["generators"]
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit:FutureWarning")


# ------------------------------------------------------------------------------------------------
# Helpers


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's tables unwrapped, so that their text can be searched."""
    from rich.console import Console

    import sidbench.cli

    monkeypatch.setattr(sidbench.cli, "console", Console(stderr=True, width=400))


@pytest.fixture
def env(run_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """run_env, and only 127.0.0.1 is ever contacted, without proxies."""
    without_proxies(monkeypatch)
    return run_env


@pytest.fixture
def server():
    with serving() as s:
        yield s


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _use_catalogue(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, entries: list[dict]) -> Path:
    path = tmp_path / "catalogue.yaml"
    path.write_text(yaml.safe_dump({"generators": entries}, sort_keys=False))
    monkeypatch.setattr(pg, "CATALOGUE", path)
    return path


def _entry(**changes) -> dict:
    """The catalogue's own sid-cifar10 entry, with changes."""
    (entry,) = [dict(e) for e in CATALOGUE if e["name"] == "sid-cifar10"]
    return {**entry, **changes}


def _features(x: torch.Tensor) -> torch.Tensor:
    """A 24-dimensional stand-in for Inception features of uint8 [B, 3, H, W]."""
    pooled = torch.nn.functional.adaptive_avg_pool2d(x.double() / 255, 2).flatten(1)
    return torch.cat([pooled, pooled**2], dim=1)


@pytest.fixture
def fake_fid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """FID without downloads: the detector is `_features`, the card's reference statistics come from
    random images. Returns the list of reference addresses asked for."""
    import sidbench.eval.fid as fid
    import sidbench.eval.reference as reference
    from sidbench.eval.reference import save_reference_stats

    monkeypatch.setattr(fid, "inception_extractor", lambda mode="legacy_tensorflow", **kw: _features)
    monkeypatch.delenv("SIDBENCH_INCEPTION", raising=False)
    real = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (40, 3, 32, 32), dtype=np.uint8))
    feats = _features(real).numpy()
    stats = save_reference_stats(tmp_path / "refs" / "cifar10-32x32.npz", feats.mean(0), np.cov(feats, rowvar=False))
    asked: list[str] = []
    monkeypatch.setattr(reference, "_fetch", lambda url, **kw: asked.append(url) or stats)
    return asked


def _tiny_generator(label_dim: int = 0):
    """A small 32x32 RGB EDM network (with map_augment, as SiD's generators have), weights random
    everywhere (EDM's zero-initialised output layers would make every image alike)."""
    from sidbench.teachers.networks import build_edm_network
    from sidbench.testing.tiny import TINY_CONSTRUCTOR

    constructor = {**TINY_CONSTRUCTOR, "img_resolution": 32, "img_channels": 3, "label_dim": label_dim, "augment_dim": 9}
    torch.manual_seed(1)
    net = build_edm_network(constructor).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
    return net, constructor


def _machine_line(out: str) -> tuple[str, float]:
    name, value = out.strip().splitlines()[-1].split()
    return name, float(value)


def _one_line_error(err: str) -> str:
    """The error, in one line (after the hash warning, when the file was already in the cache)."""
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning: could not verify")]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


def _published_runs(root: Path, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return list(client.search_runs([exp.experiment_id], "tags.`sidbench.kind` = 'published_generator'",
                                   order_by=["attributes.start_time DESC"]))


# ------------------------------------------------------------------------------------------------
# The catalogue


def _csv_rows() -> list[dict]:
    with open(REPO / "sidbench" / "harness" / "published.csv", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_the_catalogue_lists_the_authors_files_with_their_recipe_and_paper_figure() -> None:
    from sidbench.config import compose, group_options

    catalogue = pg.load_catalogue()
    dmd2 = catalogue.pop("dmd2-imagenet64")
    assert len(catalogue) == 20  # SiD and SiDA on five datasets, SiD²A at alpha 1.0 and 1.2 on five
    datasets = set(group_options("dataset"))
    papers = _csv_rows()
    # DMD2's: a state dict of EDM's ImageNet 64 network without augmentation labels, sampled at sigma 80
    assert (dmd2.dataset, dmd2.format, dmd2.filename, dmd2.nfe) == ("imagenet64", "state_dict", "dmd2-imagenet64.bin", 1)
    assert dmd2.sampling == {"sampler": "one_step", "sigma": 80.0, "nfe": 1}
    assert dmd2.url.startswith("https://huggingface.co/tianweiy/DMD2/resolve/main/model/imagenet/") and \
        dmd2.url.endswith("_fid1.28_checkpoint_model_548000/pytorch_model.bin")
    (row,) = [r for r in papers if r["dataset"] == "imagenet64" and r["method"] == "DMD2 (+GAN resumed)"]
    assert dmd2.paper_fid == float(row["value"]) and dmd2.paper_source == row["source"]
    teacher = dict(compose(["dataset=imagenet64"]).dataset.teacher.constructor)
    assert {k: v for k, v in dmd2.constructor.items() if k in teacher and k != "dropout"} == \
        {k: v for k, v in teacher.items() if k != "dropout"}  # the teacher's network, dropout 0
    assert (dmd2.constructor["augment_dim"], dmd2.constructor["dropout"]) == (0, 0.0)
    for g in catalogue.values():
        assert g.dataset in datasets and g.nfe == 1
        suffix = "" if g.method != "sid2a" or g.alpha == 1.0 else f"-alpha{g.alpha:g}"
        assert g.name == f"{g.method}{suffix}-{g.dataset}"
        assert g.sampling == {"sampler": "one_step", "sigma": 2.5, "nfe": 1}  # G(2.5 z, 2.5, c), as SiD samples
        assert g.url.startswith("https://huggingface.co/UT-Austin-PML/") and g.url.endswith(".pkl")
        assert g.sha256 is None  # not yet recorded: the files could not be fetched where this was written
        # the paper's figure agrees with the papers' table of the leaderboard (published.csv)
        want = "SiD" if g.method == "sid" else "SiD²A"
        (row,) = [r for r in papers if r["dataset"] == g.dataset and re.fullmatch(rf"{want}( \(alpha [\d.]+\))?", r["method"])]
        assert g.paper_fid == float(row["value"]) and g.paper_source == row["source"]
        assert g.paper_fid_of == ("generator" if g.method == "sid" else "best_of_sida_sid2a")
    assert len({g.url for g in catalogue.values()}) == 20 and len({g.filename for g in catalogue.values()}) == 20
    assert all(g.format == "edm_pickle" and g.constructor is None for g in catalogue.values())
    # files named in the SiD papers' repositories
    urls = {g.url for g in catalogue.values()}
    assert "https://huggingface.co/UT-Austin-PML/SiD/resolve/main/cifar10-uncond/alpha1.2/network-snapshot-1.200000-403968.pkl" in urls
    assert catalogue["sid-afhqv2-64"].url.endswith("/afhq64/alpha1/network-snapshot-1.000000-371712.pkl")
    assert catalogue["sid2a-imagenet64"].url.endswith("/EDM_distillation/imgnet64_sid2a_alpha1-029499.pkl")
    assert catalogue["sid2a-alpha1.2-cifar10"].url.endswith("/cifar10_uncond_sid2a_alpha1.2-022528.pkl")


def test_the_catalogue_is_installed_with_the_package() -> None:
    import tomllib

    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "*.yaml" in data["sidbench.harness"]


def test_the_docs_table_agrees_with_the_catalogue() -> None:
    text = (REPO / "docs" / "published.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([a-z0-9.\-]+)` \|.*\| <?(https://\S+?)>? \|", text, re.M)}
    assert rows == {g.name: g.url for g in pg.load_catalogue().values()}


@pytest.mark.parametrize("change, message", [
    ({"sha256": "abc"}, "64 lowercase hex"),
    ({"sampling": {"sampler": "one_step", "sigma": 2.5}}, "nfe"),
    ({"url": "ftp://example.org/x.pkl"}, "http"),
    ({"paper_fid_of": "folklore"}, "paper_fid_of"),
    ({"colour": "red"}, "unknown keys"),
    ({"name": "Sid CIFAR"}, "lowercase"),
    ({"format": "zip"}, "format must be one of"),
    ({"format": "state_dict"}, "needs its constructor"),
    ({"constructor": {"precond": "EDMPrecond"}}, "needs its constructor"),
])
def test_a_malformed_catalogue_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: dict, message: str) -> None:
    _use_catalogue(monkeypatch, tmp_path, [_entry(**change)])
    with pytest.raises(pg.CatalogueError, match=message):
        pg.load_catalogue()


def test_a_name_listed_twice_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _use_catalogue(monkeypatch, tmp_path, [_entry(), _entry()])
    with pytest.raises(pg.CatalogueError, match="twice"):
        pg.load_catalogue()


def test_list_shows_the_released_generators(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # rich's width: one row a line
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "sidbench fid published=<name>" in out
    for g in pg.load_catalogue().values():
        (line,) = [line for line in out.splitlines() if f" {g.name} " in line]
        assert g.url in line and g.label in line


# ------------------------------------------------------------------------------------------------
# The command


def test_an_unknown_name_is_one_line(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fid", "published=nope", "device=cpu"]) == 2
    err = _one_line_error(capsys.readouterr().err)
    assert "published=nope" in err and "sid-cifar10" in err and "sidbench list" in err
    assert not (env / "cache").exists()


def test_two_sources_are_refused(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fid", "teacher", "published=sid-cifar10"]) == 2
    assert "one source at a time" in _one_line_error(capsys.readouterr().err)


def test_offline_the_download_fails_with_one_line(env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # a closed port on this machine stands for an unreachable address
    url = f"http://127.0.0.1:{_closed_port()}/UT-Austin-PML/SiD/resolve/main/cifar10-uncond/network-snapshot-1.200000-403968.pkl"
    _use_catalogue(monkeypatch, tmp_path, [_entry(url=url)])
    assert main(["fid", "published=sid-cifar10", "device=cpu"]) == 1
    captured = capsys.readouterr().err
    err = _one_line_error(captured)
    assert captured.strip() == err  # nothing else: no warning, no traceback
    assert "sid-cifar10.pkl" in err and url in err and str(env / "cache" / "sid-cifar10.pkl") in err
    assert not (env / "mlflow.db").exists()  # nothing recorded: the store was never opened


def test_released_generator_end_to_end(env: Path, tmp_path: Path, server: FileServer, fake_fid: list[str],
                                       monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Download from a local server, safe load, one-step sampling at sigma 2.5, FID against the card's
    reference, the MLflow record, the cache, the warning without a hash and the check with one."""
    from sidbench.config import compose
    from sidbench.teachers.load import save_native_teacher
    from sidbench.testing.edm_files import write_edm_pickle

    net, constructor = _tiny_generator()
    data = write_edm_pickle(tmp_path / "served.pkl", net, constructor).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    path = "/UT-Austin-PML/SiD/resolve/main/cifar10-uncond/alpha1.2/network-snapshot-1.200000-403968.pkl"
    server.files[path] = data
    _use_catalogue(monkeypatch, tmp_path, [_entry(url=server.url(path))])
    args = ["fid", "published=sid-cifar10", "--num", "20", "--batch", "8", "device=cpu"]

    assert main(args) == 0
    captured = capsys.readouterr()
    name, value = _machine_line(captured.out)
    assert name == "fid" and math.isfinite(value) and value > 0
    # sha256 null: used, with one line that gives the measured hash and where to record it
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "could not verify sid-cifar10.pkl" in warnings[0] and digest in warnings[0]
    assert "published_generators.yaml" in warnings[0]
    assert "1.923 (arXiv:2404.04057)" in captured.err  # the paper's figure, shown as such
    cached = env / "cache" / "sid-cifar10.pkl"
    assert cached.read_bytes() == data and server.requests == [path]
    cfg = compose(["dataset=cifar10"])
    assert fake_fid == [cfg.dataset.ref_stats]  # the card's own reference statistics

    # The same weights as a saved generator with an explicit recipe score the same: the pickle was
    # read faithfully and sampled as G(2.5 z, 2.5, c), with the same noise and labels.
    gen = save_native_teacher(net, constructor, tmp_path / "generator.safetensors",
                              {"method": "sid", "sampling": {"sampler": "one_step", "sigma": 2.5, "nfe": 1}})
    assert main(["fid", str(gen), "dataset=cifar10", "--num", "20", "--batch", "8", "device=cpu"]) == 0
    assert _machine_line(capsys.readouterr().out)[1] == value
    sigma80 = save_native_teacher(net, constructor, tmp_path / "g80.safetensors",
                                  {"method": "sid", "sampling": {"sampler": "one_step", "sigma": 80.0, "nfe": 1}})
    assert main(["fid", str(sigma80), "dataset=cifar10", "--num", "20", "--batch", "8", "device=cpu"]) == 0
    assert _machine_line(capsys.readouterr().out)[1] != value  # the comparison can tell recipes apart

    # Recorded as a FINISHED run of the dataset's experiment with what identifies the measurement.
    (run,) = _published_runs(env, "cifar10")
    tags = run.data.tags
    assert run.info.status == "FINISHED" and run.info.run_name == "published-sid-cifar10-fid"
    assert {k: tags[k] for k in ("sidbench.kind", "name", "method", "dataset", "generator_dataset", "metric",
                                 "num_samples", "nfe", "url", "sha256", "fid_mode", "ref", "seed", "label_mode")} == {
        "sidbench.kind": "published_generator", "name": "sid-cifar10", "method": "sid", "dataset": "cifar10",
        "generator_dataset": "cifar10", "metric": "fid", "num_samples": "20", "nfe": "1", "url": server.url(path),
        "sha256": digest, "fid_mode": "legacy_tensorflow", "ref": cfg.dataset.ref_stats,
        "seed": str(cfg.eval.seed), "label_mode": "cyclic"}
    assert tags["metric_settings"] == f"fid_mode=legacy_tensorflow; ref={cfg.dataset.ref_stats}"
    assert run.data.metrics == {"published_generator/fid": pytest.approx(value, rel=1e-5)}

    # Again: from the cache (no request), the warning again, a second measurement.
    assert main(args) == 0
    captured = capsys.readouterr()
    assert _machine_line(captured.out)[1] == value and server.requests == [path]
    assert sum(line.startswith("warning: could not verify") for line in captured.err.splitlines()) == 1
    assert len(_published_runs(env, "cifar10")) == 2

    # With the hash recorded in the catalogue: no warning. With another hash: refused, in one line.
    _use_catalogue(monkeypatch, tmp_path, [_entry(url=server.url(path), sha256=digest)])
    assert main([*args, "tracking.enabled=false"]) == 0
    assert "warning" not in capsys.readouterr().err
    _use_catalogue(monkeypatch, tmp_path, [_entry(url=server.url(path), sha256="0" * 64)])
    assert main([*args, "tracking.enabled=false"]) == 1
    err = _one_line_error(capsys.readouterr().err)
    assert str(cached) in err and "0" * 64 in err and digest in err
    assert len(_published_runs(env, "cifar10")) == 2


def test_a_conditional_generator_gets_one_hot_labels(env: Path, tmp_path: Path, server: FileServer, fake_fid: list[str],
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """cifar10-cond: a class-conditional file, scored with the protocol's labels (i mod 10), as a
    saved generator with the same recipe is."""
    from sidbench.teachers.load import save_native_teacher
    from sidbench.testing.edm_files import write_edm_pickle

    net, constructor = _tiny_generator(label_dim=10)
    server.files["/c.pkl"] = write_edm_pickle(tmp_path / "c.pkl", net, constructor).read_bytes()
    _use_catalogue(monkeypatch, tmp_path, [_entry(name="sid-cifar10-cond", dataset="cifar10-cond", url=server.url("/c.pkl"))])
    # written in the other order: argparse takes the first word for the source
    assert main(["fid", "dataset=cifar10-cond", "published=sid-cifar10-cond", "--num", "20", "device=cpu"]) == 0
    value = _machine_line(capsys.readouterr().out)[1]
    gen = save_native_teacher(net, constructor, tmp_path / "g.safetensors",
                              {"method": "sid", "sampling": {"sampler": "one_step", "sigma": 2.5, "nfe": 1}})
    assert main(["fid", str(gen), "dataset=cifar10-cond", "--num", "20", "device=cpu"]) == 0
    assert _machine_line(capsys.readouterr().out)[1] == value
    (run,) = _published_runs(env, "cifar10-cond")
    assert run.data.tags["name"] == "sid-cifar10-cond"
    # a file that does not fit the dataset named is refused before any image is made
    assert main(["fid", "published=sid-cifar10-cond", "dataset=cifar10", "device=cpu"]) == 2
    assert "label_dim 10" in _one_line_error(capsys.readouterr().err)


# ------------------------------------------------------------------------------------------------
# The files' layout


def test_sida_class_names_load_as_the_edm_classes_they_extend(tmp_path: Path) -> None:
    """SiDA's code pickles its networks as EDMPrecond_EncoderDecoder around SongUNet_EncoderDecoder
    (or DhariwalUNet_EncoderDecoder): EDM's constructor and weights under other names."""
    from sidbench.eval.generators import load_published_generator
    from sidbench.teachers.edm_pickle import load_edm_checkpoint
    from sidbench.testing.edm_files import write_edm_pickle

    net, constructor = _tiny_generator(label_dim=10)
    sida = {**constructor, "model_type": "SongUNet_EncoderDecoder"}
    path = write_edm_pickle(tmp_path / "sida.pkl", net, sida, precond_class="EDMPrecond_EncoderDecoder")
    ckpt = load_edm_checkpoint(path)
    assert ckpt.ema.class_name == "EDMPrecond_EncoderDecoder" and ckpt.constructor == constructor
    # without model_type, SiDA's preconditioner means its SongUNet (EDM's would mean DhariwalUNet)
    bare = {k: v for k, v in sida.items() if k != "model_type"}
    path2 = write_edm_pickle(tmp_path / "bare.pkl", net, bare, precond_class="EDMPrecond_EncoderDecoder",
                             model_class="SongUNet_EncoderDecoder")
    assert load_edm_checkpoint(path2).constructor == constructor
    adm = write_edm_pickle(tmp_path / "adm.pkl", net, {**sida, "model_type": "DhariwalUNet_EncoderDecoder"},
                           precond_class="EDMPrecond_EncoderDecoder")
    assert load_edm_checkpoint(adm).constructor["model_type"] == "DhariwalUNet"

    gen = load_published_generator(path, {"sampler": "one_step", "sigma": 2.5, "nfe": 1}, method="sida")
    z, labels = torch.randn(3, 3, 32, 32), torch.eye(10)[[0, 4, 9]]
    with torch.no_grad():
        want = net(2.5 * z, torch.full((3,), 2.5), labels, torch.zeros(3, 9))  # zero augmentation labels
    assert torch.equal(gen(z, labels), want)
    assert (gen.shape, gen.label_dim, gen.nfe) == ((3, 32, 32), 10, 1)
    assert gen.describe() == "sida, one_step (sigma 2.5), 1 NFE"


def test_a_state_dict_generator_is_read_without_running_code(env: Path, tmp_path: Path, server: FileServer, fake_fid: list[str],
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """DMD2's format: a torch.save'd state dict, read with weights_only into the catalogue's
    constructor and sampled with its recipe (here sigma 80, as DMD2 samples): the same value as the
    same weights saved as a generator with that recipe. A file that holds an object is refused."""
    from sidbench.teachers.load import save_native_teacher
    from sidbench.teachers.networks import build_edm_network

    _, constructor = _tiny_generator(label_dim=10)
    constructor = {**constructor, "augment_dim": 0}  # DMD2's network has no augmentation labels
    torch.manual_seed(2)
    net = build_edm_network(constructor).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
    buf = tmp_path / "pytorch_model.bin"
    torch.save(net.state_dict(), buf)
    server.files["/pytorch_model.bin"] = buf.read_bytes()
    entry = _entry(name="dmd2-cifar10-cond", dataset="cifar10-cond", method="dmd2", label="DMD2 (test)",
                   url=server.url("/pytorch_model.bin"), format="state_dict", constructor=constructor,
                   sampling={"sampler": "one_step", "sigma": 80.0, "nfe": 1}, paper_fid=None, paper_fid_of=None)
    _use_catalogue(monkeypatch, tmp_path, [entry])
    assert main(["fid", "published=dmd2-cifar10-cond", "--num", "20", "device=cpu"]) == 0
    value = _machine_line(capsys.readouterr().out)[1]
    assert (env / "cache" / "dmd2-cifar10-cond.bin").read_bytes() == buf.read_bytes()
    gen = save_native_teacher(net, constructor, tmp_path / "g.safetensors",
                              {"method": "dmd2", "sampling": {"sampler": "one_step", "sigma": 80.0, "nfe": 1}})
    assert main(["fid", str(gen), "dataset=cifar10-cond", "--num", "20", "device=cpu"]) == 0
    assert _machine_line(capsys.readouterr().out)[1] == value
    (run,) = _published_runs(env, "cifar10-cond")
    assert run.data.tags["method"] == "dmd2" and run.data.tags["nfe"] == "1"

    # an object in place of the weights: torch.load(weights_only=True) refuses it, nothing runs
    evil = tmp_path / "evil.bin"
    torch.save({"model.x": _Unpicklable()}, evil)
    server.files["/evil.bin"] = evil.read_bytes()
    _use_catalogue(monkeypatch, tmp_path, [{**entry, "name": "evil-cifar10-cond", "url": server.url("/evil.bin")}])
    assert main(["fid", "published=evil-cifar10-cond", "--num", "20", "device=cpu", "tracking.enabled=false"]) == 1
    err = _one_line_error(capsys.readouterr().err)
    assert "is not a state dict of tensors" in err and "evil-cifar10-cond.bin" in err
    assert not _Unpicklable.ran


class _Unpicklable:
    """Records whether unpickling ever called it."""

    ran = False

    def __reduce__(self):
        return (_mark_ran, ())


def _mark_ran():
    _Unpicklable.ran = True
    return 0
