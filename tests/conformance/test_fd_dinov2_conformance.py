"""sidbench's DINOv2 backbone and EDM2's preprocessing against the DINOv2 repository's network inside
EDM2's detector (fixture: make_fd_dinov2.py): the same checkpoint, loaded through the file path a
real checkpoint takes, gives the same features on the same uint8 images.

Tolerance: rtol 1e-5, atol 1e-5 on features of magnitude ~3 (float32; measured equal to the bit on
CPU, the margin is for other attention kernels)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sidbench.eval.dinov2 import DINOv2Extractor, DINOv2ViT

FIXTURE = Path(__file__).parent / "fixtures" / "fd_dinov2.pt"


@pytest.fixture(scope="module")
def fixture() -> dict:
    return torch.load(FIXTURE, weights_only=True)


def test_features_match_edm2s_detector(fixture: dict, tmp_path: Path) -> None:
    path = tmp_path / "tiny-dinov2.pth"
    torch.save({k: v.float() for k, v in fixture["weights"].items()}, path)
    extractor = DINOv2Extractor.from_file(path)
    net = extractor.net
    assert (net.grid, net.patch, len(net.blocks), net.blocks[0].attn.heads) == (37, 14, 2, 2)
    for images, expected in zip(fixture["images"], fixture["features"]):
        got = torch.from_numpy(extractor(images)).float()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_the_position_embeddings_matter(fixture: dict) -> None:
    """The test above fails without the repository's resampling (offset 0.1, no antialias): here
    the offset alone moves the features well past the tolerance."""
    import sidbench.eval.dinov2 as dinov2

    net = DINOv2ViT.from_state_dict({k: v.float() for k, v in fixture["weights"].items()}).eval()
    images = fixture["images"][0]
    with torch.no_grad():
        base = net(dinov2.preprocess(images))
        original = dinov2.POS_OFFSET
        try:
            dinov2.POS_OFFSET = 0.0
            shifted = net(dinov2.preprocess(images))
        finally:
            dinov2.POS_OFFSET = original
    assert (base - shifted).abs().max() > 1e-2
