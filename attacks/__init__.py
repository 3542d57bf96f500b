"""Byzantine behaviours as plug-ins with one small interface (:class:`attacks.base.Attack`).

One module per family, each attack a small class whose docstring gives what it sends:

- :mod:`attacks.gradient_attacks`: forged gradients: ``sign_flip``, ``constant_direction``,
  ``random_direction``, ``gaussian_noise``, ``nan_inf``, ``delayed_gradient``;
- :mod:`attacks.data_attacks`: poisoned labels: ``label_flip``, ``label_shuffle``;
- :mod:`attacks.omniscient_attacks`: from every member's true gradient: ``ipm``, ``alie``;
- :mod:`attacks.aggregate_attacks`: wrong aggregates: ``wrong_aggregate``,
  ``scaled_aggregate``, ``swapped_aggregate``;
- :mod:`attacks.protocol_attacks`: messages and timing: ``bad_commitment``, ``equivocate``,
  ``false_accusation``, ``withhold_reveal``, ``replay``, ``late``.

A user's own attack loads by import path: ``attack.name: mypkg.mymodule:MyAttack``.
"""

from attacks.base import Attack, FalseClaim
from attacks.context import AttackContext
from attacks.registry import (
    ATTACKS,
    GRADIENT_ATTACKS,
    UnknownAttack,
    attack_class,
    choose_attackers,
    make_attack,
)

__all__ = ["ATTACKS", "GRADIENT_ATTACKS", "Attack", "AttackContext", "FalseClaim", "UnknownAttack",
           "attack_class", "choose_attackers", "make_attack"]
