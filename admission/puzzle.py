"""The memory-hard admission puzzle (design §5.2): what a joiner pays for one identity.

The puzzle
----------
A :class:`Challenge` names the job, the joiner's Ed25519 public key, the step it was
issued at, the job's shared seed r_t at that step, a random id, its difficulty and the
argon2id parameters. One *evaluation* of nonce ``n`` is::

    cb     = canonical_bytes(challenge)            # sorted-key compact ASCII JSON
    salt   = sha256(b"btard-puzzle-v1\\0" || cb)[:16]
    digest = argon2id(password = cb || n as 8 bytes big-endian, salt, opslimit, memlimit)  # 32 bytes

and ``n`` solves the challenge iff ``int(digest[:8], big endian) < target(k)`` with
``target(k) = floor(2**64 / k)``, k = ``expected_evaluations``. Digests behave as
independent uniform draws, so every nonce succeeds with probability 1/k and the number of
evaluations a solver needs is geometric with mean k. Verification costs exactly one
evaluation (:func:`verify`).

The difficulty is set so that a solution costs α gradients (:func:`difficulty`)::

    k = max(1, α · gradient_seconds / evaluation_seconds)

Why argon2id
------------
argon2id is memory-hard: every evaluation fills ``memlimit`` bytes and reads them back in
a data-dependent order, so its cost is bounded below by memory capacity × bandwidth
rather than by arithmetic. A GPU or ASIC that computes sha256 thousands of times faster
than a CPU gains only the ratio of its memory bandwidth on argon2id, so the price of an
identity stays close to what the honest peers measured. A larger ``memlimit`` strengthens
this at the price of a slower evaluation (and so of a slower verification); the
difficulty adapts, since k is computed from the measured evaluation time.

Sybil bound (design §5.4)
-------------------------
A solution costs α gradients in expectation. An attacker with a compute budget of B
gradients per step therefore gains at most about B/α identities per step (on average;
the count over many steps concentrates around that by the law of large numbers).
Work cannot be moved in time to beat this:

* not *ahead*: a challenge is bound to the shared seed r_t at issue time (r_t is
  unpredictable before step t: it is derived from every peer's committed reveal) and to
  a random id chosen by the controller, so nothing can be solved before it is issued,
  and anyone can check from the ledger that it was issued at step t;
* not *stockpiled*: it expires after ``expires_step`` and is single-use, so a burst of
  admissions within any window of W = expiry_steps + 1 steps is bounded by B·W/α;
* not *stolen*: it is bound to the joiner's public key, and the solution message must be
  signed by that key, so solving for one key gives nothing for another.

Every verification the controller runs on an attacker's nonce is also a free lottery
ticket (probability 1/k), which is why :mod:`admission.book` caps the verifications per
challenge and why the controller rate-limits challenges.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from typing import Any

from nacl.pwhash import argon2id

DOMAIN_TAG = b"btard-puzzle-v1\0"
DIGEST_BYTES = 32
NONCE_LIMIT = 2**64  # nonces are 8 bytes big-endian: 0 <= nonce < 2**64
TARGET_SPACE = 2**64  # the digest prefix compared with the target is 8 bytes
CHALLENGE_ID_HEX = 32  # 16 random bytes
PUBLIC_KEY_HEX = 64  # an Ed25519 public key


class PuzzleError(ValueError):
    """A malformed challenge, parameter or nonce; the message is one line naming the problem."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_hex(value: Any, length: int | None = None) -> bool:
    """Lowercase hex (one spelling per value, so equal challenges encode equally)."""
    if not isinstance(value, str) or not value or len(value) % 2 or value != value.lower():
        return False
    if length is not None and len(value) != length:
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class PuzzleParams:
    """argon2id cost parameters: passes over memory (``opslimit``) and bytes of memory (``memlimit``).

    Must lie within PyNaCl's bounds (``argon2id.OPSLIMIT_MIN`` = 1, ``MEMLIMIT_MIN`` =
    8 KiB). The default, 1 pass over 8 MiB, takes about 10 ms on a current CPU core.
    """

    opslimit: int = 1
    memlimit: int = 8 * 1024 * 1024

    def __post_init__(self) -> None:
        for name, low, high in (("opslimit", argon2id.OPSLIMIT_MIN, argon2id.OPSLIMIT_MAX),
                                ("memlimit", argon2id.MEMLIMIT_MIN, argon2id.MEMLIMIT_MAX)):
            value = getattr(self, name)
            if not _is_int(value):
                raise PuzzleError(f"{name} must be an int, got {type(value).__name__}")
            if not low <= value <= high:
                raise PuzzleError(f"{name} {value} is outside argon2id's bounds [{low}, {high}]")


