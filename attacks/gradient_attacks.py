"""Forged gradients: what the attacker commits to is not the gradient of its public batch.

Notation: g is the attacker's true flat gradient at w_t; g_k its slice for parameter tensor
k (in the order of ``model.parameters()``, from :attr:`AttackContext.param_sizes`; without
a context the whole vector is one "tensor"); u ~ N(0, I)/‖·‖ a random unit vector drawn
from the named seeds. ``seed`` is shared by colluding attackers, so what depends on it
alone is the same for all of them.

Every one of these is a wrong gradient for a validator that re-computes g; the large ones
(sign_flip, constant_direction, random_direction, gaussian_noise) are also clipped by
CenteredClip and so audited in the very step they are sent.
"""

from __future__ import annotations

import torch

from attacks.base import Attack, seeded_generator
from attacks.context import AttackContext


def _tensors(flat: torch.Tensor, ctx: AttackContext | None) -> list[torch.Tensor]:
    return ctx.split_tensors(flat) if ctx is not None else [flat]


def _unit(shape: torch.Size, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    u = torch.randn(shape, generator=gen, dtype=torch.float64)
    return (u / u.norm().clamp_min(1e-300)).to(like.dtype)


class SignFlip(Attack):
    """g' = −scale·g (``params.scale``, default 1000)."""

    name = "sign_flip"
    reason = "wrong_gradient"

    def gradient(self, step: int, honest: torch.Tensor, ctx: AttackContext | None = None) -> torch.Tensor:
        return honest * -self.param("scale", 1000.0)


class ConstantDirection(Attack):
    """g'_k = scale·‖g_k‖·u_k for every parameter tensor k (``params.scale``, default 1000).

    u_k is drawn once from (seed, k): the same direction at every step and for every
    colluder, 1000x as long as the true gradient of that tensor. Per tensor (not per part)
    because the parameter shapes are known to the attacker and tensors of very different
    scales (biases, weights) each get their own multiple of their own norm.
    """

    name = "constant_direction"
    reason = "wrong_gradient"

    def gradient(self, step: int, honest: torch.Tensor, ctx: AttackContext | None = None) -> torch.Tensor:
        scale = self.param("scale", 1000.0)
        out = [scale * float(g.norm()) * _unit(g.shape, seeded_generator(self.seed, self.name, k), g)
               for k, g in enumerate(_tensors(honest, ctx))]
        return torch.cat(out)


class RandomDirection(Attack):
    """g'_k = scale·‖g_k‖·u_k(t) with u_k(t) drawn afresh every step from (seed, t, k).

    As :class:`ConstantDirection` (``params.scale``, default 1000) but the direction changes
    every step; colluders share it within a step.
    """

    name = "random_direction"
    reason = "wrong_gradient"

    def gradient(self, step: int, honest: torch.Tensor, ctx: AttackContext | None = None) -> torch.Tensor:
        scale = self.param("scale", 1000.0)
        out = [scale * float(g.norm()) * _unit(g.shape, seeded_generator(self.seed, self.name, step, k), g)
               for k, g in enumerate(_tensors(honest, ctx))]
        return torch.cat(out)


class GaussianNoise(Attack):
    """g'_k = g_k + σ·ξ_k for every ``every``-th parameter tensor k (k = 0, every, 2·every, …),
    g'_k = g_k for the others; ξ_k ~ N(0, I).

    ``params.sigma`` (default 100) and ``params.every`` (default 2: every other tensor, so
    half the gradient is honest and a per-part check must still find the other half;
    1: every tensor). ξ is independent across attackers, steps and tensors (drawn from
    seed, peer id, step, k).
    """

    name = "gaussian_noise"
    reason = "wrong_gradient"

    def gradient(self, step: int, honest: torch.Tensor, ctx: AttackContext | None = None) -> torch.Tensor:
        sigma, every = self.param("sigma", 100.0), max(1, int(self.param("every", 2)))
        peer = ctx.peer_id if ctx is not None else -1
        out = []
        for k, g in enumerate(_tensors(honest, ctx)):
            if k % every == 0:
                gen = seeded_generator(self.seed, self.name, peer, step, k)
                g = g + sigma * torch.randn(g.shape, generator=gen, dtype=g.dtype)
            out.append(g)
        return torch.cat(out)


class NanInf(Attack):
    """Non-finite gradients: g' = NaN everywhere (default), or with ``params.inf`` = 1,
    g' = g with +inf at entries 0, s, 2s, … (s = ``params.stride``, default 100: every part
    of a few hundred entries or more holds one).

    CenteredClip gives a non-finite row weight 0 (distance +inf, reported as null), so the
    aggregate is unharmed; a validator's comparison finds "part j is not finite".
    """

    name = "nan_inf"
    reason = "wrong_gradient"

    def gradient(self, step: int, honest: torch.Tensor, ctx: AttackContext | None = None) -> torch.Tensor:
        if self.param("inf", 0.0):
            out = honest.clone()
            out[:: max(1, int(self.param("stride", 100)))] = float("inf")
            return out
        return torch.full_like(honest, float("nan"))


class DelayedGradient(Attack):
    """g'(t) = g(t − k): its own true gradient from k steps earlier (``params.delay``,
    default 5); its honest g(t) while it has no gradient of step t − k.

    A stale gradient has the size and direction of an honest one, so it is found only by
    random validation. It remembers the gradients of the steps at which the hook ran, i.e.
    the active steps of the schedule: with ``attack.every`` > 1 it sends g(t − k) only when
    t − k was an active step too.
    """

    name = "delayed_gradient"
    reason = "wrong_gradient"

    def __init__(self, params=None, seed: int = 0) -> None:
        super().__init__(params, seed)
        self.history: dict[int, torch.Tensor] = {}

    def gradient(self, step: int, honest: torch.Tensor, ctx: AttackContext | None = None) -> torch.Tensor:
        delay = max(1, int(self.param("delay", 5)))
        self.history[step] = honest.detach().clone()
        for old in [s for s in self.history if s < step - delay]:
            del self.history[old]
        return self.history.get(step - delay, honest)
