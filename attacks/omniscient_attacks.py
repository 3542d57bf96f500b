"""Omniscient attacks: built from every member's true gradient of the step.

Batches are public and all peers hold w_t, so the attacker re-computes g_1 … g_n, the true
gradients of every member (its own and its colluders' included: their batches are as
honest as anyone's), with :meth:`AttackContext.honest_gradients`. Colluders compute the same
numbers and so send the same vector. Both attacks stay inside (or near) the honest spread,
so CenteredClip does not clip them; a validator's re-computation is what finds them.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch

from attacks.base import Attack
from attacks.context import AttackContext


class InnerProductManipulation(Attack):
    """IPM (Xie et al., 2020): g' = −ε·(1/n)·Σ_i g_i, ``params.epsilon`` (default 0.1)."""

    name = "ipm"
    reason = "wrong_gradient"

    def gradient(self, step: int, honest: torch.Tensor, ctx: AttackContext | None = None) -> torch.Tensor:
        mean = self._require(ctx).honest_gradients().mean(dim=0)
        return -self.param("epsilon", 0.1) * mean


def alie_z(n: int, b: int) -> float:
    """z of "A little is enough" (Baruch et al., 2019) for n peers of which b are attackers:
    s = ⌊n/2 + 1⌋ − b, z = Φ⁻¹((n − s)/n).

    Where the formula leaves (0, 1) (s ≥ n or s ≤ 0) the probability is clamped to
    [1/(2n), 1 − 1/(2n)].
    """
    s = math.floor(n / 2 + 1) - b
    p = min(max((n - s) / n, 1 / (2 * n)), 1 - 1 / (2 * n))
    return NormalDist().inv_cdf(p)


class ALittleIsEnough(Attack):
    """ALIE: g' = μ − z·σ coordinate-wise, μ and σ the mean and the (unbiased) standard
    deviation of the members' true gradients, z = :func:`alie_z` (n members, b = the
    colluding attackers among them) unless ``params.z`` is given."""

    name = "alie"
    reason = "wrong_gradient"

    def gradient(self, step: int, honest: torch.Tensor, ctx: AttackContext | None = None) -> torch.Tensor:
        ctx = self._require(ctx)
        grads = ctx.honest_gradients()
        z = self.param("z", alie_z(len(ctx.members), len(ctx.attackers)))
        return grads.mean(dim=0) - z * grads.std(dim=0)
