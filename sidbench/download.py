"""The one downloader and file cache of sidbench.

Teacher checkpoints, FID reference statistics and the Inception weights all come through
:func:`cached_download`; :func:`local_or_download` adds the "the user already has a copy" case.

Layout and guarantees
---------------------
* One cache folder (:func:`default_cache_dir`): ``$SIDBENCH_CACHE`` if set, else
  ``$XDG_CACHE_HOME/sidbench``, else ``~/.cache/sidbench``. A file lives there under its own name,
  so a user without network access can put a copy there by hand.
* A download goes to ``<name>.part`` and is renamed into place only once complete, so a finished
  file is never half-written. A broken transfer is resumed with an HTTP ``Range`` request from the
  size of the ``.part`` file; a server that ignores ``Range`` makes it start over.
* The SHA-256 of a file is recorded in ``<name>.sha256`` (the format of ``sha256sum``) on its first
  download (or first use, for a copy put there by hand) and checked on every later use. A cached
  file that no longer matches is reported with a warning and fetched again. An explicit
  ``sha256=`` must match, or :class:`ChecksumError` is raised.
* Every failure to obtain a file is one :class:`DownloadError`, whose message is one line naming the
  file, the address and the path where a copy can be put by hand.

Only the standard library (``urllib``) speaks HTTP; ``rich`` draws the progress bar.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "DownloadError",
    "ChecksumError",
    "default_cache_dir",
    "cache_path",
    "cached_download",
    "local_or_download",
    "sha256_file",
]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20  # bytes read per step, and per progress update
_USER_AGENT = "sidbench (python urllib)"
_RETRY_BACKOFF_S = 1.0  # wait before retry k (k = 1, 2, ...) is k * this, unless bytes arrived
_HTTP_RETRY_CODES = frozenset({408, 425, 429, 500, 502, 503, 504})


class DownloadError(RuntimeError):
    """A file could not be obtained. The message is one line: file, address, where to put a copy."""

    def __init__(self, message: str, *, url: str | None = None, path: Path | None = None):
        super().__init__(_one_line(message))
        self.url = url
        self.path = path


class ChecksumError(DownloadError):
    """A file's SHA-256 differs from the expected one."""


# ----------------------------------------------------------------------------------------------
# Paths


