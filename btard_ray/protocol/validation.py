"""Random validation by gradient re-computation (design §4, step 6).

After step t's seed r_{t+1} is revealed, m validators are drawn, each with one target. The
validator re-computes its target's gradient for step t (the target's public batch, the
weights w_t) and compares it, part by part, with the parts the target committed to. A
mismatch is an accusation. Because r_{t+1} did not exist when the gradients were committed,
a Byzantine peer cannot know whether it will be checked; sending a bad gradient is caught
with probability about m/p per step (p eligible peers), whatever it does.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .randomness import derive_int

__all__ = ["GradientComparison", "choose_suspect_validators", "choose_validators", "clipped_suspects",
           "compare_gradients"]

_TINY = 2.0**-1022  # smallest normal float64: the denominator floor of a relative error
_DERIVE_RANGE = 1 << 63  # derive_int gives integers in [0, 2**63)


def _uniform_below(shared: bytes, label: str, bound: int, *values: int) -> int:
    """A uniform integer in [0, bound) from the shared seed, by rejection (no modulo bias)."""
    limit = _DERIVE_RANGE - _DERIVE_RANGE % bound
    attempt = 0
    while True:
        v = derive_int(shared, label, *values, attempt)
        if v < limit:
            return v % bound
        attempt += 1  # probability < bound / 2**63 per attempt: practically never


def choose_validators(
    shared: bytes, members: Sequence[str], m: int, exclude: Collection[str] = ()
) -> list[tuple[str, str]]:
    """m (validator, target) pairs drawn from the shared seed: the same list on every peer.

    Eligible peers E = sorted(set(members) − set(exclude)), p = |E|. A Fisher–Yates
    shuffle π of E driven by ``derive_int(shared, "validators/shuffle", k, attempt)`` and an
    offset s uniform in [1, p − 1] (``"validators/offset"``) give

        validator_k = π[k],   target_k = π[(k + s) mod p],   k = 0 … min(m, p) − 1.

    So validators are distinct, targets are distinct, no one validates itself, every
    eligible peer is a validator with probability min(m, p)/p and a target with the same
    probability, and the draw depends only on the seed and the eligible set (not on the
    order of ``members``). m is capped at p; fewer than two eligible peers give [].
    Every draw uses only sha256 and integer arithmetic, so any implementation reproduces it.

    Raises ValueError for m < 0 or duplicate members.
    """
    if isinstance(m, bool) or not isinstance(m, int) or m < 0:
        raise ValueError(f"m must be an integer >= 0, got {m!r}")
    if len(set(members)) != len(members):
        raise ValueError("members must be distinct")
    excluded = set(exclude)
    eligible = sorted(p for p in members if p not in excluded)
    p = len(eligible)
    count = min(m, p)
    if p < 2 or count == 0:
        return []
    # Fisher–Yates from the end: the same permutation for the same seed and eligible set.
    order = list(eligible)
    for k in range(p - 1, 0, -1):
        j = _uniform_below(shared, "validators/shuffle", k + 1, k)
        order[k], order[j] = order[j], order[k]
    offset = 1 + _uniform_below(shared, "validators/offset", p - 1)
    return [(order[k], order[(k + offset) % p]) for k in range(count)]


def clipped_suspects(
    members: Sequence[str], reported: Sequence[Sequence[Optional[float]]], tau: float, limit: int,
    spread: float = 3.0,
) -> list[str]:
    """The members whose parts CenteredClip clipped as outliers, most clipped first, at most ``limit``.

    ``reported[j][i]`` is the distance d_ij = ‖g_i[j] − x_j‖ that aggregator j reported for
    member i (``None``: the part was excluded for not matching its commitment, which is
    accused on its own; ``inf``: a non-finite part, which CenteredClip gave no weight).
    Member i is a suspect when, in some part j,

        d_ij > τ   and   d_ij > spread · median_i(d_ij)

    i.e. the aggregate took its part with weight c_ij = τ/d_ij < 1 *and* it lies far outside
    its peers' spread. With an honest majority the median is an honest distance, so a forged
    gradient (sign flip, large noise, NaN) is a suspect while honest peers of a model whose
    gradients are simply large (every d_ij > τ) are not re-computed for nothing. Ranked by
    max_j d_ij, ties by id, so every peer derives the same list from the same reports. A
    reported distance is checked later by the projection check, so an aggregator that lies
    about distances to steer the audits is itself caught.
    """
    worst: dict[str, float] = {}
    for row in reported:
        known = sorted(d for d in row if d is not None)
        if not known:
            continue
        median = known[(len(known) - 1) // 2]  # the lower median: an honest distance when most are
        for pid, d in zip(members, row):
            if d is not None and d > tau and d > spread * median:  # inf: a non-finite row
                worst[pid] = max(worst.get(pid, 0.0), float(d))
    ranked = sorted(worst, key=lambda pid: (-worst[pid], pid))
    return ranked[: max(limit, 0)]


def choose_suspect_validators(shared: bytes, members: Sequence[str], suspects: Sequence[str],
                              label: str = "validators/suspect") -> list[tuple[str, str]]:
    """One (validator, suspect) pair per suspect, the validator drawn from the shared seed.

    validator_k is uniform over sorted(members) − {suspect_k}, by
    ``derive_int(shared, "validators/suspect", k, attempt)``; the seed r_{t+1} did not exist
    when the gradients were committed, so a suspect cannot pick a colluding validator.
    ``label`` separates draws made for different purposes (peers on probation use
    ``"validators/probation"``: every one of them is validated at every step).
    """
    eligible = sorted(members)
    pairs = []
    for k, suspect in enumerate(suspects):
        others = [p for p in eligible if p != suspect]
        if not others:
            continue
        pairs.append((others[_uniform_below(shared, label, len(others), k)], suspect))
    return pairs


@dataclass(frozen=True)
class GradientComparison:
    """The outcome of :func:`compare_gradients`.

    ok:          every part is within tolerance.
    worst_part:  index of the part furthest beyond (or closest to) its allowance, −1 if none.
    worst_error: that part's relative error ‖a − b‖ / max(‖a‖, tiny) (inf for a non-finite
                 or wrongly shaped committed part).
    reason:      what failed, in words ("" when ok).
    """

    ok: bool
    worst_part: int
    worst_error: float
    reason: str


def compare_gradients(
    recomputed_parts: Sequence[torch.Tensor],
    committed_parts: Sequence[torch.Tensor],
    rtol: float = 1e-4,
    atol: float = 1e-7,
) -> GradientComparison:
    """Compare a validator's re-computed parts a_j with the target's committed parts b_j.

    Per part, in float64: err_j = ‖a_j − b_j‖, rel_j = err_j / max(‖a_j‖, tiny) (tiny = the
    smallest normal float64). Part j passes iff b_j has a_j's shape, b_j is finite and

        err_j ≤ rtol·‖a_j‖ + atol

    (``atol``, in the same norm, only matters for a part whose true gradient is ≈ 0, where
    no relative test can pass). The worst part is the one with the largest
    err_j / (rtol·‖a_j‖ + atol), i.e. the furthest beyond its allowance.

    A non-finite or wrongly shaped committed part is a mismatch (rel = inf). A non-finite
    re-computed part raises ValueError: then the validator cannot judge (honest training
    itself diverged, or the validator is broken) and must not accuse. Different numbers of
    parts raise ValueError too: the partition is public, so that is the caller's bug.
    """
    if isinstance(rtol, bool) or not isinstance(rtol, numbers.Real) or not 0.0 <= rtol < math.inf:
        raise ValueError(f"rtol must be a finite number >= 0, got {rtol!r}")
    if isinstance(atol, bool) or not isinstance(atol, numbers.Real) or not 0.0 <= atol < math.inf:
        raise ValueError(f"atol must be a finite number >= 0, got {atol!r}")
    if len(recomputed_parts) != len(committed_parts):
        raise ValueError(
            f"compare_gradients: {len(recomputed_parts)} re-computed parts but {len(committed_parts)} committed"
        )
    worst_part, worst_error, worst_score = -1, 0.0, -1.0
    failed: list[str] = []
    for j, (a, b) in enumerate(zip(recomputed_parts, committed_parts)):
        a64 = a.detach().to(device="cpu", dtype=torch.float64)
        if not bool(torch.isfinite(a64).all()):
            raise ValueError(f"re-computed part {j} is not finite; it cannot be used to judge")
        a_norm = float(torch.linalg.vector_norm(a64))
        allowance = rtol * a_norm + atol
        if tuple(b.shape) != tuple(a.shape):
            rel, score = math.inf, math.inf
            failed.append(f"part {j} has shape {tuple(b.shape)}, expected {tuple(a.shape)}")
        else:
            b64 = b.detach().to(device="cpu", dtype=torch.float64)
            if not bool(torch.isfinite(b64).all()):
                rel, score = math.inf, math.inf
                failed.append(f"part {j} is not finite")
            else:
                err = float(torch.linalg.vector_norm(a64 - b64))
                rel = err / max(a_norm, _TINY)
                if allowance > 0.0:
                    score = err / allowance
                else:  # rtol = atol = 0: only an exact match passes
                    score = 0.0 if err == 0.0 else math.inf
                if not err <= allowance:  # also catches err = inf (float64 overflow)
                    failed.append(f"part {j}: relative error {rel:.3g} (allowed {rtol:g} + atol {atol:g})")
        if score > worst_score:
            worst_part, worst_error, worst_score = j, rel, score
    return GradientComparison(
        ok=not failed,
        worst_part=worst_part,
        worst_error=worst_error,
        reason="; ".join(failed),
    )
