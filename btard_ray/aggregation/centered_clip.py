"""CenteredClip, the robust aggregator every BTARD-SGD aggregator peer runs on its part (design §4.2).

Definition (Karimireddy, He and Jaggi 2021; Gorbunov et al. 2022, Algorithm 2). For the n rows
g_1 … g_n of ``stacked`` and a clipping radius τ > 0:

    c_i(x) = min(1, τ / ‖g_i − x‖)          (c_i = 1 when g_i = x)
    r(x)   = (1/n) Σ_i c_i(x) (g_i − x)     the residual
    x_0    = coordinate-wise median,  x_{k+1} = x_k + r(x_k)

stopping at the first point whose residual has ‖r(x)‖ ≤ eps, or after ``max_iters`` updates.
The fixed points r(x) = 0 are the minimisers of the convex Huber-type loss
(1/n) Σ_i ρ_τ(‖g_i − x‖) and the update is a gradient step of length 1 on it, so ‖r‖ never
increases from one exact iterate to the next.

Non-finite rows. A row holding a NaN or an Inf anywhere is infinitely far from every x:
c_i = 0, its distance is reported as +inf, and it takes no part in the median or the sums.
The 1/n still counts all n rows, so with m finite rows every step is m/n of the step on the
finite rows alone and ‖r‖ is m/n of theirs: the fixed point is the same, the stopping test is
(slightly) stricter. The same holds for float64 inputs whose values are so large
(beyond ~1e154) that a squared distance overflows float64. If no row is usable, ValueError.

How it is computed, and why. The naive loop reads all n·d values (and writes an (n, d)
temporary) at every iteration. Here the data is read three times in all, whatever the number
of iterations (twice more when some row is non-finite, to find and drop it):

1. one pass computes x_0 (a sorting network, see ``baselines.order_statistics``) and the
   float64 Gram matrix K = D Dᵀ of D = G − x_0 over column chunks (D is never stored);
2. the iteration runs in coefficient space: every iterate is x = x_0 + Dᵀa with a ∈ R^m, so
   ‖g_i − x‖² = K_ii − 2(Ka)_i + aᵀKa, r = Dᵀb with b = (1/n)(c − (Σ_i c_i)·a), ‖r‖² = bᵀKb,
   and the update x ← x + r is a ← a + b: O(m²) per iteration, independent of d;
3. one pass materialises x in the input dtype (the returned point) and its true distances;
4. one pass computes the true residual at that point.

Subtracting the median before forming K matters: K then holds the spread of the rows, not
their common mean, so K_ii − 2(Ka)_i + aᵀKa loses little to cancellation. Extra memory is
O(d) (x_0, x) plus one chunk.

Numerical contract. ``clip_weights``, ``distances`` and ``residual_norm`` are evaluated at
the returned ``aggregate`` exactly as a verifier would: rows and aggregate cast to float64,
d_i = ‖g_i − x‖, c_i = min(1, τ/d_i), r = (1/n) Σ_i c_i (g_i − x) summed in float64. The
coefficient-space iteration stops at eps/2, leaving room for its own float error and for
rounding x to the input dtype; if the true residual still exceeds eps, the iteration goes on
with true passes (x ← round(x + r(x)), two passes each) until ‖r‖ ≤ eps or ``max_iters``.
Rounding to the input dtype moves x by up to u·‖x‖ (u = 2⁻²⁴ for float32) and ‖r‖ is
1-Lipschitz, so an eps below ~u·‖x‖ may be unreachable: when the true residual stops
decreasing for two true iterations in a row the function returns the best point it saw with
``converged=False`` instead of spending all of ``max_iters`` on rounding noise.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch

from .baselines import _check_stacked, finite_row_mask, median_of_rows

__all__ = ["CenteredClipResult", "centered_clip", "validate_centered_clip_params"]

# The coefficient-space iteration aims below eps by this factor: its residual is a formula
# (bᵀKb) rather than the data, and the returned point is rounded to the input dtype after.
_SURROGATE_TARGET = 0.5
# ‖r‖ is non-increasing in exact arithmetic, so this many iterations without a new minimum
# means float error has taken over: stop rather than spin.
_SURROGATE_PATIENCE = 5
_TRUE_PATIENCE = 2
# Column chunks (CPU; measured on a 2-core AMD EPYC, see benchmarks/centered_clip_bench.py).
# The median network wants long rows, to amortise each op's dispatch; the Gram product wants
# its float64 (m, w) block in L2; the streaming passes a block in L2/L3. On an accelerator
# the chunks only bound the temporary memory.
_CPU_MEDIAN_COLS = 1 << 17
_CPU_GRAM_BYTES = 1 << 21
_CPU_PASS_BYTES = 1 << 22
_ACCEL_COLS = 1 << 22
_ACCEL_FLOAT64_BYTES = 1 << 28


@dataclass(frozen=True)
class CenteredClipResult:
    """The outcome of :func:`centered_clip`; every field is evaluated at ``aggregate``.

    aggregate:     (d,) the returned point x, input dtype and device.
    clip_weights:  (n,) float64, c_i = min(1, τ/‖g_i − x‖); 0 for non-finite rows.
    distances:     (n,) float64, ‖g_i − x‖ in float64; +inf for non-finite rows.
    iterations:    number of updates x ← x + r(x) that led to ``aggregate``.
    residual_norm: ‖(1/n) Σ_i c_i (g_i − x)‖ computed in float64 from the rows and x.
    converged:     residual_norm ≤ eps.
    """

    aggregate: torch.Tensor
    clip_weights: torch.Tensor
    distances: torch.Tensor
    iterations: int
    residual_norm: float
    converged: bool


def validate_centered_clip_params(tau: float, eps: float = 1e-6, max_iters: int = 100) -> None:
    """Raise ValueError unless τ is finite and > 0, eps finite and ≥ 0, max_iters an integer ≥ 0."""
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real) or not 0.0 < float(tau) < math.inf:
        raise ValueError(f"tau must be a finite number > 0, got {tau!r}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0.0 <= float(eps) < math.inf:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if isinstance(max_iters, bool) or not isinstance(max_iters, numbers.Integral) or max_iters < 0:
        raise ValueError(f"max_iters must be an integer >= 0, got {max_iters!r}")


def centered_clip(
    stacked: torch.Tensor, tau: float, eps: float = 1e-6, max_iters: int = 100
) -> CenteredClipResult:
    """CenteredClip of the rows of ``stacked`` (n, d), started at their coordinate-wise median.

    x_{k+1} = x_k + (1/n) Σ_i min(1, τ/‖g_i − x_k‖)(g_i − x_k), from x_0 = the median of the
    finite rows (mean of the two middle values for an even count, rounded to the input
    dtype), until ‖r(x)‖ ≤ eps at the returned point or ``max_iters`` updates. See the module
    docstring for non-finite rows and for the float contract of the returned fields.
    """
    _check_stacked(stacked, "centered_clip")
    validate_centered_clip_params(tau, eps, max_iters)
    tau, eps, max_iters = float(tau), float(eps), int(max_iters)
    n = stacked.shape[0]

    rows, x0, gram = _start(stacked)
    coeffs, iterations = _iterate_coefficients(gram, n, tau, eps * _SURROGATE_TARGET, max_iters)
    x, distances = _materialise(stacked, rows, x0, coeffs)
    del x0, gram
    point = _evaluate(stacked, rows, x, distances, n, tau, iterations)
    best = point
    stalled = 0
    # Only when float error defeated the coefficient-space target: iterate on the data.
    while point.residual > eps and point.iterations < max_iters and stalled < _TRUE_PATIENCE:
        # This repeats the residual pass just done, now also forming round(x + r): a pass
        # wasted on a rare path, to keep the common path at one pass with no extra output.
        x = _residual_pass(stacked, rows, point, n, want_next=True)[1]
        distances = _distance_pass(stacked, rows, x)
        point = _evaluate(stacked, rows, x, distances, n, tau, point.iterations + 1)
        if point.residual < best.residual:
            best, stalled = point, 0
        else:
            stalled += 1
    return best.result(n, rows, eps)


# --------------------------------------------------------------------------- passes over the data


def _float64_cols(stacked: torch.Tensor, m: int, gram: bool = False) -> int:
    """Columns per chunk so that an (m, w) float64 block takes about the budgeted bytes."""
    if stacked.device.type != "cpu":
        return max(1 << 16, _ACCEL_FLOAT64_BYTES // (8 * max(m, 1)))
    budget = _CPU_GRAM_BYTES if gram else _CPU_PASS_BYTES
    return max(1024, budget // (8 * max(m, 1)))


def _widen_minus_(out: torch.Tensor, block: torch.Tensor, vector64: torch.Tensor) -> torch.Tensor:
    """out = float64(block) − vector64, row by row.

    Widening first makes the difference of two float32 (or bfloat16, float16) values exact.
    A copy then a same-dtype subtraction: both are vectorised kernels, whereas a single
    mixed-dtype ``torch.sub`` takes torch's slower casting loop.
    """
    out.copy_(block)
    return out.sub_(vector64)


def _block(stacked: torch.Tensor, rows: torch.Tensor | None, c0: int, c1: int) -> torch.Tensor:
    """Columns c0:c1 of the usable rows (a view when all rows are usable, else a small copy)."""
    return stacked[:, c0:c1] if rows is None else stacked[rows, c0:c1]


def _median_and_gram(stacked: torch.Tensor, rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass: x_0 = median of the rows (input dtype) and K = (G − x_0)(G − x_0)ᵀ in float64."""
    d = stacked.shape[1]
    m = stacked.shape[0] if rows is None else rows.numel()
    x0 = torch.empty(d, dtype=stacked.dtype, device=stacked.device)
    gram = torch.zeros(m, m, dtype=torch.float64, device=stacked.device)
    chunk = _CPU_MEDIAN_COLS if stacked.device.type == "cpu" else _ACCEL_COLS
    sub = _float64_cols(stacked, m, gram=True)
    buf = torch.empty(m, min(sub, max(d, 1)), dtype=torch.float64, device=stacked.device)
    for c0 in range(0, d, chunk):
        block = _block(stacked, rows, c0, c0 + chunk)
        med = median_of_rows(block, out=x0[c0 : c0 + chunk])
        for s0 in range(0, block.shape[1], sub):
            w = min(sub, block.shape[1] - s0)
            diff = buf[:, :w]
            _widen_minus_(diff, block[:, s0 : s0 + w], med[s0 : s0 + w].to(torch.float64))
            gram.addmm_(diff, diff.T)
    return x0, gram