def default_cache_dir() -> Path:
    """``$SIDBENCH_CACHE``, else ``$XDG_CACHE_HOME/sidbench``, else ``~/.cache/sidbench``.

    Read at every call, so a changed environment takes effect at once. The folder is not created.
    """
    explicit = os.environ.get("SIDBENCH_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "sidbench"
    return Path.home() / ".cache" / "sidbench"


def _filename_from_url(url: str) -> str:
    name = urllib.parse.unquote(Path(urllib.parse.urlsplit(url).path).name)
    if not name:
        raise ValueError(f"cannot derive a file name from {url!r}; pass filename=")
    return name


def _check_filename(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"filename must be a plain file name, got {name!r}")
    return name


def cache_path(url: str, filename: str | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where :func:`cached_download` keeps (or expects a hand-made copy of) the file at ``url``."""
    name = _check_filename(filename if filename is not None else _filename_from_url(url))
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / name


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _part(path: Path) -> Path:
    return path.with_name(path.name + ".part")


# ----------------------------------------------------------------------------------------------
# Hashes


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _read_sidecar(path: Path) -> str | None:
    try:
        text = _sidecar(path).read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    words = text.split()
    if words and len(words[0]) == 64 and all(c in "0123456789abcdef" for c in words[0].lower()):
        return words[0].lower()
    return None  # unreadable sidecar: treated as missing


def _write_sidecar(path: Path, digest: str) -> None:
    side = _sidecar(path)
    tmp = side.with_name(f"{side.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{digest}  {path.name}\n", encoding="utf-8")
    os.replace(tmp, side)


def _normalise_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    s = sha256.strip().lower()
    if len(s) != 64 or any(c not in "0123456789abcdef" for c in s):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    return s


# ----------------------------------------------------------------------------------------------
# Small helpers


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _reason(exc: BaseException) -> str:
    """A short, one-line description of why a transfer failed."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        inner = exc.reason
        if isinstance(inner, BaseException):
            return _reason(inner)
        return _one_line(str(inner)) or "URL error"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name, no network? ({exc.strerror or exc})"
    if isinstance(exc, socket.timeout):
        return "timed out"
    text = _one_line(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code in _HTTP_RETRY_CODES
    if isinstance(exc, urllib.error.URLError):
        # A failed name lookup means "no network" (or a wrong host): retrying will not help.
        return not isinstance(exc.reason, socket.gaierror)
    return isinstance(exc, (OSError, http.client.HTTPException, _ShortRead))


class _ShortRead(Exception):
    """The connection ended before the announced number of bytes arrived."""


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``<path>.lock`` (POSIX), so that parallel processes (e.g. DDP ranks)
    fetching the same file wait for one another instead of writing the same ``.part``."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locking
        yield
        return
    lock = path.with_name(path.name + ".lock")
    with open(lock, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class _Progress:
    """A rich progress bar (bytes, speed, ETA), or nothing when disabled or not on a terminal."""

    def __init__(self, name: str, enabled: bool):
        self._bar = None
        if not (enabled and sys.stderr.isatty()):
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._task = self._bar.add_task(name, total=None)

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def reset(self, completed: int, total: int | None) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=completed, total=total)

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)


# ----------------------------------------------------------------------------------------------
# One HTTP transfer


def _content_range_total(value: str | None) -> tuple[int, int | None] | None:
    """Parse ``bytes START-END/TOTAL`` into (START, TOTAL or None)."""
    if not value:
        return None
    try:
        _unit, rest = value.strip().split(None, 1)
        span, total = rest.split("/", 1)
        start = int(span.split("-", 1)[0])
        return start, (None if total.strip() == "*" else int(total))
    except ValueError:
        return None


def _transfer(url: str, part: Path, timeout: float, bar: _Progress) -> None:
    """Fetch ``url`` into ``part``, continuing from its current size when the server allows.

    Returns when the whole body has arrived; raises on any failure, leaving what arrived in
    ``part`` for the next attempt to continue from.
    """
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    opener = urllib.request.build_opener()  # fresh: reads the proxy environment of this moment
    request = urllib.request.Request(url, headers=headers)
    try:
        response = opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:
            # "Range not satisfiable": the .part is no prefix of the file; start over.
            e.close()
            part.unlink(missing_ok=True)
            return _transfer(url, part, timeout, bar)
        raise
    with response:
        status = getattr(response, "status", 200)
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        mode = "wb"
        start = 0
        if have and status == 206:
            parsed = _content_range_total(response.headers.get("Content-Range"))
            if parsed is None or parsed[0] != have:
                raise _ShortRead(f"unexpected Content-Range {response.headers.get('Content-Range')!r}")
            mode, start = "ab", have
            total = parsed[1] if parsed[1] is not None else (have + length if length is not None else None)
        else:
            # 200 to a Range request: the server ignored it and sends the whole file from byte 0.
            if have:
                log.info("server ignored the Range request for %s; restarting from byte 0", part.name)
            total = length
        expected = None if total is None else total - start
        bar.reset(start, total)
        got = 0
        with open(part, mode) as out:
            while True:
                block = response.read(_CHUNK)
                if not block:
                    break
                out.write(block)
                got += len(block)
                bar.advance(len(block))
        if expected is not None and got != expected:
            raise _ShortRead(f"connection closed after {start + got} of {total} bytes")


# ----------------------------------------------------------------------------------------------
# Public API


def cached_download(
    url: str,
    filename: str | None = None,
    *,
    sha256: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 60,
) -> Path:
    """The local path of the file at ``url``, downloading it into the cache if needed.

    Args:
        url: http(s) address of the file.
        filename: name in the cache (default: the last component of the URL's path).
        sha256: expected hex SHA-256; if given, the file must match it.
        cache_dir: cache folder (default: :func:`default_cache_dir`).
        progress: show a progress bar (only drawn when stderr is a terminal).
        retries: further attempts after a failed transfer (each resumes from what arrived).
        timeout: seconds to wait for the connection and for each read.

    Raises:
        DownloadError: the file could not be downloaded (one line: file, address, where to put a
            copy by hand).
        ChecksumError: the downloaded file does not match ``sha256``.
    """
    expected = _normalise_sha256(sha256)
    path = cache_path(url, filename, cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(path):
        if path.exists():
            if _cached_file_ok(path, expected):
                return path
            path.unlink(missing_ok=True)
            _sidecar(path).unlink(missing_ok=True)
        digest = _download(url, path, expected, progress=progress, retries=retries, timeout=timeout)
        _write_sidecar(path, digest)
        return path


def _cached_file_ok(path: Path, expected: str | None) -> bool:
    """Check a cached file against ``expected`` (if given) or its sidecar; warn when it fails."""
    recorded = _read_sidecar(path)
    if expected is None and recorded is None:
        # First use of a copy put here by hand (or a sidecar lost): record it as it is.
        _write_sidecar(path, sha256_file(path))
        return True
    digest = sha256_file(path)
    want = expected if expected is not None else recorded
    if digest == want:
        if recorded != digest:
            _write_sidecar(path, digest)
        return True
    what = "the expected" if expected is not None else "its recorded"
    log.warning(
        "cached file %s is corrupted or truncated (SHA-256 %s, %s SHA-256 is %s, %d bytes); "
        "downloading it again",
        path,
        digest[:12],
        what,
        want[:12],
        path.stat().st_size,
    )
    return False


def _download(
    url: str, path: Path, expected: str | None, *, progress: bool, retries: int, timeout: float
) -> str:
    """Fetch ``url`` to ``path`` via ``<path>.part`` (resuming it); return the file's SHA-256.

    The file only takes its final name once complete and (if ``expected`` is given) verified.
    """
    part = _part(path)
    attempts = max(0, int(retries)) + 1
    with _Progress(path.name, progress) as bar:
        for attempt in range(attempts):
            size_before = part.stat().st_size if part.exists() else 0
            try:
                _transfer(url, part, timeout, bar)
                break
            except Exception as e:  # noqa: BLE001 - every failure ends in one DownloadError
                if not _retryable(e) or attempt + 1 == attempts:
                    raise DownloadError(
                        f"could not download {path.name} from {url} ({_reason(e)}); "
                        f"put a copy at {path} and run again",
                        url=url,
                        path=path,
                    ) from e
                size_after = part.stat().st_size if part.exists() else 0
                if size_after <= size_before:  # no progress: wait a little before trying again
                    time.sleep(_RETRY_BACKOFF_S * (attempt + 1))
                log.info("download of %s interrupted (%s); retrying", path.name, _reason(e))
    digest = sha256_file(part)
    if expected is not None and digest != expected:
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"downloaded {path.name} from {url} but its SHA-256 is {digest}, expected {expected}; "
            f"nothing was kept. Put a verified copy at {path} and run again",
            url=url,
            path=path,
        )
    os.replace(part, path)
    return digest


def local_or_download(
    url: str,
    local: str | os.PathLike | None = None,
    filename: str | None = None,
    **kwargs,
) -> Path:
    """A user's own copy if one is given, else :func:`cached_download` of ``url``.

    ``local`` (an explicit path from a config or the command line) is used as it is and the network
    is never touched; a missing one is an error rather than a silent download. A ``url`` that is a
    plain path or a ``file://`` address counts as a local copy too. ``sha256=``, if given, is
    checked for a local copy as well. Other keyword arguments go to :func:`cached_download`.
    """
    if local is None:
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if scheme in ("http", "https"):
            return cached_download(url, filename, **kwargs)
        local = urllib.request.url2pathname(urllib.parse.urlsplit(url).path) if scheme == "file" else url
    path = Path(local).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"local copy {path} does not exist (or is not a file)")
    expected = _normalise_sha256(kwargs.get("sha256"))
    if expected is not None:
        digest = sha256_file(path)
        if digest != expected:
            raise ChecksumError(
                f"local copy {path} has SHA-256 {digest}, expected {expected}",
                url=url,
                path=path,
            )
    return path
