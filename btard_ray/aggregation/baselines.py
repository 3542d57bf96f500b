"""Baseline aggregators that CenteredClip is compared against, and the order statistics they share.

Every aggregator takes ``stacked``, an (n, d) floating tensor whose row i is peer i's copy of
one part of the gradient, and returns the (d,) aggregate in the input's dtype, on the input's
device.

Non-finite rows: ``mean`` is the plain all-reduce and lets a NaN or Inf through (that is the
failure the baseline is there to show). The robust baselines drop every row that holds a NaN
or an Inf anywhere, then aggregate the m remaining rows as if only those had been sent; if
no row is finite they raise ValueError.

Order statistics (the median, the trimmed mean, CenteredClip's starting point) come from
:func:`order_statistics`: for up to 32 rows it runs a sorting network of element-wise
``minimum``/``maximum`` over column chunks, pruned to the ranks that are asked for. On a CPU,
``torch.median(dim=0)`` along the short first axis costs about 100 reads of the tensor; the
network about 10 (benchmarks/results/centered_clip.md, n = 4 … 16).
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Sequence

import torch

__all__ = [
    "mean",
    "coordinate_median",
    "trimmed_mean",
    "geometric_median",
    "finite_row_mask",
    "median_of_rows",
    "order_statistics",
    "validate_trimmed_mean_params",
    "validate_geometric_median_params",
]

# Above this many rows a sorting network (O(m log² m) element-wise passes) loses to a sort.
_NETWORK_MAX_ROWS = 32
# Columns per chunk: long enough to amortise the per-op overhead, short enough that the
# network's working set (m + 2 rows of this many values) stays in the CPU's caches.
_CPU_CHUNK_COLS = 1 << 17
_ACCEL_CHUNK_COLS = 1 << 22


def _chunk_cols(device: torch.device) -> int:
    return _CPU_CHUNK_COLS if device.type == "cpu" else _ACCEL_CHUNK_COLS


def _check_stacked(stacked: torch.Tensor, who: str) -> None:
    if not isinstance(stacked, torch.Tensor):
        raise TypeError(f"{who} expects a torch.Tensor, got {type(stacked).__name__}")
    if stacked.dim() != 2:
        raise ValueError(f"{who} expects an (n, d) tensor, got shape {tuple(stacked.shape)}")
    if not stacked.is_floating_point():
        raise TypeError(f"{who} expects a floating-point tensor, got {stacked.dtype}")
    if stacked.shape[0] < 1:
        raise ValueError(f"{who} needs at least one row, got shape {tuple(stacked.shape)}")


def finite_row_mask(stacked: torch.Tensor) -> torch.Tensor:
    """(n,) bool: True for the rows whose every value is finite (no NaN, no ±Inf).

    Evaluated over column chunks, so the temporary boolean tensor stays small.
    """
    n, d = stacked.shape
    mask = torch.ones(n, dtype=torch.bool, device=stacked.device)
    step = _chunk_cols(stacked.device) * 4
    for c0 in range(0, d, step):
        mask &= torch.isfinite(stacked[:, c0 : c0 + step]).all(dim=1)
    return mask


def _finite_rows(stacked: torch.Tensor, who: str) -> torch.Tensor:
    """The finite rows of ``stacked`` (the tensor itself when all are finite)."""
    mask = finite_row_mask(stacked)
    if bool(mask.all()):
        return stacked
    if not bool(mask.any()):
        raise ValueError(f"{who}: every row contains NaN or Inf; nothing to aggregate")
    return stacked[mask]


# --------------------------------------------------------------------------- order statistics


@functools.lru_cache(maxsize=None)
def _batcher_network(m: int) -> tuple[tuple[int, int], ...]:
    """Comparators (a, b), a < b, of Batcher's odd-even merge sort for m wires.

    Built for the next power of two p ≥ m; a comparator that touches a wire ≥ m is dropped.
    That is exact: think of wires m..p−1 as +∞; they start at the top and a comparator
    (a, b) with b ≥ m leaves the smaller value where it is, so those wires never move.
    """
    p = 1
    while p < m:
        p *= 2
    comps = []
    size = 1
    while size < p:
        k = size
        while k >= 1:
            for j in range(k % size, p - k, 2 * k):
                for i in range(min(k, p - j - k)):
                    if (i + j) // (2 * size) == (i + j + k) // (2 * size):
                        comps.append((i + j, i + j + k))
            k //= 2
        size *= 2
    return tuple((a, b) for a, b in comps if b < m)


@functools.lru_cache(maxsize=None)
def _pruned_network(m: int, ranks: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """The comparators of the m-wire network that the output wires ``ranks`` depend on."""
    needed = set(ranks)
    kept = []
    for a, b in reversed(_batcher_network(m)):
        if a in needed or b in needed:
            kept.append((a, b))
            needed.update((a, b))
    return tuple(reversed(kept))


def _network_ranks(block: torch.Tensor, ranks: tuple[int, ...]) -> list[torch.Tensor]:
    """Rows of rank ``ranks`` (0 = smallest) of each column of ``block`` via a sorting network.

    Every comparator writes its min and max into two free buffers and returns the buffers
    it consumed to the pool, so the input is never written and nothing is copied.
    """
    m, w = block.shape
    wires: list[torch.Tensor] = [block[i] for i in range(m)]
    owned = [False] * m  # whether wire i currently holds a pool buffer
    pool = [torch.empty(w, dtype=block.dtype, device=block.device) for _ in range(min(m, 2) + 2)]
    for a, b in _pruned_network(m, ranks):
        lo = pool.pop() if pool else torch.empty(w, dtype=block.dtype, device=block.device)
        hi = pool.pop() if pool else torch.empty(w, dtype=block.dtype, device=block.device)
        torch.minimum(wires[a], wires[b], out=lo)
        torch.maximum(wires[a], wires[b], out=hi)
        for wire in (a, b):
            if owned[wire]:
                pool.append(wires[wire])
        wires[a], wires[b] = lo, hi
        owned[a] = owned[b] = True
    return [wires[r] for r in ranks]


def order_statistics(block: torch.Tensor, ranks: Sequence[int]) -> list[torch.Tensor]:
    """For each rank k in ``ranks``, the (w,) tensor of the k-th smallest value of every column.

    ``block`` is (m, w) and must be finite (NaN has no rank). Up to 32 rows use a sorting
    network over the whole block; more rows use ``torch.sort`` along the rows. Callers pass
    blocks of a few tens of thousands of columns so that the work stays in cache.
    """
    m = block.shape[0]
    ranks = tuple(int(k) for k in ranks)
    if any(not 0 <= k < m for k in ranks):
        raise ValueError(f"ranks {ranks} out of range for {m} rows")
    if m <= _NETWORK_MAX_ROWS:
        return _network_ranks(block, ranks)
    ordered = torch.sort(block, dim=0).values
    return [ordered[k] for k in ranks]


def _midpoint_(out: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    # lo/2 + hi/2 cannot overflow where lo + hi would (two values near the dtype's maximum),
    # and halving is exact, so the result is (lo + hi)/2 rounded once.
    torch.mul(lo, 0.5, out=out)
    return out.add_(hi, alpha=0.5)


def median_of_rows(rows: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Coordinate-wise median of the m rows of a finite (m, d) tensor, in its dtype.

    med_j = v_(k) for odd m, (v_(k) + v_(k+1))/2 for even m, where v_(1) ≤ … ≤ v_(m) are
    column j's values and k = ⌈m/2⌉: the mean of the two middle values (numpy's median), not
    the lower median of ``torch.median``. No NaN handling: drop non-finite rows first.
    Writes into ``out`` when given.
    """
    m, d = rows.shape
    if out is None:
        out = torch.empty(d, dtype=rows.dtype, device=rows.device)
    ranks = ((m - 1) // 2,) if m % 2 else (m // 2 - 1, m // 2)
    step = _chunk_cols(rows.device)
    for c0 in range(0, d, step):
        picked = order_statistics(rows[:, c0 : c0 + step], ranks)
        if len(picked) == 1:
            out[c0 : c0 + step].copy_(picked[0])
        else:
            _midpoint_(out[c0 : c0 + step], picked[0], picked[1])
    return out


# --------------------------------------------------------------------------- aggregators


def mean(stacked: torch.Tensor) -> torch.Tensor:
    """Plain average, the all-reduce without any defence: x = (1/n) Σ_i g_i.

    Non-finite values propagate (one NaN row makes the aggregate NaN), on purpose.
    """
    _check_stacked(stacked, "mean")
    return stacked.mean(dim=0)


def coordinate_median(stacked: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median of the finite rows: x_j = median_i g_ij.

    For an even number m of finite rows it is the mean of the two middle values (as
    ``numpy.median``). Rows holding a NaN or Inf are dropped first.
    """
    _check_stacked(stacked, "coordinate_median")
    return median_of_rows(_finite_rows(stacked, "coordinate_median"))


def validate_trimmed_mean_params(trim_ratio: float = 0.2) -> None:
    """Raise ValueError unless 0 ≤ trim_ratio < 0.5."""
    if (
        isinstance(trim_ratio, bool)
        or not isinstance(trim_ratio, numbers.Real)
        or not 0.0 <= float(trim_ratio) < 0.5
    ):
        raise ValueError(f"trim_ratio must be a number in [0, 0.5), got {trim_ratio!r}")


def trimmed_mean(stacked: torch.Tensor, trim_ratio: float = 0.2) -> torch.Tensor:
    """Coordinate-wise trimmed mean: x_j = (1/(m − 2k)) Σ_{r=k+1}^{m−k} v_(r), k = ⌊trim_ratio·m⌋.

    v_(1) ≤ … ≤ v_(m) are column j's values over the m finite rows (rows holding a NaN or Inf
    are dropped first, and k is computed from m, not n, so at least one value always
    remains). Sums are accumulated in float64 and the result cast back to the input dtype.
    """
    _check_stacked(stacked, "trimmed_mean")
    validate_trimmed_mean_params(trim_ratio)
    rows = _finite_rows(stacked, "trimmed_mean")
    m, d = rows.shape
    k = math.floor(float(trim_ratio) * m)
    if k == 0:
        return rows.mean(dim=0)
    kept = tuple(range(k, m - k))
    out = torch.empty(d, dtype=rows.dtype, device=rows.device)
    step = _chunk_cols(rows.device)
    for c0 in range(0, d, step):
        picked = order_statistics(rows[:, c0 : c0 + step], kept)
        acc = picked[0].to(torch.float64, copy=True)
        for value in picked[1:]:
            acc += value
        out[c0 : c0 + step].copy_(acc.div_(len(kept)))
    return out


def validate_geometric_median_params(eps: float = 1e-6, max_iters: int = 100, floor: float = 1e-8) -> None:
    """Raise ValueError unless eps ≥ 0, max_iters is an integer ≥ 0 and floor > 0."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0.0 <= float(eps) < math.inf:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if isinstance(max_iters, bool) or not isinstance(max_iters, numbers.Integral) or max_iters < 0:
        raise ValueError(f"max_iters must be an integer >= 0, got {max_iters!r}")
    if isinstance(floor, bool) or not isinstance(floor, numbers.Real) or not 0.0 < float(floor) < math.inf:
        raise ValueError(f"floor must be a finite number > 0, got {floor!r}")


def geometric_median(
    stacked: torch.Tensor, eps: float = 1e-6, max_iters: int = 100, floor: float = 1e-8
) -> torch.Tensor:
    """Geometric median argmin_x Σ_i ‖g_i − x‖ of the finite rows, by smoothed Weiszfeld.

    y_0 = coordinate-wise median; y_{k+1} = Σ_i w_i g_i / Σ_i w_i with
    w_i = 1 / max(‖g_i − y_k‖, floor). The floor keeps the weight finite when y_k lands on a
    row (the singularity of plain Weiszfeld). Stops when ‖y_{k+1} − y_k‖ ≤ eps or after
    ``max_iters`` updates. Distances and weights are computed in float64; rows holding a NaN
    or Inf are dropped first.
    """
    _check_stacked(stacked, "geometric_median")
    validate_geometric_median_params(eps, max_iters, floor)
    rows = _finite_rows(stacked, "geometric_median")
    y = median_of_rows(rows)
    for _ in range(int(max_iters)):
        dist = torch.linalg.vector_norm(rows - y, dim=1, dtype=torch.float64)
        weights = 1.0 / dist.clamp_min(float(floor))
        weights /= weights.sum()
        # The weights are normalised (a convex combination), so forming the sum in the
        # input dtype loses nothing that matters and avoids a float64 copy of every row.
        y_next = weights.to(rows.dtype) @ rows
        step = float(torch.linalg.vector_norm(y_next - y, dtype=torch.float64))
        y = y_next
        if step <= eps:
            break
    return y
