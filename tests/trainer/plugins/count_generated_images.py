"""Test plugin: append the size of every batch of images this process generates for an evaluation
to $SIDBENCH_TEST_IMAGES_LOG/rank<RANK>.txt, one line each (the curve's and the end's evaluations
both make their images through `sidbench.eval.images._images`)."""
import os
from pathlib import Path

import sidbench.eval.images as images

LOG = Path(os.environ["SIDBENCH_TEST_IMAGES_LOG"]) / f"rank{os.environ.get('RANK', '0')}.txt"
_images = images._images


def _images_counted(sample_fn, z, labels, device):  # noqa: ANN001, ANN202
    with LOG.open("a") as f:
        f.write(f"{len(z)}\n")
    return _images(sample_fn, z, labels, device)


images._images = _images_counted
