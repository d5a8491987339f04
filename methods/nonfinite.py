"""Samples that leave a loss because a tensor of theirs is not finite (NaN or inf).

One bad sample would otherwise make the micro-batch's summed loss non-finite, and the context's
sanitising would then zero the whole update. The methods drop such samples instead and log how
many they dropped; the context still divides by the process's whole batch, dropped samples included
(as the published SiD code does). Shared by SiD, SiDA, DMD and DMD2.

What dropping cannot do: a sample whose values are non-finite INSIDE the graph being
differentiated (a NaN generator output, or a NaN activation of the network being trained) still
sends NaN into the weight gradients (0 * NaN is NaN in backward), and the context's sanitising
zeroes them. Dropping gives a clean gradient when the non-finite values come from tensors computed
without a graph (a frozen teacher's or fake score's output), and a finite loss value in any case.
"""
from __future__ import annotations

import torch


def finite_samples(*tensors: torch.Tensor) -> torch.Tensor:
    """Boolean [B]: samples whose every element is finite in all the given tensors."""
    ok = torch.ones(tensors[0].shape[0], dtype=torch.bool, device=tensors[0].device)
    for t in tensors:
        ok &= torch.isfinite(t).flatten(1).all(dim=1)
    return ok


def zero_dropped(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """`values` [B, ...] with the samples where `keep` [B] is false set to 0 (and no gradient)."""
    return torch.where(keep.view(-1, *[1] * (values.ndim - 1)), values, 0)


def sum_kept(loss: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The sum of the per-element `loss` over the samples where `keep` [B] is true."""
    return zero_dropped(loss, keep).sum()


def drop_nonfinite(loss: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the per-element `loss` over the samples finite in all `tensors`, number dropped).

    The count stays a tensor (no host sync)."""
    keep = finite_samples(*tensors)
    return sum_kept(loss, keep), (~keep).sum()
