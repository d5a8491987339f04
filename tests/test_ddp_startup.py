"""DDP start-up: rank 0 alone downloads and verifies the teacher; the other rank waits at the
barrier and loads the same file from the cache (2 processes on gloo, a local HTTP server)."""
from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from sidbench.testing.file_server import serving
from sidbench.testing.tiny import make_tiny_teacher


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, url: str, sha: str, cache: str, out: str, fail: bool) -> None:
    import torch
    import torch.distributed as dist

    os.environ["SIDBENCH_CACHE"] = cache
    os.environ["no_proxy"] = os.environ["NO_PROXY"] = "127.0.0.1"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    from sidbench.distributed import RankZeroError, rank_zero_first
    from sidbench.teachers.load import load_teacher, resolve_teacher_path

    card = {"url": url, "sha256": sha}
    try:
        rank_zero_first(lambda: resolve_teacher_path(card))
        teacher = load_teacher(card)
        total = sum(float(p.double().sum()) for p in teacher.net.parameters())
        Path(out, f"rank{rank}").write_text(f"ok {total!r}")
    except RankZeroError as e:
        Path(out, f"rank{rank}").write_text(f"rank-zero-error {e}")
    except Exception as e:  # noqa: BLE001 - recorded for the test to read
        Path(out, f"rank{rank}").write_text(f"error {type(e).__name__}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("fail", [False, True])
def test_rank_zero_downloads_the_teacher_others_wait_and_load_it(tmp_path: Path, fail: bool) -> None:
    data = make_tiny_teacher(tmp_path / "t.safetensors").read_bytes()
    # failing: the file is not served (404 on every try)
    with serving({} if fail else {"/teacher.safetensors": data}) as server:
        out = tmp_path / "out"
        out.mkdir()
        mp.start_processes(_worker, args=(_free_port(), server.url("/teacher.safetensors"), hashlib.sha256(data).hexdigest(),
                                          str(tmp_path / "cache"), str(out), fail),
                           nprocs=2, start_method="spawn", join=True)
    requests = server.requests
    results = {r: (out / f"rank{r}").read_text() for r in (0, 1)}
    if fail:
        # rank 0 raises the download error itself; rank 1 hears of it instead of waiting forever
        assert results[0].startswith("error") and results[1].startswith("rank-zero-error rank 0 failed")
        assert requests and all(r == "/teacher.safetensors" for r in requests)
    else:
        assert results[0].startswith("ok") and results[0] == results[1]
        assert requests == ["/teacher.safetensors"]  # one download, by rank 0
