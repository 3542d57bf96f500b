"""The Byzantine behaviours the defence must catch (design §2; formulas in each docstring)."""

from __future__ import annotations

from typing import Sequence

import torch

from attacks.base import Attack, FalseClaim


class SignFlip(Attack):
    """Gradient attack: send g' = −scale·g (scale = ``params.scale``, default 1000)."""

    name = "sign_flip"
    reason = "wrong_gradient"

    def gradient(self, step: int, honest: torch.Tensor) -> torch.Tensor:
        return honest * -float(self.params.get("scale", 1000.0))


class WrongAggregate(Attack):
    """Aggregation attack: publish x' = x + shift·u for a unit vector u drawn from the
    colluders' seed and the step (``params.shift``, default 1.0), and report x' consistently."""

    name = "wrong_aggregate"
    reason = "wrong_aggregate"

    def aggregate(self, step: int, part_index: int, honest: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step * 131 + part_index)
        direction = torch.randn(honest.shape, generator=gen, dtype=honest.dtype)
        direction /= direction.norm().clamp_min(1e-12)
        return honest + float(self.params.get("shift", 1.0)) * direction.to(honest.device)


class FalseAccusation(Attack):
    """Protocol attack: accuse an honest-looking peer (the next member after the attacker)
    of sending a wrong gradient, although it did not."""

    name = "false_accusation"
    reason = "false_accusation"

    def false_claims(self, step: int, me: int, members: Sequence[int]) -> list[FalseClaim]:
        others = [m for m in members if m != me]
        if not others:
            return []
        return [FalseClaim(accused=others[(members.index(me)) % len(others)], case="wrong_gradient")]


class BadCommitment(Attack):
    """Equivocation: commit to the honest parts, then put different parts (+``params.noise``·N(0,1),
    default 1.0) into the object store."""

    name = "bad_commitment"
    reason = "bad_commitment"

    def sent_parts(self, step: int, committed: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 7919 + step)
        noise = float(self.params.get("noise", 1.0))
        return [p + noise * torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in committed]


class WithholdReveal(Attack):
    """Protocol attack: never reveal the seed nonce (to bias or stall the shared randomness)."""

    name = "withhold_reveal"
    reason = "withheld_reveal"

    def reveal(self, step: int, nonce: bytes) -> bytes | None:
        return None
