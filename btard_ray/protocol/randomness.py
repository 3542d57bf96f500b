"""Shared randomness by commit-reveal (design §4, step 3).

Everything random that must be unpredictable when the gradients are committed, and yet the
same on every peer afterwards (the projection vectors z_j of the aggregate check, the
validators and their targets), is derived from the shared seed r_{t+1}:

    r_0     = sha256(b"btard-seed0-v1\\0" ‖ field(job) ‖ field(seed))
    r_{t+1} = sha256(b"btard-seed-v1\\0" ‖ r_t ‖ field(count) ‖ item_1 ‖ … ‖ item_n)
    item_i  = b"\\x01" ‖ field(nonce_i)   if peer i revealed,
              b"\\x00"                     if it withheld its reveal (the fixed marker)

with the reveals in peer order (the step's membership order) and ``field`` the length
prefix of :func:`~btard_ray.protocol.commitments.length_prefixed`.

Why this is unpredictable: every peer committed to the digest of its nonce in step 1,
before anyone revealed, so no peer can choose its nonce after seeing the others. As long
as one honest peer's 32 random bytes go in, r_{t+1} is uniform to everybody else. The one
lever left is the last revealer's choice between revealing and withholding (two possible
seeds); withholding is therefore an accusation in the protocol, and the withheld marker
makes the seed still well defined so that the step can go on.

Numbers for generators are drawn from the seed by :func:`derive_int`, domain-separated by
a label, so that the projection vectors and the validator draw are independent.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Sequence

from .commitments import length_prefixed, nonce_digest

__all__ = ["SEED_BYTES", "check_reveal", "derive_int", "initial_seed", "next_seed"]

#: Length of a shared seed r_t (a sha256 digest).
SEED_BYTES = 32
SEED0_TAG = b"btard-seed0-v1\0"
SEED_TAG = b"btard-seed-v1\0"
DERIVE_TAG = b"btard-derive-v1\0"
_REVEALED = b"\x01"
_WITHHELD = b"\x00"


def _check_seed(name: str, value: bytes) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != SEED_BYTES:
        got = f"{len(value)} bytes" if isinstance(value, (bytes, bytearray)) else type(value).__name__
        raise ValueError(f"{name} must be {SEED_BYTES} bytes, got {got}")
    return bytes(value)


def _int_field(value: int) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    return str(value).encode("ascii")


def initial_seed(job: str, seed: int) -> bytes:
    """r_0 = sha256(b"btard-seed0-v1\\0" ‖ field(utf8(job)) ‖ field(decimal(seed))), 32 bytes.

    Public and predictable by design: it only seeds step 0, whose commitments all precede
    its first reveal.
    """
    if not isinstance(job, str):
        raise ValueError(f"job must be a string, got {type(job).__name__}")
    return hashlib.sha256(SEED0_TAG + length_prefixed(job.encode("utf-8"), _int_field(seed))).digest()


def next_seed(prev: bytes, reveals: Sequence[bytes | None]) -> bytes:
    """r_{t+1} = H(r_t ‖ reveals in peer order); ``None`` is a withheld reveal.

    r_{t+1} = sha256(b"btard-seed-v1\\0" ‖ r_t ‖ field(count) ‖ item_1 ‖ … ‖ item_n), item_i =
    b"\\x01" ‖ field(nonce_i) for a reveal and the one byte b"\\x00" for a withheld one.
    The tag bytes before every item keep a withheld reveal distinct from any revealed
    nonce (the empty one included), and the count and length prefixes keep the encoding
    injective: every reveal, its position and the number of reveals change the result.
    """
    prev = _check_seed("prev", prev)
    items = [length_prefixed(str(len(reveals)).encode("ascii"))]
    for i, reveal in enumerate(reveals):
        if reveal is None:
            items.append(_WITHHELD)
        elif isinstance(reveal, (bytes, bytearray)):
            items.append(_REVEALED + length_prefixed(bytes(reveal)))
        else:
            raise ValueError(f"reveal {i} must be bytes or None, got {type(reveal).__name__}")
    return hashlib.sha256(SEED_TAG + prev + b"".join(items)).digest()


def derive_int(shared: bytes, label: str, *values: int) -> int:
    """A 63-bit integer in [0, 2⁶³) for seeding a generator, from the shared seed.

    v = first 8 bytes, big-endian, of sha256(b"btard-derive-v1\\0" ‖ shared ‖ field(label) ‖
    field(count) ‖ field(decimal(v_1)) ‖ …), shifted right by one bit. Different labels
    (``"projection"``, ``"validators"``) or values (the part index) give independent
    numbers. 63 bits so that the result is a valid non-negative int64 for any seeding API.
    """
    shared = _check_seed("shared", shared)
    if not isinstance(label, str):
        raise ValueError(f"label must be a string, got {type(label).__name__}")
    body = length_prefixed(label.encode("utf-8"), str(len(values)).encode("ascii"), *(_int_field(v) for v in values))
    digest = hashlib.sha256(DERIVE_TAG + shared + body).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def check_reveal(nonce: bytes, committed_digest: str) -> bool:
    """True iff ``nonce_digest(nonce)`` equals the committed hex digest (constant-time compare).

    A non-bytes nonce or a non-string digest is simply not a valid reveal: False.
    """
    if not isinstance(nonce, (bytes, bytearray)) or not isinstance(committed_digest, str):
        return False
    if not committed_digest.isascii():  # compare_digest refuses non-ASCII str; it is no digest anyway
        return False
    return hmac.compare_digest(nonce_digest(nonce), committed_digest.lower())
