"""Contiguous partition of a flat gradient vector among the n peers of a step.

In the butterfly all-reduce (design §4, step 1) every peer flattens its gradient and cuts
it into n contiguous parts; part j is aggregated by the j-th member of the step's
membership. All peers must cut at exactly the same places, so the partition is a pure
function of (length, n): the first ``length % n`` parts get one extra element, so sizes
differ by at most one and the part a peer aggregates never depends on who computes it.

The helpers at the bottom turn a list of parameter-shaped tensors into one flat vector and
back, which is how a model's gradients become the vector that is partitioned.
"""

from __future__ import annotations

import numbers
from typing import Sequence

import torch

__all__ = ["part_sizes", "part_bounds", "split", "join", "flatten_grads", "unflatten_like"]


def _check(length: int, n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"the number of parts n must be an integer >= 1, got {n!r}")
    if isinstance(length, bool) or not isinstance(length, numbers.Integral) or length < 0:
        raise ValueError(f"the vector length must be an integer >= 0, got {length!r}")


def part_sizes(length: int, n: int) -> list[int]:
    """Sizes of the n parts of a vector of ``length`` elements.

    size_j = ⌊length / n⌋ + (1 if j < length mod n else 0), so Σ_j size_j = length and
    max_j size_j − min_j size_j ≤ 1. Parts may be empty when length < n.

    Raises ValueError when n < 1 or length < 0.
    """
    _check(length, n)
    base, extra = divmod(int(length), int(n))
    return [base + 1 if j < extra else base for j in range(n)]


def part_bounds(length: int, n: int) -> list[tuple[int, int]]:
    """Half-open ``(start, end)`` index range of each of the n parts.

    start_0 = 0, end_j = start_{j+1}, end_{n−1} = length, end_j − start_j = part_sizes(length, n)[j].
    """
    bounds = []
    start = 0
    for size in part_sizes(length, n):
        bounds.append((start, start + size))
        start += size
    return bounds


def split(flat: torch.Tensor, n: int) -> list[torch.Tensor]:
    """Cut a 1-D tensor into its n parts (see :func:`part_sizes`).

    Returns views of ``flat`` (no copy). Note that pickling a view (Ray's object store,
    ``torch.save``) serialises its whole underlying storage; ``.clone()`` a part first if
    only that part should travel.
    """
    if not isinstance(flat, torch.Tensor) or flat.dim() != 1:
        shape = tuple(flat.shape) if isinstance(flat, torch.Tensor) else type(flat).__name__
        raise ValueError(f"split expects a 1-D tensor, got {shape}")
    return list(torch.split(flat, part_sizes(flat.numel(), n)))


def join(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate parts back into one flat vector: join(split(v, n)) == v for every n.

    Raises ValueError when ``parts`` is empty (there is no dtype or device to give the
    result) or a part is not 1-D.
    """
    parts = list(parts)
    if not parts:
        raise ValueError("join needs at least one part")
    for j, part in enumerate(parts):
        if part.dim() != 1:
            raise ValueError(f"join expects 1-D parts, part {j} has shape {tuple(part.shape)}")
    return torch.cat(parts)


def flatten_grads(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate the tensors, each flattened in row-major order, into one 1-D tensor.

    All tensors must share one dtype and one device (mixing them would silently promote or
    fail later); the result is a new tensor of that dtype on that device.
    """
    tensors = list(tensors)
    if not tensors:
        raise ValueError("flatten_grads needs at least one tensor")
    dtype, device = tensors[0].dtype, tensors[0].device
    for i, t in enumerate(tensors):
        if t.dtype != dtype or t.device != device:
            raise ValueError(
                f"flatten_grads: tensor {i} is {t.dtype} on {t.device}, "
                f"tensor 0 is {dtype} on {device}"
            )
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten_like(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Inverse of :func:`flatten_grads`: cut ``flat`` into tensors shaped like ``like``.

    Returns views of ``flat`` (its dtype and device, the shapes of ``like``). Raises
    ValueError when ``flat`` is not 1-D or its length is not Σ numel(like).
    """
    like = list(like)
    if flat.dim() != 1:
        raise ValueError(f"unflatten_like expects a 1-D tensor, got shape {tuple(flat.shape)}")
    sizes = [t.numel() for t in like]
    if flat.numel() != sum(sizes):
        raise ValueError(
            f"unflatten_like: flat has {flat.numel()} elements, the {len(like)} tensors need {sum(sizes)}"
        )
    return [piece.view(t.shape) for piece, t in zip(torch.split(flat, sizes), like)]
