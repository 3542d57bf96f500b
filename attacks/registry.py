"""Attacks by name, and loading a user's own attack by import path (``pkg.module:Class``)."""

from __future__ import annotations

import importlib
from typing import Mapping

import numpy as np

from attacks import aggregate_attacks, data_attacks, gradient_attacks, omniscient_attacks, protocol_attacks
from attacks.base import Attack

#: every registered attack by name; one module per family
ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls
    for module in (gradient_attacks, data_attacks, omniscient_attacks, aggregate_attacks, protocol_attacks)
    for cls in vars(module).values()
    if isinstance(cls, type) and issubclass(cls, Attack) and cls.__module__ == module.__name__
}

#: the attacks that forge the gradient (what a validator's re-computation must catch)
GRADIENT_ATTACKS = tuple(sorted(
    name for name, cls in ATTACKS.items()
    if cls.__module__ in (gradient_attacks.__name__, data_attacks.__name__, omniscient_attacks.__name__)))


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
    """An instance of attack ``name`` with ``params``; colluding attackers get the same ``seed``."""
    return attack_class(name)(params, seed)


def choose_attackers(seed: int, peer_ids: list[int], count: int) -> list[int]:
    """The ``count`` Byzantine peers of a job: a sample of ``peer_ids`` drawn from the job seed."""
    rng = np.random.default_rng([seed, 0xA77AC])
    return sorted(int(p) for p in rng.choice(peer_ids, size=count, replace=False)) if count else []
