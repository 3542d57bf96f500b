"""Attacks by name, and loading a user's own attack by import path (``pkg.module:Class``)."""

from __future__ import annotations

import importlib
from typing import Mapping

import numpy as np

from attacks.base import Attack
from attacks.behaviours import BadCommitment, FalseAccusation, SignFlip, WithholdReveal, WrongAggregate

ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls for cls in (SignFlip, WrongAggregate, FalseAccusation, BadCommitment, WithholdReveal)
}


class UnknownAttack(ValueError):
    """An attack name that is neither registered nor an importable ``module:Class``."""


def attack_class(name: str) -> type[Attack]:
    """The Attack subclass called ``name`` (a registered name or ``pkg.module:Class``)."""
    if name in ATTACKS:
        return ATTACKS[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise UnknownAttack(f"attack {name!r} cannot be imported: {exc}") from None
        if not (isinstance(cls, type) and issubclass(cls, Attack)):
            raise UnknownAttack(f"attack {name!r} is not a subclass of attacks.base.Attack")
        return cls
    raise UnknownAttack(f"unknown attack {name!r}; known: {', '.join(sorted(ATTACKS))} (or pkg.module:Class)")


def make_attack(name: str, params: Mapping[str, float], seed: int) -> Attack:
    return attack_class(name)(params, seed)


def choose_attackers(seed: int, peer_ids: list[int], count: int) -> list[int]:
    """The ``count`` Byzantine peers of a job: a sample of ``peer_ids`` drawn from the job seed."""
    rng = np.random.default_rng([seed, 0xA77AC])
    return sorted(int(p) for p in rng.choice(peer_ids, size=count, replace=False)) if count else []