def target(expected_evaluations: float) -> int:
    """``floor(2**64 / expected_evaluations)`` clamped to [1, 2**64], computed exactly.

    A digest whose first 8 bytes (big endian) are below it solves the puzzle, which
    happens with probability target / 2**64 ≈ 1 / expected_evaluations.
    """
    if not isinstance(expected_evaluations, (int, float)) or isinstance(expected_evaluations, bool):
        raise PuzzleError(f"expected_evaluations must be a number, got {type(expected_evaluations).__name__}")
    if not math.isfinite(expected_evaluations) or expected_evaluations <= 0:
        raise PuzzleError(f"expected_evaluations must be finite and > 0, got {expected_evaluations!r}")
    ratio = Fraction(expected_evaluations)  # exact: no float rounding near the boundary
    return max(1, min(TARGET_SPACE, (TARGET_SPACE * ratio.denominator) // ratio.numerator))


@dataclass(frozen=True)
class Challenge:
    """One admission puzzle, bound to a key, a job, a step and that step's shared seed.

    ``public_key``: the joiner's Ed25519 key, 64 lowercase hex; ``seed``: lowercase hex of
    r_t at ``step``; ``challenge_id``: 32 lowercase hex (random); ``expected_evaluations``
    (k >= 1, stored as float); argon2id ``opslimit``/``memlimit``; ``expires_step`` >=
    ``step``: the last step at which a solution is accepted. Every field is covered by the
    puzzle, so changing any of them invalidates a solution. Raises :class:`PuzzleError`
    on a malformed field.
    """

    job: str
    public_key: str
    step: int
    seed: str
    challenge_id: str
    expected_evaluations: float
    opslimit: int
    memlimit: int
    expires_step: int

    def __post_init__(self) -> None:
        if not isinstance(self.job, str) or not self.job:
            raise PuzzleError("challenge job must be a non-empty string")
        if not _is_hex(self.public_key, PUBLIC_KEY_HEX):
            raise PuzzleError(f"challenge public_key must be {PUBLIC_KEY_HEX} lowercase hex characters")
        if not _is_hex(self.seed):
            raise PuzzleError("challenge seed must be non-empty lowercase hex")
        if not _is_hex(self.challenge_id, CHALLENGE_ID_HEX):
            raise PuzzleError(f"challenge_id must be {CHALLENGE_ID_HEX} lowercase hex characters")
        for name in ("step", "expires_step"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise PuzzleError(f"challenge {name} must be an int >= 0, got {value!r}")
        if self.expires_step < self.step:
            raise PuzzleError(f"challenge expires_step {self.expires_step} is before its step {self.step}")
        k = self.expected_evaluations
        if not isinstance(k, (int, float)) or isinstance(k, bool) or not math.isfinite(k) or k < 1:
            raise PuzzleError(f"challenge expected_evaluations must be a finite number >= 1, got {k!r}")
        # one spelling per value: 4 and 4.0 are the same difficulty, and must encode the same
        object.__setattr__(self, "expected_evaluations", float(k))
        PuzzleParams(self.opslimit, self.memlimit)  # validates both

    @classmethod
    def create(cls, job: str, public_key: str, step: int, seed: bytes, *, expected_evaluations: float,
               params: PuzzleParams, expires_step: int) -> Challenge:
        """A new challenge with a fresh random ``challenge_id`` (16 bytes from the OS CSPRNG)."""
        if not isinstance(seed, (bytes, bytearray)) or not seed:
            raise PuzzleError("the shared seed must be non-empty bytes")
        return cls(job=job, public_key=public_key, step=step, seed=bytes(seed).hex(),
                   challenge_id=secrets.token_hex(CHALLENGE_ID_HEX // 2),
                   expected_evaluations=expected_evaluations, opslimit=params.opslimit,
                   memlimit=params.memlimit, expires_step=expires_step)

    @property
    def params(self) -> PuzzleParams:
        return PuzzleParams(self.opslimit, self.memlimit)

    def to_dict(self) -> dict[str, Any]:
        """The challenge as a plain JSON dict; inverse of :meth:`from_dict`."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Challenge:
        """Rebuild a challenge from :meth:`to_dict`. PuzzleError on a missing, extra or wrong-typed field."""
        if not isinstance(data, Mapping):
            raise PuzzleError(f"a challenge must be a dict, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        missing, extra = sorted(names - set(data)), sorted(str(k) for k in set(data) - names)
        if missing or extra:
            raise PuzzleError(f"not a challenge dict (missing {missing}, unexpected {extra})")
        return cls(**{name: data[name] for name in names})

    def canonical_bytes(self) -> bytes:
        """``json.dumps(to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)``
        as ASCII bytes (hence also UTF-8): the bytes every evaluation hashes.

        Deterministic: the fields are all str, int, or a finite float (written by
        ``float.__repr__``, which round-trips), so a challenge rebuilt by
        :meth:`from_dict` encodes to the same bytes.
        """
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                          allow_nan=False).encode("ascii")


def _check_nonce(nonce: Any) -> int:
    if not _is_int(nonce) or not 0 <= nonce < NONCE_LIMIT:
        raise PuzzleError(f"nonce must be an int with 0 <= nonce < 2**64, got {nonce!r}")
    return nonce


def _salt(canonical: bytes) -> bytes:
    return hashlib.sha256(DOMAIN_TAG + canonical).digest()[: argon2id.SALTBYTES]


def evaluate(challenge: Challenge, nonce: int) -> bytes:
    """One puzzle evaluation: the 32-byte digest
    ``argon2id(cb || nonce.to_bytes(8, "big"), sha256(b"btard-puzzle-v1\\0" || cb)[:16], opslimit, memlimit)``
    with ``cb = challenge.canonical_bytes()``. PuzzleError unless 0 <= nonce < 2**64."""
    _check_nonce(nonce)
    canonical = challenge.canonical_bytes()
    return argon2id.kdf(DIGEST_BYTES, canonical + nonce.to_bytes(8, "big"), _salt(canonical),
                        opslimit=challenge.opslimit, memlimit=challenge.memlimit)


def meets_target(challenge: Challenge, digest: bytes) -> bool:
    """``int.from_bytes(digest[:8], "big") < target(challenge.expected_evaluations)``."""
    if not isinstance(digest, (bytes, bytearray)) or len(digest) < 8:
        raise PuzzleError("a digest must be at least 8 bytes")
    return int.from_bytes(digest[:8], "big") < target(challenge.expected_evaluations)


@dataclass(frozen=True)
class Solution:
    """A solving ``nonce``, its ``digest`` (hex), how many ``evaluations`` it took and how long."""

    nonce: int
    digest: str
    evaluations: int
    seconds: float


def solve(challenge: Challenge, *, start: int = 0, max_evaluations: int | None = None,
          on_evaluation: Callable[[int], None] | None = None) -> Solution:
    """Try nonces ``start``, ``start + 1``, … until one meets the target.

    Takes k = ``expected_evaluations`` evaluations on average (geometric). Calls
    ``on_evaluation(count)`` after each evaluation (count = evaluations so far). Raises
    PuzzleError("no solution within N evaluations") once ``max_evaluations`` (None: no
    limit) evaluations, or the nonce space, are used up.
    """
    _check_nonce(start)
    if max_evaluations is not None and (not _is_int(max_evaluations) or max_evaluations < 1):
        raise PuzzleError(f"max_evaluations must be None or an int >= 1, got {max_evaluations!r}")
    limit = NONCE_LIMIT - start if max_evaluations is None else min(max_evaluations, NONCE_LIMIT - start)
    bound = target(challenge.expected_evaluations)
    canonical = challenge.canonical_bytes()  # encode and salt once, not per nonce
    salt = _salt(canonical)
    began = time.perf_counter()
    for count in range(1, limit + 1):
        nonce = start + count - 1
        digest = argon2id.kdf(DIGEST_BYTES, canonical + nonce.to_bytes(8, "big"), salt,
                              opslimit=challenge.opslimit, memlimit=challenge.memlimit)
        if on_evaluation is not None:
            on_evaluation(count)
        if int.from_bytes(digest[:8], "big") < bound:
            return Solution(nonce=nonce, digest=digest.hex(), evaluations=count,
                            seconds=time.perf_counter() - began)
    raise PuzzleError(f"no solution within {limit} evaluations")


def verify(challenge: Challenge, nonce: int) -> bool:
    """True iff ``nonce`` solves ``challenge``. Costs exactly one puzzle evaluation; a nonce
    that is not an int in [0, 2**64) is no solution (False, without evaluating)."""
    try:
        _check_nonce(nonce)
    except PuzzleError:
        return False
    return meets_target(challenge, evaluate(challenge, nonce))


def difficulty(alpha: float, gradient_seconds: float, evaluation_seconds: float) -> float:
    """Expected evaluations ``k = max(1, alpha * gradient_seconds / evaluation_seconds)``, so
    that a solution costs ``alpha`` gradients in expectation (never less than one evaluation).
    PuzzleError for a non-positive or non-finite input."""
    for name, value in (("alpha", alpha), ("gradient_seconds", gradient_seconds),
                        ("evaluation_seconds", evaluation_seconds)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
            raise PuzzleError(f"{name} must be a finite number > 0, got {value!r}")
    k = alpha * gradient_seconds / evaluation_seconds
    if not math.isfinite(k):
        raise PuzzleError(f"difficulty overflows: alpha * gradient_seconds / evaluation_seconds = {k!r}")
    return max(1.0, float(k))


def measure_evaluation_seconds(params: PuzzleParams = PuzzleParams(), repeats: int = 3) -> float:
    """Median wall time (seconds) of one evaluation with ``params`` on this machine, over
    ``repeats`` evaluations of a throwaway challenge (the median ignores a cold first one)."""
    if not _is_int(repeats) or repeats < 1:
        raise PuzzleError(f"repeats must be an int >= 1, got {repeats!r}")
    probe = Challenge(job="measure", public_key="00" * 32, step=0, seed="00" * 32, challenge_id="00" * 16,
                      expected_evaluations=1.0, opslimit=params.opslimit, memlimit=params.memlimit,
                      expires_step=0)
    times = []
    for nonce in range(repeats):
        began = time.perf_counter()
        evaluate(probe, nonce)
        times.append(time.perf_counter() - began)
    return statistics.median(times)
