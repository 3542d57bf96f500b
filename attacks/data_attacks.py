"""Poisoned data: the true gradient of the attacker's own public batch with wrong labels.

The gradient is computed honestly, at w_t, on the right inputs (and the same dropout masks);
only the targets are changed, so it looks like an honest gradient in size and spread and is
caught only by a validator that re-computes the batch with its public labels. For masked-LM
data the labels are those of the masked positions.
"""

from __future__ import annotations

import torch

from attacks.base import Attack, seeded_generator
from attacks.context import AttackContext


class LabelFlip(Attack):
    """g' = ∇L(w_t; x, C − 1 − y): every label y of its public batch mapped to C − 1 − y
    (C = ``ctx.num_classes``)."""

    name = "label_flip"
    reason = "wrong_gradient"

    def gradient(self, step: int, honest: torch.Tensor, ctx: AttackContext | None = None) -> torch.Tensor:
        ctx = self._require(ctx)
        return ctx.gradient_with_labels(lambda y: ctx.num_classes - 1 - y)


class LabelShuffle(Attack):
    """g' = ∇L(w_t; x, y∘π): its batch's labels permuted by a random permutation π, drawn
    from (seed, peer id, step)."""

    name = "label_shuffle"
    reason = "wrong_gradient"

    def gradient(self, step: int, honest: torch.Tensor, ctx: AttackContext | None = None) -> torch.Tensor:
        ctx = self._require(ctx)
        gen = seeded_generator(self.seed, self.name, ctx.peer_id, step)
        return ctx.gradient_with_labels(lambda y: y[torch.randperm(y.numel(), generator=gen)])
