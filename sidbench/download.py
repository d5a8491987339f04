"""The one downloader and file cache of sidbench, built on pooch (fetch, SHA-256, retries, progress
bar, atomic move into place) and filelock (parallel processes wait for one download).

The cache folder is :func:`default_cache_dir`; a file lives there under its own name (so a copy can
be put there by hand), beside ``<name>.sha256`` (``sha256sum`` format, recorded at its first
download or first use and checked on every later use) and ``<name>.lock``.

A file whose SHA-256 the caller does not know is trusted at its first download. A caller that means to
know it (a catalogue whose hash is not recorded yet) passes ``warn_unverified``: every use then prints
one warning line with the file's measured SHA-256, so that a user can check it and record it.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import socket
import sys
import urllib.parse
from pathlib import Path

from sidbench.atomic import write_text_atomic
from sidbench.errors import UserError

__all__ = ["DownloadError", "ChecksumError", "default_cache_dir", "cached_download", "sha256_file"]

_RETRY_HTTP = frozenset({408, 425, 429})  # the 4xx answers worth asking again


class DownloadError(UserError, RuntimeError):
    """A file could not be obtained. The message is one line: file, address, where to put a copy."""

    def __init__(self, message: str, *, url: str | None = None, path: Path | None = None):
        super().__init__(" ".join(str(message).split()))
        self.url = url
        self.path = path


class ChecksumError(DownloadError):
    """A file's SHA-256 differs from the expected or the recorded one."""


class _NoRetry(Exception):
    """Raised past pooch's retries (it retries only ValueError and requests' errors)."""


