"""FID: Frechet distance between Inception-v3 features of generated images and a reference set.

The detector is the Inception-v3 "2015-12-05" network as a TorchScript file (docs/fid.md#detector), run
through clean-fid's feature extraction. Two of clean-fid's modes are offered:

* ``legacy_tensorflow`` (the default). The uint8 images go into the network at their native
  resolution and the network resizes them to 299x299 itself, with the bilinear resampling of the
  original TensorFlow FID code that the TorchScript file reproduces. This is exactly what EDM's
  `fid.py` does with the same network (a pickled copy of the same weights, called with
  `return_features=True` on uint8 batches, grayscale repeated to RGB), so features, statistics
  and FIDs in this mode are comparable with EDM's published reference statistics
  (`fid-refs/*.npz`) and with the FIDs of the EDM and SiD papers.
* ``clean``. Each image is first resized to 299x299 outside the network with PIL's antialiased
  bicubic filter on float pixels (clean-fid's recommendation), then the network runs without its
  internal resize. The features differ, so a ``clean`` FID may only be compared with statistics
  made in ``clean`` mode (e.g. by `stats_command(..., mode="clean")`), never with EDM's files.

Where the weights come from: an explicit path (config), else the file named by the environment
variable ``SIDBENCH_INCEPTION``, else the project's download cache (`sidbench.download`). clean-fid's
own `build_feature_extractor` always downloads into /tmp with urllib when its fixed file name is
missing there, so it is not used: the extractor is assembled from clean-fid's building blocks
(its TorchScript wrapper `InceptionV3W`, its resizer, `get_batch_features`) around our local file.

Tests and other detectors plug in at two levels: `FID(feature_extractor=...)` takes any callable
uint8 [B, 3, H, W] -> features [B, D]; `CleanFIDExtractor(module, mode)` wraps a TorchScript-like
module with clean-fid's preprocessing, as does `inception_path=<file>` for a TorchScript file.

Nothing here touches clean-fid or the network at import time: both happen when an extractor is
first needed.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from sidbench.eval import register_metric
from sidbench.eval.base import Metric
from sidbench.eval.frechet import frechet_distance
from sidbench.eval.reference import card_references, reference_stats_for, validate_stats
from sidbench.eval.protocol import FID_MODES, PROTOCOL_NUM_IMAGES
from sidbench.eval.sources import FeatureExtractor, RunningStats, accumulate_features

#: The TorchScript Inception-v3 "2015-12-05" detector (docs/fid.md#detector; the file clean-fid uses).
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
#: The file name clean-fid's wrapper expects inside the folder it is given.
INCEPTION_FILENAME = "inception-2015-12-05.pt"
#: Environment variable naming a local copy of the detector file.
INCEPTION_ENV = "SIDBENCH_INCEPTION"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_mode(mode: str) -> str:
    """`mode` if it is one of clean-fid's modes offered here, else a ValueError naming them."""
    if mode not in FID_MODES:
        raise ValueError(f"unknown FID mode {mode!r}; use one of {', '.join(FID_MODES)}")
    return mode


def _fetch(url: str, *, cache_dir: str | os.PathLike | None, progress: bool) -> Path:
    # Imported here so that the downloader stays out of import time.
    from sidbench.download import cached_download

    return cached_download(url, INCEPTION_FILENAME, cache_dir=cache_dir, progress=progress)


def _missing_local(path: Path, origin: str) -> Exception:
    from sidbench.download import DownloadError

    return DownloadError(
        f"Inception weights {INCEPTION_FILENAME} not found at {path} ({origin}); "
        f"download {INCEPTION_URL} and put the file at {path}",
        url=INCEPTION_URL,
        path=path,
    )


