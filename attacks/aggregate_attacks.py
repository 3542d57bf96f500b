"""Wrong aggregates: the attacker, as aggregator of part j, publishes x'_j instead of the
CenteredClip result x_j, and reports digest and distances consistent with x'_j (the peer
re-computes them), so only the projection check Σ_i s_ij ≈ 0 can find it.
"""

from __future__ import annotations

import torch

from attacks.base import Attack, seeded_generator


def _unit_like(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    u = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    return (u / u.norm().clamp_min(1e-300)).to(x.dtype)


class WrongAggregate(Attack):
    """x'_j = x_j + shift·u for a unit vector u drawn from the colluders' seed, the step and
    j (``params.shift``, default 1.0)."""

    name = "wrong_aggregate"
    reason = "wrong_aggregate"

    def aggregate(self, step: int, part_index: int, honest: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step * 131 + part_index)
        direction = torch.randn(honest.shape, generator=gen, dtype=honest.dtype)
        direction /= direction.norm().clamp_min(1e-12)
        return honest + self.param("shift", 1.0) * direction.to(honest.device)


class ScaledAggregate(Attack):
    """x'_j = factor·x_j (``params.factor``, default 10)."""

    name = "scaled_aggregate"
    reason = "wrong_aggregate"

    def aggregate(self, step: int, part_index: int, honest: torch.Tensor) -> torch.Tensor:
        return self.param("factor", 10.0) * honest


class SwappedAggregate(Attack):
    """x'_j(t) = x_j(t'), the honest aggregate this peer computed at its latest earlier
    active step t' when that has the same shape; otherwise (the first time, or after the
    partition changed) x'_j = ‖x_j‖·u, u a unit vector drawn from (seed, t, j): another
    vector of the same norm. ``params.fresh`` = 1: always the random vector.
    """

    name = "swapped_aggregate"
    reason = "wrong_aggregate"

    def __init__(self, params=None, seed: int = 0) -> None:
        super().__init__(params, seed)
        self.previous: torch.Tensor | None = None

    def aggregate(self, step: int, part_index: int, honest: torch.Tensor) -> torch.Tensor:
        previous, self.previous = self.previous, honest.detach().clone()
        if previous is not None and previous.shape == honest.shape and not self.param("fresh", 0.0):
            return previous
        return float(honest.double().norm()) * _unit_like(honest, seeded_generator(self.seed, self.name, step,
                                                                                   part_index))