def default_cache_dir() -> Path:
    """``$SIDBENCH_CACHE``, else ``$XDG_CACHE_HOME/sidbench``, else ``~/.cache/sidbench``.

    Read at every call, so a changed environment takes effect at once. The folder is not created.
    """
    if os.environ.get("SIDBENCH_CACHE"):
        return Path(os.environ["SIDBENCH_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "sidbench"
    return Path.home() / ".cache" / "sidbench"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file."""
    import pooch

    return pooch.file_hash(os.fspath(path), alg="sha256")


def _cache_path(url: str, filename: str | None, cache_dir: str | os.PathLike | None) -> Path:
    name = filename if filename is not None else urllib.parse.unquote(Path(urllib.parse.urlsplit(url).path).name)
    if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ValueError(f"cannot use {name!r} (from {url!r}) as a file name in the cache; pass a plain filename=")
    return (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()) / name


def _root_cause(exc: BaseException) -> BaseException:
    seen = {id(exc)}
    while (nxt := exc.__cause__ or exc.__context__) is not None and id(nxt) not in seen:
        exc = nxt
        seen.add(id(exc))
    return exc


def _reason(exc: BaseException) -> str:
    response = getattr(exc, "response", None)  # set on requests.HTTPError
    if response is not None and response.status_code >= 400:
        return f"HTTP {response.status_code} {response.reason}"
    root = _root_cause(exc)
    if isinstance(root, socket.gaierror):
        return "cannot resolve the host name, no network?"
    return f"{type(root).__name__}: {root}"


def _transfer(url: str, output_file: str, pup: object, *, progress: bool, timeout: float) -> None:
    """One GET with pooch's downloader; failures that another try cannot fix skip the retries."""
    import pooch
    import requests

    try:
        pooch.HTTPDownloader(progressbar=progress, timeout=timeout)(url, output_file, pup)
    except requests.RequestException as e:
        status = getattr(e.response, "status_code", None)
        if (status is not None and 400 <= status < 500 and status not in _RETRY_HTTP) or isinstance(
            _root_cause(e), socket.gaierror
        ):
            raise _NoRetry from e
        raise


def _recorded(path: Path) -> str | None:
    side = path.with_name(path.name + ".sha256")
    return (side.read_text(encoding="utf-8").split() or [""])[0].lower() if side.is_file() else None


def _record(path: Path, digest: str) -> None:
    write_text_atomic(path.with_name(path.name + ".sha256"), f"{digest}  {path.name}\n")


def cached_download(
    url: str,
    filename: str | None = None,
    *,
    sha256: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 60,
    hint: str | None = None,
    warn_unverified: str | None = None,
) -> Path:
    """The local path of the file at ``url``, downloading it into the cache if needed.

    Args:
        url: http(s) address of the file.
        filename: name in the cache (default: the last component of the URL's path).
        sha256: expected hex SHA-256; if given, the file must match it. If not, the SHA-256 of the
            first download (or of a copy put in the cache by hand) is recorded and checked later.
        cache_dir: cache folder (default: :func:`default_cache_dir`).
        progress: show a progress bar (only on a terminal, and only when tqdm is installed).
        retries: further attempts after a failed download (pooch waits 1 s, 2 s, ... between them).
        timeout: seconds to wait for the connection and for each read.
        hint: appended to the error as another way out, e.g. the config key of a local copy.
        warn_unverified: where the file's SHA-256 belongs (e.g. its catalogue entry). Given while
            ``sha256`` is None, each use accepts the file with a one-line warning on stderr saying
            that it could not be verified, with its measured SHA-256 and this place to record it.

    Raises:
        DownloadError: the file could not be downloaded (one line: file, address, where to put a
            copy by hand).
        ChecksumError: the download, or the cached file, does not match ``sha256`` or the record.
    """
    expected = sha256.strip().lower() if sha256 is not None else None
    if expected is not None and (len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected)):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    path = _cache_path(url, filename, cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    or_hint = f", or {hint}" if hint else ""

    import filelock

    with filelock.FileLock(str(path) + ".lock"):
        if path.exists():
            recorded = _recorded(path)
            want = expected or recorded
            digest = sha256_file(path)
            if want is None or digest == want:
                if recorded != digest:
                    _record(path, digest)
                if expected is None and warn_unverified:
                    _warn_unverified(path, url, digest, warn_unverified)
                return path
            which = "the expected SHA-256" if expected else "the SHA-256 recorded at its first download"
            raise ChecksumError(
                f"{path} does not match {which} ({want}, it has {digest}); "
                f"delete it to download it again from {url}{or_hint}",
                url=url,
                path=path,
            )
        _fetch(url, path, expected, progress=progress, retries=retries, timeout=timeout, or_hint=or_hint)
        digest = expected or sha256_file(path)
        _record(path, digest)
        if expected is None and warn_unverified:
            _warn_unverified(path, url, digest, warn_unverified)
        return path


def _warn_unverified(path: Path, url: str, digest: str, where: str) -> None:
    # One plain line on stderr: the caller's console may be a progress display, and a Python warning
    # would add a second line (the source line that raised it).
    print(f"warning: could not verify {path.name} (from {url}): no SHA-256 is recorded for it; "
          f"it has SHA-256 {digest}: check it and record it in {where}", file=sys.stderr, flush=True)


def _fetch(
    url: str, path: Path, expected: str | None, *, progress: bool, retries: int, timeout: float, or_hint: str
) -> None:
    # Imported here: sidbench.errors imports this module on every command, pooch with tqdm takes 0.15 s.
    import pooch
    import requests

    pup = pooch.create(
        path=path.parent, base_url="", registry={path.name: expected}, urls={path.name: url},
        retry_if_failed=max(0, int(retries)),
    )
    # A tqdm bar in a log file is noise, and pooch refuses progressbar=True without tqdm.
    bar = progress and sys.stderr.isatty() and importlib.util.find_spec("tqdm") is not None
    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)  # pooch's own lines would break the one-line error
    try:
        pup.fetch(path.name, downloader=functools.partial(_transfer, progress=bar, timeout=timeout))
    except Exception as e:  # noqa: BLE001 - every failure ends in one DownloadError
        err = e.__cause__ if isinstance(e, _NoRetry) else e
        if isinstance(err, ValueError) and not isinstance(err, requests.RequestException):
            raise ChecksumError(
                f"refused {path.name} from {url}: {err} Put a verified copy at {path} and run again{or_hint}",
                url=url,
                path=path,
            ) from e
        raise DownloadError(
            f"could not download {path.name} from {url} ({_reason(err)}); put a copy at {path} and run again{or_hint}",
            url=url,
            path=path,
        ) from e
    finally:
        logger.setLevel(level)
