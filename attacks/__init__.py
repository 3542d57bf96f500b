"""Byzantine behaviours as plug-ins with one small interface (:class:`attacks.base.Attack`).

Registered: ``sign_flip``, ``wrong_aggregate``, ``false_accusation``, ``bad_commitment``,
``withhold_reveal``; a user's own attack loads by import path: ``mypkg.mymodule:MyAttack``.
"""

from attacks.base import Attack, FalseClaim
from attacks.registry import ATTACKS, UnknownAttack, attack_class, choose_attackers, make_attack

__all__ = ["ATTACKS", "Attack", "FalseClaim", "UnknownAttack", "attack_class", "choose_attackers", "make_attack"]
