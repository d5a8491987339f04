"""Reference statistics: EDM's .npz format, validation with one-line errors, resolving a reference."""
from __future__ import annotations

import socket
import zipfile

import numpy as np
import pytest

from sidbench.eval import reference as ref_mod
from sidbench.eval.reference import (
    ReferenceStatsError,
    load_reference_stats,
    reference_stats_for,
    reference_stats_url,
    save_reference_stats,
)


def _stats(d: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    return rng.normal(size=d), a @ a.T


def test_save_load_round_trip_in_edm_format(tmp_path):
    mu, sigma = _stats()
    path = save_reference_stats(tmp_path / "sub" / "stats", mu, sigma)
    assert path.name == "stats.npz" and path.is_file()
    with np.load(path) as data:  # EDM's layout: exactly mu and sigma
        assert sorted(data.files) == ["mu", "sigma"]
        assert data["mu"].dtype == np.float64
    mu2, sigma2 = load_reference_stats(path)
    np.testing.assert_array_equal(mu2, mu)
    np.testing.assert_array_equal(sigma2, sigma)
    assert not list(path.parent.glob("*.tmp"))


def test_float32_files_load_as_float64(tmp_path):
    mu, sigma = _stats()
    np.savez(tmp_path / "f32.npz", mu=mu.astype(np.float32), sigma=sigma.astype(np.float32))
    mu2, sigma2 = load_reference_stats(tmp_path / "f32.npz")
    assert mu2.dtype == sigma2.dtype == np.float64


def _broken_files(tmp_path):
    mu, sigma = _stats()
    nan_sigma = sigma.copy()
    nan_sigma[1, 2] = np.nan
    asym = sigma.copy()
    asym[0, 3] += 1.0
    cases = {
        "missing": (dict(mu=mu), "missing key"),
        "mu2d": (dict(mu=mu[None], sigma=sigma), "'mu' must have shape"),
        "notsquare": (dict(mu=mu, sigma=sigma[:, :4]), "'sigma' must have shape"),
        "dimmismatch": (dict(mu=mu[:4], sigma=sigma), "'sigma' must have shape"),
        "nan_mu": (dict(mu=np.where(np.arange(5) == 2, np.nan, mu), sigma=sigma), "non-finite"),
        "nan_sigma": (dict(mu=mu, sigma=nan_sigma), "non-finite"),
        "inf_sigma": (dict(mu=mu, sigma=np.where(np.eye(5) > 0, np.inf, sigma)), "non-finite"),
        "asymmetric": (dict(mu=mu, sigma=asym), "not symmetric"),
        "strings": (dict(mu=np.array(["a"] * 5), sigma=sigma), "dtype"),
    }
    for name, (arrays, what) in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        yield path, what
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip file at all")
    yield garbage, "not a readable .npz"
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, mu=np.array([object()] * 5, dtype=object), sigma=sigma)
    yield pickled, "not a readable .npz"


def test_broken_files_are_rejected_with_one_line_naming_the_file(tmp_path):
    checked = 0
    for path, what in _broken_files(tmp_path):
        with pytest.raises(ReferenceStatsError) as info:
            load_reference_stats(path)
        msg = str(info.value)
        assert "\n" not in msg, msg
        assert str(path) in msg and what in msg, msg
        checked += 1
    assert checked == 11


def test_tiny_round_off_asymmetry_is_tolerated(tmp_path):
    mu, sigma = _stats(d=50)
    sigma = sigma + np.triu(np.full_like(sigma, 1e-12), 1)
    np.savez(tmp_path / "ok.npz", mu=mu, sigma=sigma)
    load_reference_stats(tmp_path / "ok.npz")


def test_missing_file_is_a_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_reference_stats(tmp_path / "nope.npz")
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        reference_stats_for(str(tmp_path / "nope.npz"))


def test_dataset_keys_map_to_edm_addresses():
    assert reference_stats_url("ffhq64") == "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/ffhq-64x64.npz"
    assert reference_stats_url("cifar10-cond") == "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/" + "cifar10-32x32.npz"
    assert reference_stats_url("imagenet64") == "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/" + "imagenet-64x64.npz"
    assert reference_stats_url("afhqv2-64") == "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/" + "afhqv2-64x64.npz"
    assert reference_stats_url("afhqv2-64x64") == "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/" + "afhqv2-64x64.npz"
    with pytest.raises(ValueError, match="ffhq64"):
        reference_stats_url("celeba")


def test_reference_for_key_url_and_path_go_through_the_downloader(monkeypatch, tmp_path):
    mu, sigma = _stats()
    local = save_reference_stats(tmp_path / "ffhq-64x64.npz", mu, sigma)
    calls = []

    def fake_fetch(url, *, cache_dir, progress):
        calls.append(url)
        return local

    monkeypatch.setattr(ref_mod, "_fetch", fake_fetch)
    for ref in ("ffhq64", "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/" + "ffhq-64x64.npz"):
        got_mu, _ = reference_stats_for(ref)
        np.testing.assert_array_equal(got_mu, mu)
    assert calls == ["https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/" + "ffhq-64x64.npz"] * 2
    reference_stats_for(local)  # a local path: no download
    assert len(calls) == 2


def test_reference_offline_error_names_address_and_path(monkeypatch, tmp_path):
    from sidbench.download import DownloadError

    def no_network(*args, **kwargs):  # every name lookup fails, as on a machine without network
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    with pytest.raises(DownloadError) as info:
        reference_stats_for("cifar10", cache_dir=tmp_path)
    msg = str(info.value)
    assert "\n" not in msg
    assert "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/" + "cifar10-32x32.npz" in msg and str(tmp_path / "cifar10-32x32.npz") in msg
    # A copy put in the cache by hand is then used without the network.
    save_reference_stats(tmp_path / "cifar10-32x32.npz", *_stats())
    reference_stats_for("cifar10", cache_dir=tmp_path)


def test_zip_error_class_is_not_leaked(tmp_path):
    # An .npz that is a zip without arrays is still reported as a bad statistics file.
    path = tmp_path / "empty.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(ReferenceStatsError, match="missing key"):
        load_reference_stats(path)
