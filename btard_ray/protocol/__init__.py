"""The pure protocol math of one BTARD-SGD step (design §4): no Ray, no I/O, only functions.

* :mod:`.commitments`: digests that bind a peer to its gradient parts and seed nonce (step 1).
* :mod:`.randomness`: the commit-reveal shared seed r_{t+1} and numbers drawn from it (step 3).
* :mod:`.projection`: the random-projection check of every aggregate and its tolerance (step 4).
* :mod:`.validation`: drawing validators and comparing re-computed gradients (step 6).

CenteredClip itself is :mod:`btard_ray.aggregation.centered_clip`; the partition of the
gradient into parts is :mod:`btard_ray.partition`.
"""

from .commitments import NONCE_BYTES, new_nonce, nonce_digest, part_digest
from .projection import (
    AggregateCheck,
    aggregate_tolerance,
    check_aggregate,
    detection_probability,
    peer_share,
    projection_vector,
)
from .randomness import SEED_BYTES, check_reveal, derive_int, initial_seed, next_seed
from .validation import GradientComparison, choose_validators, compare_gradients

__all__ = [
    "NONCE_BYTES",
    "SEED_BYTES",
    "AggregateCheck",
    "GradientComparison",
    "aggregate_tolerance",
    "check_aggregate",
    "check_reveal",
    "choose_validators",
    "compare_gradients",
    "derive_int",
    "detection_probability",
    "initial_seed",
    "new_nonce",
    "next_seed",
    "nonce_digest",
    "part_digest",
    "peer_share",
    "projection_vector",
]
