"""The first five behaviours, kept importable from here; they now live with their families
(:mod:`attacks.gradient_attacks`, :mod:`attacks.aggregate_attacks`,
:mod:`attacks.protocol_attacks`)."""

from attacks.aggregate_attacks import WrongAggregate
from attacks.gradient_attacks import SignFlip
from attacks.protocol_attacks import BadCommitment, FalseAccusation, WithholdReveal

__all__ = ["BadCommitment", "FalseAccusation", "SignFlip", "WithholdReveal", "WrongAggregate"]
