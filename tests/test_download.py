"""sidbench.download against a small HTTP server on 127.0.0.1 that the tests start themselves."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sidbench.download import ChecksumError, DownloadError, cached_download, default_cache_dir, sha256_file
from sidbench.testing.file_server import serving, without_proxies

PAYLOAD = bytes((i * 7 + i // 251) % 256 for i in range(300_000))  # several chunks' worth, not uniform
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def server():
    with serving() as s:
        yield s


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No proxies (only 127.0.0.1 is ever contacted) and a private cache folder."""
    without_proxies(monkeypatch)
    monkeypatch.setenv("SIDBENCH_CACHE", str(tmp_path / "cache"))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cache_files(folder: Path) -> set[str]:
    """What the cache holds, without the (empty) lock files that let processes wait for each other."""
    return {p.name for p in folder.iterdir() if not p.name.endswith(".lock")} if folder.exists() else set()


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


def test_sha256_file(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(PAYLOAD)
    assert sha256_file(f) == _sha(PAYLOAD) == sha256_file(str(f))


def test_first_download_then_cached_use_without_a_request(server, tmp_path):
    server.files["/pretrained/model.pkl"] = PAYLOAD
    url = server.url("/pretrained/model.pkl")
    path = cached_download(url, progress=False)
    assert path == tmp_path / "cache" / "model.pkl"
    assert path.read_bytes() == PAYLOAD
    # The record is in sha256sum's format, as caches made by earlier versions have it.
    assert (tmp_path / "cache" / "model.pkl.sha256").read_text().split() == [_sha(PAYLOAD), "model.pkl"]
    assert _cache_files(tmp_path / "cache") == {"model.pkl", "model.pkl.sha256"}  # no temporary file left
    assert server.count("/pretrained/model.pkl") == 1

    # Later uses: the same path and no further request, with or without a known hash.
    assert cached_download(url, progress=False) == path
    assert cached_download(url, progress=False, sha256=_sha(PAYLOAD)) == path
    assert server.requests == ["/pretrained/model.pkl"]


def test_explicit_filename_and_cache_dir(server, tmp_path):
    server.files["/x/y.npz"] = PAYLOAD
    path = cached_download(server.url("/x/y.npz"), "ref.npz", cache_dir=tmp_path / "other", progress=False)
    assert path == tmp_path / "other" / "ref.npz"
    assert path.read_bytes() == PAYLOAD
    for bad in ("../escape.npz", "a/b.npz", ".."):
        with pytest.raises(ValueError):
            cached_download(server.url("/x/y.npz"), bad, progress=False)
    with pytest.raises(ValueError):  # no file name in the address
        cached_download(server.url("/"), progress=False)
    assert server.count("/x/y.npz") == 1 and server.count("/") == 0


@pytest.mark.skipif(importlib.util.find_spec("tqdm") is None, reason="pooch draws its progress bar with tqdm")
def test_progress_bar_only_on_a_terminal(server, monkeypatch):
    class FakeTTY(io.StringIO):
        def isatty(self):
            return True

    server.files["/bar.bin"] = PAYLOAD
    server.files["/nobar.bin"] = PAYLOAD
    tty, log = FakeTTY(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", tty)
    assert cached_download(server.url("/bar.bin"), progress=True).read_bytes() == PAYLOAD
    monkeypatch.setattr(sys, "stderr", log)
    assert cached_download(server.url("/nobar.bin"), progress=True).read_bytes() == PAYLOAD
    assert "100%" in tty.getvalue()
    assert log.getvalue() == ""


def test_known_hash_mismatch_is_refused_and_nothing_is_kept(server, tmp_path):
    server.files["/model.pkl"] = PAYLOAD
    url = server.url("/model.pkl")
    wrong = _sha(b"something else")
    with pytest.raises(ChecksumError) as err:
        cached_download(url, progress=False, sha256=wrong, retries=0)
    msg = str(err.value)
    assert "\n" not in msg
    assert "model.pkl" in msg and url in msg and wrong in msg and _sha(PAYLOAD) in msg
    assert str(tmp_path / "cache" / "model.pkl") in msg  # where a verified copy can go
    assert isinstance(err.value, DownloadError)  # callers catching DownloadError see it too
    assert _cache_files(tmp_path / "cache") == set()
    # With the right hash (in any case) it works.
    assert cached_download(url, progress=False, sha256=_sha(PAYLOAD).upper()).read_bytes() == PAYLOAD
    with pytest.raises(ValueError):
        cached_download(url, progress=False, sha256="abc")


@pytest.mark.parametrize("damage", ["truncate", "flip", "append"])
def test_recorded_hash_is_checked_on_later_use(server, tmp_path, damage):
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

    with pytest.raises(ChecksumError) as err:
        cached_download(url, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "delete" in msg
    assert path.read_bytes() == bytes(data)  # reported, not silently replaced
    assert server.count("/model.pkl") == 1

    # Doing what the message says: the file is fetched again and then passes.
    path.unlink()
    assert cached_download(url, progress=False).read_bytes() == PAYLOAD
    assert cached_download(url, progress=False) == path
    assert server.count("/model.pkl") == 2


def test_cached_file_that_differs_from_the_known_hash_is_refused(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    path = tmp_path / "cache" / "a.bin"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"stale")
    with pytest.raises(ChecksumError) as err:
        cached_download(server.url("/a.bin"), progress=False, sha256=_sha(PAYLOAD))
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and _sha(PAYLOAD) in msg
    assert server.count("/a.bin") == 0


def test_copy_put_by_hand_or_left_by_an_earlier_version_is_used_without_network(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    dead = f"http://127.0.0.1:{_closed_port()}/edm"
    # By hand, without a record: used as it is, and its SHA-256 recorded.
    (cache / "model.pkl").write_bytes(PAYLOAD)
    assert cached_download(f"{dead}/model.pkl", progress=False) == cache / "model.pkl"
    assert (cache / "model.pkl.sha256").read_text().split()[0] == _sha(PAYLOAD)
    assert cached_download(f"{dead}/model.pkl", progress=False, sha256=_sha(PAYLOAD)) == cache / "model.pkl"
    # A file and record in the format earlier versions wrote.
    (cache / "old.npz").write_bytes(PAYLOAD[:5000])
    (cache / "old.npz.sha256").write_text(f"{_sha(PAYLOAD[:5000])}  old.npz\n")
    assert cached_download(f"{dead}/old.npz", progress=False) == cache / "old.npz"


def test_a_file_without_a_known_hash_is_used_with_one_warning_line_when_asked(server, tmp_path, capsys):
    server.files["/g.pkl"] = PAYLOAD
    url = server.url("/g.pkl")
    where = "the entry g of catalogue.yaml"

    def warnings() -> list[str]:
        err = capsys.readouterr().err
        assert all(line.startswith("warning:") for line in err.splitlines()), err
        return err.splitlines()

    # Asked for: at the download, and at every later use of the cached copy.
    path = cached_download(url, progress=False, warn_unverified=where)
    for _ in range(2):
        (line,) = warnings()
        assert "could not verify g.pkl" in line and url in line and _sha(PAYLOAD) in line and where in line
        assert cached_download(url, progress=False, warn_unverified=where) == path
    assert len(warnings()) == 1
    assert server.count("/g.pkl") == 1
    # With the hash known, or not asked for (trust on first use, as before): silent.
    assert cached_download(url, progress=False, sha256=_sha(PAYLOAD), warn_unverified=where) == path
    assert cached_download(url, progress=False) == path
    assert warnings() == []
    # A copy that differs from the hash recorded at its first download is refused all the same.
    path.write_bytes(b"changed")
    with pytest.raises(ChecksumError):
        cached_download(url, progress=False, warn_unverified=where)
    assert warnings() == []


def test_retries_after_a_transient_server_error(server, tmp_path):
    server.files["/flaky.bin"] = PAYLOAD
    server.fail["/flaky.bin"] = 1
    path = cached_download(server.url("/flaky.bin"), progress=False, retries=1)
    assert path.read_bytes() == PAYLOAD
    assert server.count("/flaky.bin") == 2
    assert (tmp_path / "cache" / "flaky.bin.sha256").read_text().split()[0] == _sha(PAYLOAD)


def test_gives_up_after_the_retries(server, tmp_path):
    server.files["/down.bin"] = PAYLOAD
    server.fail["/down.bin"] = 100
    with pytest.raises(DownloadError) as err:
        cached_download(server.url("/down.bin"), progress=False, retries=1)
    msg = str(err.value)
    assert "\n" not in msg and "down.bin" in msg and "500" in msg
    assert server.count("/down.bin") == 2
    assert _cache_files(tmp_path / "cache") == set()


def test_http_404_is_not_retried(server):
    with pytest.raises(DownloadError) as err:
        cached_download(server.url("/missing.pkl"), progress=False, retries=3)
    assert "404" in str(err.value)
    assert server.count("/missing.pkl") == 1


_CHILD = """
import sys
from sidbench.download import cached_download
print("ready", flush=True)
sys.stdin.readline()
print(cached_download(sys.argv[1], progress=False), flush=True)
"""


def test_two_processes_download_the_same_file_once(server, tmp_path):
    server.files["/teacher.pkl"] = PAYLOAD
    server.delay["/teacher.pkl"] = 1.0  # the second process asks while the first still waits
    procs = [
        subprocess.Popen([sys.executable, "-c", _CHILD, server.url("/teacher.pkl")], cwd=REPO, text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    try:
        for p in procs:  # both imported and waiting: then both start at once
            assert p.stdout.readline().strip() == "ready"
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in results]
    expected = tmp_path / "cache" / "teacher.pkl"
    assert [Path(out.strip()) for out, _ in results] == [expected, expected]
    assert expected.read_bytes() == PAYLOAD
    assert server.count("/teacher.pkl") == 1
    assert _cache_files(tmp_path / "cache") == {"teacher.pkl", "teacher.pkl.sha256"}


def test_unreachable_address_gives_one_line_error_naming_file_address_and_place(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/edm/pretrained/edm-ffhq-64x64-uncond-vp.pkl"
    with pytest.raises(DownloadError) as err:
        cached_download(url, progress=False, retries=0, timeout=5, hint="set dataset.teacher.path=<file>")
    msg = str(err.value)
    expected_path = tmp_path / "cache" / "edm-ffhq-64x64-uncond-vp.pkl"
    assert "\n" not in msg
    assert msg.startswith("could not download edm-ffhq-64x64-uncond-vp.pkl from " + url)
    assert f"put a copy at {expected_path}" in msg and "refused" in msg.lower()
    assert msg.endswith("set dataset.teacher.path=<file>")
    assert err.value.path == expected_path and err.value.url == url
    assert _cache_files(tmp_path / "cache") == set()


_OFFLINE_CHILD = """
import sys
from sidbench.download import DownloadError, cached_download
try:
    cached_download(sys.argv[1], progress=True, retries=1)
except DownloadError as e:
    print(e)
"""


def test_nothing_but_the_error_reaches_the_user(tmp_path):
    # In a process of its own, so that all it writes to stderr (a log line, a bar) is seen.
    url = f"http://127.0.0.1:{_closed_port()}/teacher.pkl"
    done = subprocess.run([sys.executable, "-c", _OFFLINE_CHILD, url], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.count("\n") == 1 and url in done.stdout and str(tmp_path / "cache" / "teacher.pkl") in done.stdout


def test_failed_name_lookup_is_not_retried(monkeypatch, tmp_path):
    # As on a machine without network: the lookup of 127.0.0.1 itself is made to fail, so nothing
    # is contacted at all.
    lookups = []

    def no_dns(*args, **kwargs):
        lookups.append(args[0])
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    url = f"http://127.0.0.1:{_closed_port()}/model.pkl"
    start = time.monotonic()
    with pytest.raises(DownloadError) as err:
        cached_download(url, progress=False, retries=3)
    assert time.monotonic() - start < 1.0  # no waits between retries
    assert lookups == ["127.0.0.1"]
    msg = str(err.value)
    assert "\n" not in msg and url in msg and str(tmp_path / "cache" / "model.pkl") in msg
    assert "resolve" in msg