def _start(stacked: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Usable rows (None = all), x_0 and the Gram matrix (on the CPU, for the O(m²) loop).

    A NaN or Inf anywhere makes K non-finite, so the honest case costs no extra check; only
    then are the finite rows found and the pass repeated without the others.
    """
    x0, gram = _median_and_gram(stacked, None)
    if bool(torch.isfinite(gram).all()):
        return None, x0, gram.cpu()
    mask = finite_row_mask(stacked)
    while True:
        if not bool(mask.any()):
            raise ValueError("centered_clip: every row contains NaN or Inf (or overflows float64); nothing to aggregate")
        rows = mask.nonzero().flatten()
        x0, gram = _median_and_gram(stacked, rows)
        finite = torch.isfinite(gram)
        if bool(finite.all()):
            return rows, x0, gram.cpu()
        # Finite values whose squared distance to x_0 overflows float64 (float64 inputs only).
        diag = gram.diagonal()
        bad = ~torch.isfinite(diag)
        if not bool(bad.any()):  # only an off-diagonal product overflowed: drop the largest row
            bad = diag == diag.max()
        mask[rows[bad]] = False


def _iterate_coefficients(
    gram: torch.Tensor, n: int, tau: float, target: float, max_iters: int
) -> tuple[torch.Tensor, int]:
    """The CenteredClip iteration on x = x_0 + Dᵀa, from a = 0 (x = x_0).

    With K = D Dᵀ: ‖d_i − Dᵀa‖² = K_ii − 2(Ka)_i + aᵀKa, and
    x + r(x) = x_0 + Dᵀa + (1/n) Σ_i c_i (d_i − Dᵀa) = x_0 + Dᵀ(a + b),  b = (1/n)(c − (Σc)·a),
    with ‖r‖² = bᵀKb. Returns the final a and the number of updates. Runs in numpy: at
    m ≤ a few dozen, a torch op's dispatch costs more than its arithmetic.
    """
    k = gram.numpy()
    diag = np.diagonal(k).copy()
    coeffs = np.zeros(k.shape[0])
    best, stalled, iterations = math.inf, 0, 0
    while True:
        k_a = k @ coeffs
        sq = np.maximum(diag - 2.0 * k_a + coeffs @ k_a, 0.0)
        with np.errstate(divide="ignore"):  # a zero distance gives τ/0 = inf, clipped to 1
            clip = np.minimum(1.0, tau / np.sqrt(sq))
        step = (clip - clip.sum() * coeffs) / n
        residual = math.sqrt(max(float(step @ (k @ step)), 0.0))
        if residual <= target or iterations >= max_iters:
            break
        if residual < best:
            best, stalled = residual, 0
        else:
            stalled += 1
            if stalled >= _SURROGATE_PATIENCE:
                break
        coeffs += step
        iterations += 1
    return torch.from_numpy(coeffs), iterations


def _materialise(
    stacked: torch.Tensor, rows: torch.Tensor | None, x0: torch.Tensor, coeffs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass: x = x_0 + Dᵀa formed in float64 and rounded once to the input dtype, and
    the true distances ‖g_i − x‖ (float64) at that rounded point."""
    d = stacked.shape[1]
    m = coeffs.numel()
    coeffs = coeffs.to(stacked.device)
    x = torch.empty_like(x0)
    sq = torch.zeros(m, dtype=torch.float64, device=stacked.device)
    sub = _float64_cols(stacked, m)
    buf = torch.empty(m, min(sub, max(d, 1)), dtype=torch.float64, device=stacked.device)
    for c0 in range(0, d, sub):
        block = _block(stacked, rows, c0, c0 + sub)
        diff = buf[:, : block.shape[1]]
        base = x0[c0 : c0 + sub].to(torch.float64)
        _widen_minus_(diff, block, base)
        x[c0 : c0 + sub].copy_(torch.mv(diff.T, coeffs).add_(base))
        # Distances from the rounded x, computed as a verifier does (the block is still in
        # cache, so this costs no extra read of the data).
        _widen_minus_(diff, block, x[c0 : c0 + sub].to(torch.float64))
        sq += torch.linalg.vector_norm(diff, dim=1).square_()  # faster here than vecdot
    return x, sq.sqrt_()


@dataclass(frozen=True)
class _Point:
    """A candidate aggregate with its true (float64) distances, clip weights and residual."""

    x: torch.Tensor
    distances: torch.Tensor  # (m,) over the usable rows
    clip: torch.Tensor  # (m,)
    residual: float
    iterations: int

    def result(self, n: int, rows: torch.Tensor | None, eps: float) -> CenteredClipResult:
        distances = torch.full((n,), math.inf, dtype=torch.float64, device=self.x.device)
        clip = torch.zeros(n, dtype=torch.float64, device=self.x.device)
        if rows is None:
            distances.copy_(self.distances)
            clip.copy_(self.clip)
        else:
            distances[rows] = self.distances
            clip[rows] = self.clip
        return CenteredClipResult(
            aggregate=self.x,
            clip_weights=clip,
            distances=distances,
            iterations=self.iterations,
            residual_norm=self.residual,
            converged=self.residual <= eps,
        )


def _evaluate(
    stacked: torch.Tensor,
    rows: torch.Tensor | None,
    x: torch.Tensor,
    distances: torch.Tensor,
    n: int,
    tau: float,
    iterations: int,
) -> _Point:
    """The clip weights at x from its true distances, then (one pass) the true residual."""
    clip = torch.where(distances > tau, tau / distances, 1.0)
    point = _Point(x, distances, clip, math.nan, iterations)
    residual = _residual_pass(stacked, rows, point, n, want_next=False)[0]
    return _Point(x, distances, clip, residual, iterations)


def _distance_pass(stacked: torch.Tensor, rows: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """(m,) float64: ‖g_i − x‖ over the usable rows, with g_i and x cast to float64."""
    d = stacked.shape[1]
    m = stacked.shape[0] if rows is None else rows.numel()
    sq = torch.zeros(m, dtype=torch.float64, device=stacked.device)
    sub = _float64_cols(stacked, m)
    buf = torch.empty(m, min(sub, max(d, 1)), dtype=torch.float64, device=stacked.device)
    for c0 in range(0, d, sub):
        block = _block(stacked, rows, c0, c0 + sub)
        diff = buf[:, : block.shape[1]]
        _widen_minus_(diff, block, x[c0 : c0 + sub].to(torch.float64))
        sq += torch.linalg.vector_norm(diff, dim=1).square_()
    return sq.sqrt_()


def _residual_pass(
    stacked: torch.Tensor, rows: torch.Tensor | None, point: _Point, n: int, want_next: bool
) -> tuple[float, torch.Tensor | None]:
    """One pass: ‖r(x)‖ with r(x) = (1/n) Σ_i c_i (g_i − x) in float64 and, if asked, round(x + r(x)).

    Rows with c_i = 0 are skipped rather than multiplied: their g_i − x may be infinite.
    """
    d = stacked.shape[1]
    x = point.x
    used = point.clip > 0
    weights = point.clip[used] / n
    if not bool(used.all()):
        index = used.nonzero().flatten()
        rows = index if rows is None else rows[index]
    m = weights.numel()
    x_next = torch.empty_like(x) if want_next else None
    total = torch.zeros((), dtype=torch.float64, device=stacked.device)
    sub = _float64_cols(stacked, m)
    buf = torch.empty(m, min(sub, max(d, 1)), dtype=torch.float64, device=stacked.device)
    for c0 in range(0, d, sub):
        block = _block(stacked, rows, c0, c0 + sub)
        diff = buf[:, : block.shape[1]]
        point = x[c0 : c0 + sub].to(torch.float64)
        _widen_minus_(diff, block, point)
        r = torch.mv(diff.T, weights)
        total += r.dot(r)
        if x_next is not None:
            x_next[c0 : c0 + sub].copy_(r.add_(point))
    return math.sqrt(float(total)), x_next
