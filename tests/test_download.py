"""sidbench.download against a small HTTP server on 127.0.0.1 that the tests start themselves."""

from __future__ import annotations

import hashlib
import http.server
import io
import logging
import socket
import threading
from pathlib import Path

import pytest

from sidbench import download
from sidbench.download import (
    ChecksumError,
    DownloadError,
    cache_path,
    cached_download,
    default_cache_dir,
    local_or_download,
)

PAYLOAD = bytes((i * 7 + i // 251) % 256 for i in range(300_000))  # a few chunks' worth, not uniform
CUT_AFTER = 100_000


class _Server:
    """Serves PAYLOAD under a few paths, each with its own behaviour, and logs every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.files: dict[str, bytes] = {}
        self.cuts: dict[str, int] = {}  # path -> how many more responses to cut after CUT_AFTER bytes
        self.ignore_range: set[str] = set()
        self.bytes_sent = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and self.path not in server.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                body = data[start:]
                if server.cuts.get(self.path, 0) > 0:
                    server.cuts[self.path] -= 1
                    body = body[:CUT_AFTER]  # then the connection closes: a broken transfer
                # Counted before writing: the client may finish reading (and the test assert)
                # before this thread returns from write().
                server.bytes_sent += len(body)
                self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.daemon = True

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def count(self, path: str) -> int:
        return sum(1 for p, _ in self.requests if p == path)


@pytest.fixture()
def server():
    s = _Server()
    s.thread.start()
    try:
        yield s
    finally:
        s.httpd.shutdown()
        s.httpd.server_close()
        s.thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No proxies (only 127.0.0.1 is ever contacted), no retry waits, a private cache folder."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(download, "_RETRY_BACKOFF_S", 0.0)
    monkeypatch.setenv("SIDBENCH_CACHE", str(tmp_path / "cache"))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------------------------


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("SIDBENCH_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("SIDBENCH_CACHE")
    assert default_cache_dir() == tmp_path / "xdg" / "sidbench"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "sidbench"


def test_plain_download_then_cache_hit(server, tmp_path):
    server.files["/pretrained/model.pkl"] = PAYLOAD
    url = server.url("/pretrained/model.pkl")
    path = cached_download(url, progress=False)
    assert path == tmp_path / "cache" / "model.pkl" == cache_path(url)
    assert path.read_bytes() == PAYLOAD
    assert (tmp_path / "cache" / "model.pkl.sha256").read_text().split()[0] == _sha(PAYLOAD)
    assert not (tmp_path / "cache" / "model.pkl.part").exists()
    assert server.count("/pretrained/model.pkl") == 1

    # Cache hit: same path, no second request.
    again = cached_download(url, progress=False, sha256=_sha(PAYLOAD))
    assert again == path
    assert server.count("/pretrained/model.pkl") == 1


def test_explicit_filename_and_cache_dir(server, tmp_path):
    server.files["/x/y.npz"] = PAYLOAD
    path = cached_download(server.url("/x/y.npz"), "ref.npz", cache_dir=tmp_path / "other", progress=False)
    assert path == tmp_path / "other" / "ref.npz"
    assert path.read_bytes() == PAYLOAD
    with pytest.raises(ValueError):
        cached_download(server.url("/x/y.npz"), "../escape.npz", progress=False)


def test_progress_bar_on_a_terminal(server, monkeypatch):
    class FakeTTY(io.StringIO):
        def isatty(self):
            return True

    fake = FakeTTY()
    monkeypatch.setattr("sys.stderr", fake)
    server.files["/bar.bin"] = PAYLOAD
    path = cached_download(server.url("/bar.bin"), progress=True)
    assert path.read_bytes() == PAYLOAD
    assert "bar.bin" in fake.getvalue()


def test_resume_with_range_after_connection_cut(server, tmp_path):
    server.files["/cut.bin"] = PAYLOAD
    server.cuts["/cut.bin"] = 1
    path = cached_download(server.url("/cut.bin"), progress=False, retries=2)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [("/cut.bin", None), ("/cut.bin", f"bytes={CUT_AFTER}-")]
    assert server.bytes_sent == len(PAYLOAD)  # nothing was sent twice


def test_resume_from_a_part_file_left_by_an_earlier_run(server, tmp_path):
    server.files["/left.bin"] = PAYLOAD
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "left.bin.part").write_bytes(PAYLOAD[:12345])
    path = cached_download(server.url("/left.bin"), progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [("/left.bin", "bytes=12345-")]


def test_server_that_ignores_range_restarts_from_zero(server):
    server.files["/norange.bin"] = PAYLOAD
    server.cuts["/norange.bin"] = 1
    server.ignore_range.add("/norange.bin")
    path = cached_download(server.url("/norange.bin"), progress=False, retries=2)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [("/norange.bin", None), ("/norange.bin", f"bytes={CUT_AFTER}-")]
    assert server.bytes_sent == CUT_AFTER + len(PAYLOAD)


def test_part_longer_than_the_file_starts_over(server, tmp_path):
    server.files["/short.bin"] = PAYLOAD[:1000]
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "short.bin.part").write_bytes(b"x" * 5000)  # 416 from the server
    path = cached_download(server.url("/short.bin"), progress=False)
    assert path.read_bytes() == PAYLOAD[:1000]


def test_cut_every_time_gives_up_after_the_retries(server, tmp_path):
    server.files["/flaky.bin"] = PAYLOAD
    server.cuts["/flaky.bin"] = 100
    server.ignore_range.add("/flaky.bin")  # so no attempt makes it to the end
    with pytest.raises(DownloadError) as err:
        cached_download(server.url("/flaky.bin"), progress=False, retries=2)
    assert server.count("/flaky.bin") == 3
    assert "flaky.bin" in str(err.value)
    assert not (tmp_path / "cache" / "flaky.bin").exists()


@pytest.mark.parametrize("damage", ["truncate", "flip", "append"])
def test_damaged_cached_file_is_reported_and_fetched_again(server, caplog, damage):
    server.files["/model.pkl"] = PAYLOAD
    url = server.url("/model.pkl")
    path = cached_download(url, progress=False)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[len(data) // 3] ^= 0xFF
    else:
        data += b"junk"
    path.write_bytes(bytes(data))

    with caplog.at_level(logging.WARNING, logger="sidbench.download"):
        again = cached_download(url, progress=False)
    assert again == path
    assert path.read_bytes() == PAYLOAD
    assert server.count("/model.pkl") == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage()


def test_copy_put_by_hand_is_used_without_network(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/edm/model.pkl"
    target = cache_path(url)
    target.parent.mkdir(parents=True)
    target.write_bytes(PAYLOAD)
    assert cached_download(url, progress=False) == target
    assert (target.parent / "model.pkl.sha256").read_text().split()[0] == _sha(PAYLOAD)
    # An expected hash is checked against the hand-made copy too.
    assert cached_download(url, progress=False, sha256=_sha(PAYLOAD)) == target


def test_sha256_mismatch_raises_and_keeps_nothing(server, tmp_path):
    server.files["/model.pkl"] = PAYLOAD
    wrong = _sha(b"something else")
    with pytest.raises(ChecksumError) as err:
        cached_download(server.url("/model.pkl"), progress=False, sha256=wrong)
    msg = str(err.value)
    assert "\n" not in msg and "model.pkl" in msg and wrong in msg and _sha(PAYLOAD) in msg
    assert isinstance(err.value, DownloadError)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")) == []
    # With the right hash it works.
    assert cached_download(server.url("/model.pkl"), progress=False, sha256=_sha(PAYLOAD).upper()).exists()
    with pytest.raises(ValueError):
        cached_download(server.url("/model.pkl"), progress=False, sha256="abc")


def test_cached_file_that_differs_from_the_given_sha256_is_fetched_again(server, caplog):
    server.files["/a.bin"] = PAYLOAD
    path = cache_path(server.url("/a.bin"))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"stale")
    with caplog.at_level(logging.WARNING, logger="sidbench.download"):
        cached_download(server.url("/a.bin"), progress=False, sha256=_sha(PAYLOAD))
    assert path.read_bytes() == PAYLOAD
    assert any(str(path) in r.getMessage() for r in caplog.records)


def test_unreachable_address_gives_one_line_error_with_the_path(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/edm/pretrained/edm-ffhq-64x64-uncond-vp.pkl"
    with pytest.raises(DownloadError) as err:
        cached_download(url, progress=False, retries=1, timeout=5)
    msg = str(err.value)
    expected_path = tmp_path / "cache" / "edm-ffhq-64x64-uncond-vp.pkl"
    assert "\n" not in msg
    assert msg.startswith("could not download edm-ffhq-64x64-uncond-vp.pkl from " + url)
    assert f"put a copy at {expected_path} and run again" in msg
    assert err.value.path == expected_path and err.value.url == url
    assert not expected_path.exists()


def test_http_404_is_not_retried(server):
    with pytest.raises(DownloadError) as err:
        cached_download(server.url("/missing.pkl"), progress=False, retries=3)
    assert "HTTP 404" in str(err.value)
    assert server.count("/missing.pkl") == 1


def test_local_or_download(server, tmp_path):
    mine = tmp_path / "mine.pkl"
    mine.write_bytes(b"my own weights")
    dead = f"http://127.0.0.1:{_closed_port()}/model.pkl"
    # An explicit local path is used as it is: the (unreachable) address is never contacted.
    assert local_or_download(dead, local=mine) == mine
    assert local_or_download(str(mine)) == mine
    assert local_or_download(mine.as_uri()) == mine
    with pytest.raises(FileNotFoundError):
        local_or_download(dead, local=tmp_path / "nope.pkl")
    with pytest.raises(ChecksumError):
        local_or_download(dead, local=mine, sha256=_sha(b"other"))
    # Without a local copy it downloads into the cache.
    server.files["/model.pkl"] = PAYLOAD
    got = local_or_download(server.url("/model.pkl"), progress=False)
    assert got == tmp_path / "cache" / "model.pkl" and got.read_bytes() == PAYLOAD
