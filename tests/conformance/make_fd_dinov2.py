"""Fixture: DINOv2 features as EDM2 computes them, on a tiny random DINOv2 backbone.

Runs the DINOv2 repository's own `DinoVisionTransformer` (built as its hub entry `dinov2_vitl14`
builds ViT-L/14: layer scale, no registers, patch 14, position embeddings for a 37x37 grid resampled
with offset 0.1 and no antialiasing) at a tiny width and depth with random weights, inside EDM2's
own `DINOv2Detector.__call__` (calculate_metrics.py: torch bicubic antialiased resize to 224,
ImageNet normalisation) on random uint8 images, and writes the weights (the checkpoint's names),
the images and the features to fixtures/fd_dinov2.pt (+ .json).

    python tests/conformance/make_fd_dinov2.py --dinov2 <checkout of facebookresearch/dinov2> \
        --edm2 <checkout of NVlabs/edm2>

Neither checkout is fetched here nor committed. EDM2's module imports click and tqdm and modules
for generating images; those its detector does not use are stubbed.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import types
import warnings
from functools import partial
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DIM, DEPTH, HEADS, HIDDEN, PATCH, IMG = 128, 2, 2, 128, 14, 518  # grid 37, as the published ViT-L/14


def build_reference_backbone(dinov2: Path) -> torch.nn.Module:
    sys.path.insert(0, str(dinov2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "xFormers is not available"
        from dinov2.layers import MemEffAttention, NestedTensorBlock
        from dinov2.models.vision_transformer import DinoVisionTransformer
    # As dinov2/hub/backbones.py builds dinov2_vitl14 (init_values 1.0, block_chunks 0, offset 0.1,
    # no antialias), at a tiny width and depth.
    net = DinoVisionTransformer(img_size=IMG, patch_size=PATCH, embed_dim=DIM, depth=DEPTH, num_heads=HEADS,
                                mlp_ratio=HIDDEN / DIM, block_fn=partial(NestedTensorBlock, attn_class=MemEffAttention),
                                init_values=1.0, ffn_layer="mlp", block_chunks=0, num_register_tokens=0,
                                interpolate_antialias=False, interpolate_offset=0.1)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # weights far from their init, so every part of the network shows in the features
        for name, p in net.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith(("norm1.weight", "norm2.weight", "norm.weight", "gamma")):
                p.copy_(1 + 0.2 * noise)
            elif name == "pos_embed":
                p.copy_(0.5 * noise)
            else:
                p.copy_(0.1 * noise)
            p.copy_(p.half().float())  # stored in float16: both sides use exactly these values
    return net.eval()


class _Inert:
    """Stands in for click's decorators and anything else the module only uses to define its CLI."""

    def __call__(self, *args, **kwargs):
        return self

    def __getattr__(self, name):
        return self


def edm2_detector(edm2: Path, model: torch.nn.Module):
    for name in ("click", "tqdm", "generate_images"):
        stub = types.ModuleType(name)
        stub.__getattr__ = lambda attr: _Inert()  # PEP 562
        sys.modules[name] = stub
    sys.path.insert(0, str(edm2))
    import calculate_metrics

    det = calculate_metrics.DINOv2Detector.__new__(calculate_metrics.DINOv2Detector)
    det.feature_dim, det.resize_mode, det.model = DIM, "torch", model  # as its __init__ sets them, less torch.hub
    return det


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dinov2", type=Path, required=True)
    ap.add_argument("--edm2", type=Path, required=True)
    args = ap.parse_args()
    net = build_reference_backbone(args.dinov2)
    det = edm2_detector(args.edm2, net)
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 256, (3, 3, 32, 32), generator=gen, dtype=torch.uint8),
               torch.randint(0, 256, (2, 3, 64, 64), generator=gen, dtype=torch.uint8)]
    with torch.no_grad():
        features = [det(b).clone() for b in batches]  # a view of all tokens otherwise
    state = {k: v.half() for k, v in net.state_dict().items()}
    torch.save({"weights": state, "images": batches, "features": features}, HERE / "fixtures" / "fd_dinov2.pt")
    meta = {
        "reference": ["https://github.com/facebookresearch/dinov2", "https://github.com/NVlabs/edm2"],
        "commit": {"dinov2": (args.dinov2 / ".commit").read_text().strip() if (args.dinov2 / ".commit").exists() else None,
                   "edm2": (args.edm2 / ".commit").read_text().strip() if (args.edm2 / ".commit").exists() else None},
        "command": "python tests/conformance/make_fd_dinov2.py --dinov2 <checkout of facebookresearch/dinov2> "
                   "--edm2 <checkout of NVlabs/edm2>",
        "date": dt.date.today().isoformat(),
        "torch": torch.__version__,
        "contains": f"'weights': a DinoVisionTransformer state dict (float16; dim {DIM}, depth {DEPTH}, heads {HEADS}, "
                    f"MLP {HIDDEN}, patch {PATCH}, img_size {IMG}: a 37x37 position grid; layer scale; no registers), "
                    "random; 'images': two uint8 batches [3, 3, 32, 32] and [2, 3, 64, 64]; 'features': EDM2's "
                    "DINOv2Detector (resize_mode 'torch') output for each batch with that backbone, float32.",
    }
    (HERE / "fixtures" / "fd_dinov2.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main()
