"""The one small interface every Byzantine behaviour implements.

An attacker is an ordinary peer whose :class:`Attack` rewrites what it sends at the points
of the protocol where a real adversary could lie. Every hook receives the honest value and
returns what the attacker sends instead; the defaults are honest, so an attack overrides
only the hooks it needs. Hooks are called only at steps where the attack schedule
(``attack.start_step``, ``every``, ``stop_step``) is active.

Where each hook is called (:mod:`btard_ray.peer_protocol`): ``gradient`` and ``sent_parts``
in ``PeerProtocol.commit``, ``aggregate`` in ``PeerProtocol.aggregate``, ``reveal`` in
``PeerProtocol.reveal``, ``false_claims`` in ``PeerProtocol.audit``. ``outgoing`` (every
signed message) is the hook of :class:`attacks.protocol_attacks.Replay`; see its docstring
for the one call the peer needs.

Changed in the attack library: ``gradient(step, honest)`` became ``gradient(step, honest,
ctx)`` with an :class:`~attacks.context.AttackContext`. A subclass that still defines the
two-argument form keeps working (the context is dropped for it).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from attacks.context import AttackContext


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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("gradient")
        if own is not None and _positional_count(own) == 3:  # (self, step, honest): the old hook
            cls.gradient = _without_context(own)  # type: ignore[method-assign]

    def param(self, key: str, default: float) -> float:
        """``params[key]`` as a float, ``default`` when not configured."""
        return float(self.params.get(key, default))

    def gradient(self, step: int, honest: torch.Tensor, ctx: AttackContext | None = None) -> torch.Tensor:
        """The flat gradient the attacker commits to and sends.

        ``honest`` is its true gradient at w_t; ``ctx`` what it knows about the step (the
        caller always passes one; attacks that need none accept ``None`` too).
        """
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

    def outgoing(self, step: int, kind: str, message: dict[str, Any]) -> dict[str, Any]:
        """The signed message of ``kind`` (a ``Message.to_dict()``) actually sent at ``step``."""
        return message

    def _require(self, ctx: AttackContext | None) -> AttackContext:
        if ctx is None:
            raise TypeError(f"attack {self.name!r} needs the AttackContext (gradient(step, honest, ctx))")
        return ctx


def seeded_generator(*values: int | str) -> torch.Generator:
    """A torch generator seeded from ``values`` (sha256, so nearby values give unrelated streams)."""
    digest = hashlib.sha256("/".join(str(v) for v in values).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)


def _positional_count(fn: Any) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return -1
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        return -1
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def _without_context(old: Any) -> Any:
    @functools.wraps(old)
    def gradient(self: Attack, step: int, honest: torch.Tensor, ctx: AttackContext | None = None) -> torch.Tensor:
        return old(self, step, honest)

    return gradient
