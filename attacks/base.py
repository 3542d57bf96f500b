"""The one small interface every Byzantine behaviour implements.

An attacker is an ordinary peer whose :class:`Attack` rewrites what it sends at the points
of the protocol where a real adversary could lie. Every hook receives the honest value and
returns what the attacker sends instead; the defaults are honest, so an attack overrides
only the hooks it needs. Hooks are called only at steps where the attack schedule is active.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch


@dataclass(frozen=True)
class FalseClaim:
    """An accusation the attacker makes up: ``case`` against peer ``accused``."""

    accused: int
    case: str
    part: int | None = None


class Attack:
    """Honest behaviour; subclasses override hooks. ``reason`` is the ban reason it earns.

    ``params`` come from ``attack.params`` in the config; ``seed`` is shared by all
    attackers of a job (they may collude) and differs from the honest peers' seeds.
    """

    name: str = "honest"
    reason: str = ""

    def __init__(self, params: Mapping[str, float] | None = None, seed: int = 0) -> None:
        self.params = dict(params or {})
        self.seed = seed

    def gradient(self, step: int, honest: torch.Tensor) -> torch.Tensor:
        """The flat gradient the attacker commits to and sends."""
        return honest

    def sent_parts(self, step: int, committed: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The parts actually put into the object store after committing to ``committed``."""
        return list(committed)

    def aggregate(self, step: int, part_index: int, honest: torch.Tensor) -> torch.Tensor:
        """The aggregate the attacker publishes for the part it aggregates."""
        return honest

    def reveal(self, step: int, nonce: bytes) -> bytes | None:
        """The nonce revealed (None: withhold it)."""
        return nonce

    def false_claims(self, step: int, me: int, members: Sequence[int]) -> list[FalseClaim]:
        """Accusations the attacker makes against other peers regardless of the facts."""
        return []