def inception_weights(
    inception_path: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> Path:
    """The local path of the Inception TorchScript file, downloading it into the cache if needed.

    Order: `inception_path` (from config), then `$SIDBENCH_INCEPTION`, then the download cache
    (`sidbench.download.cached_download`, which also picks up a copy put there by hand). A named
    local file that does not exist is an error, never silently replaced by a download. Every
    failure is a `sidbench.download.DownloadError` whose one-line message names the address to
    fetch the file from and the path to put it at.
    """
    if inception_path is not None:
        path = Path(inception_path).expanduser()
        if not path.is_file():
            raise _missing_local(path, "the configured inception_path")
        return path
    env = os.environ.get(INCEPTION_ENV, "").strip()
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise _missing_local(path, f"named by ${INCEPTION_ENV}")
        return path
    from sidbench.download import DownloadError

    try:
        return Path(_fetch(INCEPTION_URL, cache_dir=cache_dir, progress=progress))
    except DownloadError as err:
        hint = f"{err} (or point ${INCEPTION_ENV} at a local copy)"
        raise DownloadError(hint, url=getattr(err, "url", INCEPTION_URL), path=getattr(err, "path", None)) from err


def load_inception_detector(
    path: str | os.PathLike, mode: str = "legacy_tensorflow", device: torch.device | str = "cpu"
) -> torch.nn.Module:
    """clean-fid's `InceptionV3W` wrapper around a local TorchScript file, with downloads off.

    The wrapper only looks for the fixed name `inception-2015-12-05.pt` inside a folder; a file
    stored under another name is linked under that name in a private temporary folder for the
    duration of the load (TorchScript reads the whole file into memory).
    """
    from cleanfid.inception_torchscript import InceptionV3W

    check_mode(mode)
    path = Path(path)
    resize_inside = mode == "legacy_tensorflow"

    def build(folder: Path) -> torch.nn.Module:
        try:
            with warnings.catch_warnings():
                # Recent torch marks torch.jit.load deprecated; the published detector is TorchScript.
                warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
                return InceptionV3W(str(folder), download=False, resize_inside=resize_inside)
        except (RuntimeError, ValueError, OSError, AttributeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RuntimeError(
                f"cannot load the Inception TorchScript file {path} ({first}); "
                f"fetch a fresh copy from {INCEPTION_URL}"
            ) from None

    if path.name == INCEPTION_FILENAME:
        net = build(path.parent)
    else:
        with tempfile.TemporaryDirectory(prefix="sidbench-inception-") as tmp:
            staged = Path(tmp) / INCEPTION_FILENAME
            try:
                staged.symlink_to(path.resolve())
            except OSError:
                shutil.copyfile(path, staged)
            net = build(Path(tmp))
    return net.to(device).eval()


class CleanFIDExtractor:
    """clean-fid's preprocessing and feature extraction for uint8 batches [B, 3, H, W].

    `detector` is clean-fid's `InceptionV3W` (or any module with its interface:
    `forward(x)` on float pixels 0..255, resizing inside the network when its `resize_inside`
    attribute is true). Its `resize_inside` is set to match `mode`.

    * legacy_tensorflow: the batch goes to the detector as float 0..255 at native resolution, as
      clean-fid's `get_model_features` does in this mode.
    * clean: each image goes through clean-fid's `build_resizer("clean")` (PIL bicubic, float,
      299x299), as in clean-fid's folder pipeline, then to the detector.
    Features come from clean-fid's `get_batch_features` (no_grad, device transfer, numpy out).
    """

    def __init__(self, detector: torch.nn.Module, mode: str = "legacy_tensorflow", device: torch.device | str = "cpu"):
        from cleanfid.fid import get_batch_features
        from cleanfid.resize import build_resizer

        self.mode = check_mode(mode)
        self.device = torch.device(device)
        self.detector = detector.to(self.device).eval()
        if hasattr(self.detector, "resize_inside"):
            self.detector.resize_inside = mode == "legacy_tensorflow"
        self._resize = build_resizer(mode)
        self._features = get_batch_features

    @classmethod
    def from_file(
        cls, path: str | os.PathLike, mode: str = "legacy_tensorflow", device: torch.device | str = "cpu"
    ) -> CleanFIDExtractor:
        return cls(load_inception_detector(path, mode, device), mode, device)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """The float batch clean-fid feeds the detector in this mode."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images [B, 3, H, W], got {images.dtype} {list(images.shape)}")
        if self.mode == "legacy_tensorflow":
            return images.to(torch.float32)
        hwc = images.permute(0, 2, 3, 1).cpu().numpy()
        resized = [self._resize(img) for img in hwc]  # float32 [299, 299, 3], values 0..255
        return torch.from_numpy(np.stack(resized).astype(np.float32)).permute(0, 3, 1, 2).contiguous()

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        return self._features(self.preprocess(images), self.detector, self.device)


def inception_extractor(
    mode: str = "legacy_tensorflow",
    *,
    inception_path: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> CleanFIDExtractor:
    """The Inception detector with clean-fid's preprocessing for `mode`, from local weights."""
    check_mode(mode)
    path = inception_weights(inception_path, cache_dir=cache_dir, progress=progress)
    return CleanFIDExtractor.from_file(path, mode, device if device is not None else default_device())


@register_metric("fid")
class FID(Metric):
    """FID of a uint8 image stream against fixed reference statistics (docs/fid.md#statistics).

    The reference is either given as `FID(mu, sigma)`, or as one argument: a dataset key
    (`ffhq64`), the address or `.npz` path of EDM-format statistics, or a `(mu, sigma)` pair. A
    named reference is resolved, and the detector loaded, on first use, so building the metric
    touches neither the disk nor the network; `from_config` (a run's and `sidbench fid`'s FID)
    resolves the reference at once, so a bad one fails before any image is made.

    `feature_extractor` replaces the detector (any callable uint8 [B, 3, H, W] -> [B, D]);
    otherwise the Inception file (`inception_path`, else `$SIDBENCH_INCEPTION`, else the download
    cache; see `inception_weights`) runs through clean-fid in `mode`. Grayscale images are
    repeated to three channels; statistics are float64 with covariance n - 1; the distance is
    `frechet_distance`. `num_images` holds the size of the last scored set.
    """

    description = "FID: Inception-v3 features against the dataset's reference statistics (dataset.ref_stats)"
    title = "FID"

    def __init__(
        self,
        reference: str | os.PathLike | np.ndarray | tuple[np.ndarray, np.ndarray],
        sigma: np.ndarray | None = None,
        *,
        mode: str = "legacy_tensorflow",
        inception_path: str | os.PathLike | None = None,
        feature_extractor: FeatureExtractor | None = None,
        device: torch.device | str | None = None,
        cache_dir: str | os.PathLike | None = None,
        progress: bool = False,
    ):
        self.mode = check_mode(mode)
        self.inception_path = inception_path
        self.device = device
        self.cache_dir = cache_dir
        self.progress = progress
        self._ref_stats: tuple[np.ndarray, np.ndarray] | None = None
        if sigma is not None:
            reference = (reference, sigma)
        if isinstance(reference, (tuple, list)):
            if len(reference) != 2:
                raise ValueError("a reference given in memory must be the pair (mu, sigma)")
            mu, cov = (np.asarray(a, np.float64) for a in reference)
            validate_stats(mu, cov, "<reference given in memory>")
            self._ref_stats = (mu, cov)
            self.reference = "statistics given in memory"
        else:
            self.reference = os.fspath(reference)
        self._reference = reference
        self._extractor = feature_extractor
        self.num_images = 0

    @classmethod
    def from_config(cls, cfg: DictConfig, *, device: torch.device | str | None = None, progress: bool = True) -> FID:
        """FID against the dataset card's `ref_stats` in `eval.fid_mode`, with the detector of
        `eval.inception_path` (else `$SIDBENCH_INCEPTION`, else the download cache); the
        reference is fetched and checked here."""
        from sidbench.config import ConfigError

        ref = cfg.dataset.get("ref_stats")
        if not ref:
            raise ConfigError(f"dataset {cfg.dataset.name} has no FID reference statistics: set dataset.ref_stats=<dataset "
                              "key, address or .npz of statistics> (`sidbench fid`: --ref)")
        metric = cls(str(ref), mode=str(cfg.eval.fid_mode), inception_path=cfg.eval.get("inception_path"), device=device,
                     progress=progress)
        metric.reference_stats  # noqa: B018 - fetched and validated now, not after the first images
        return metric

    @classmethod
    def measurement_settings(cls, cfg: DictConfig) -> dict[str, str]:
        """The mode and the reference: an FID means something only against both."""
        ref = cfg.dataset.get("ref_stats")
        return {"fid_mode": str(cfg.eval.fid_mode), **({"ref": str(ref)} if ref else {})}

    def details(self) -> list[tuple[str, str]]:
        return [("reference", self.reference), ("mode", self.mode)]

    def caveats(self, num_images: int) -> list[str]:
        notes = []
        refs = card_references(shipped_only=True)
        if self.mode != "legacy_tensorflow" and (self.reference in refs or self.reference in refs.values()):
            notes.append(f"EDM's reference statistics were made in legacy_tensorflow mode; a {self.mode} FID against "
                         "them is not comparable with published numbers")
        if num_images < PROTOCOL_NUM_IMAGES:
            notes.append(f"{num_images:,} images; the protocol uses {PROTOCOL_NUM_IMAGES:,} "
                         "(FID is biased upwards on smaller sets)")
        return notes

    @property
    def feature_extractor(self) -> FeatureExtractor:
        """The detector (built from the Inception file on first access unless one was given)."""
        if self._extractor is None:
            self._extractor = inception_extractor(
                self.mode,
                inception_path=self.inception_path,
                device=self.device,
                cache_dir=self.cache_dir,
                progress=self.progress,
            )
        return self._extractor

    @property
    def reference_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma) of the reference, float64 (fetched and validated on first access)."""
        if self._ref_stats is None:
            self._ref_stats = reference_stats_for(self._reference, cache_dir=self.cache_dir, progress=self.progress)
        return self._ref_stats

    def accumulate(
        self, batches: Iterable[torch.Tensor], on_batch: Callable[[int], None] | None = None
    ) -> RunningStats:
        """Feature statistics of a uint8 stream with this metric's detector."""
        return accumulate_features(batches, self.feature_extractor, on_batch=on_batch)

    def compute_stats(self, batches: Iterable[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma) of the stream's features, float64, covariance n - 1."""
        stats = self.accumulate(batches)
        return stats.mu, stats.sigma

    def distance(self, mu: np.ndarray, sigma: np.ndarray) -> float:
        """FID of given statistics against the reference."""
        ref_mu, ref_sigma = self.reference_stats
        if mu.shape != ref_mu.shape:
            raise ValueError(
                f"feature dimension {mu.shape[0]} differs from the reference statistics' {ref_mu.shape[0]}"
            )
        return frechet_distance(mu, sigma, ref_mu, ref_sigma)

    def compute(self, batches: Iterable[torch.Tensor]) -> float:
        self.reference_stats  # a bad reference fails before any time goes into features
        stats = self.accumulate(batches)
        self.num_images = stats.n
        return self.distance(stats.mu, stats.sigma)
