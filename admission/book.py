"""The admission controller's bookkeeping (design §5.1–5.2), pure: no Ray, no I/O.

:class:`AdmissionBook` issues challenges (:mod:`admission.puzzle`) bound to a joiner's
key and to the job's current step and shared seed, and checks signed ``puzzle_solution``
messages against them. The Ray actor of the admission controller wraps one book; the
job's driver feeds it the step, the shared seed and the measured cost of a gradient.

Rules
-----
* **Difficulty**: k = difficulty(alpha, gradient_seconds, evaluation_seconds), read at
  issue time (a challenge keeps the difficulty it was issued with). Until the driver
  reports a gradient cost, :data:`DEFAULT_GRADIENT_SECONDS` is assumed.
* **Single use**: a challenge admits at most once; any later solution message for it
  (the same message or a new one) is ``replayed_solution``.
* **Wrong nonces do not consume the challenge**, so an honest joiner whose message was
  garbled can resend. But each check runs one evaluation on the submitter's nonce, and
  an evaluation is a lottery ticket (it succeeds with probability 1/k) paid for by the
  controller. So a challenge is verified at most ``max_attempts`` times: the attempt
  that exhausts it burns it, and later submissions are answered ``wrong_solution``
  without evaluating. The free work an attacker can extract is then at most
  ``max_attempts / k`` expected identities per challenge issued to it, which is why the
  controller must rate-limit :meth:`AdmissionBook.issue` as well (design §5.4).
* **Expiry**: a solution is accepted while ``current step <= challenge.expires_step``
  (= issue step + ``expiry_steps``).
* **Bounded memory**: a challenge, used or not, is remembered until ``expiry_steps``
  (at least 1) steps after it expired; during that time a late solution is answered
  ``expired_solution`` and a reused one ``replayed_solution``; after it, the id is
  forgotten and answered ``unknown_challenge``. Besides, at most ``max_pending``
  challenges are remembered: past that, the oldest are forgotten first (so a flood of
  requests costs memory O(max_pending), not O(requests)).
* **Checking order** (:meth:`AdmissionBook.check`): parseable, signature valid, job and
  kind right, payload well formed (``bad_message``); challenge issued here
  (``unknown_challenge``); not used yet (``replayed_solution``); signed by the key the
  challenge was issued to (``other_key``); not expired (``expired_solution``); the nonce
  solves it (``wrong_solution``). Everything before the last check is cheap: only a
  well-formed, authentic, unexpired solution for one's own challenge costs an evaluation.
  The message's own ``step`` is not checked (a joiner may lag the driver); freshness
  comes from the challenge's expiry.

Thread-safe: one lock serialises the state, held across the evaluation so that two
concurrent copies of one solution cannot both be admitted.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from admission.puzzle import (
    NONCE_LIMIT,
    Challenge,
    PuzzleParams,
    Solution,
    difficulty,
    evaluate,
    meets_target,
    measure_evaluation_seconds,
)
from btard_ray.identity import Identity, public_key_from_hex
from btard_ray.messages import Message, MessageError, sign_message

#: Gradient cost assumed until the driver reports a measured one (seconds).
DEFAULT_GRADIENT_SECONDS = 0.01
#: Evaluations a challenge may cost the controller before it is burned.
DEFAULT_MAX_ATTEMPTS = 3
#: Challenges remembered at most (oldest forgotten first).
DEFAULT_MAX_PENDING = 100_000
SOLUTION_KIND = "puzzle_solution"

WRONG = "wrong_solution"
EXPIRED = "expired_solution"
REPLAYED = "replayed_solution"
OTHER_KEY = "other_key"
UNKNOWN = "unknown_challenge"
BAD_MESSAGE = "bad_message"
CLOSED = "closed"  # the job admits nobody (no defence to validate a probation, or admission off)
RATE_LIMITED = "rate_limited"  # too many challenges asked for in this step: ask again next step
REASONS: frozenset[str] = frozenset({WRONG, EXPIRED, REPLAYED, OTHER_KEY, UNKNOWN, BAD_MESSAGE, CLOSED, RATE_LIMITED})


class AdmissionError(Exception):
    """A refused solution or request. ``reason`` is one of :data:`REASONS`; the message is
    one line naming the problem."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown admission error reason {reason!r}")
        self.reason = reason
        self.detail = message
        super().__init__(" ".join(f"{reason}: {message}".split()))  # one line, whatever went in

    def __reduce__(self) -> tuple:
        # Ray pickles an actor's exception to its caller: rebuild it from both arguments.
        return (type(self), (self.reason, self.detail))


@dataclass
class Admission:
    """A verified solution: ``public_key`` solved ``challenge`` with ``nonce`` (``digest``
    hex), verified at ``step``; ``message`` is the signed solution message (as a dict)."""

    public_key: str
    challenge: Challenge
    nonce: int
    digest: str
    step: int
    message: dict[str, Any] = field(repr=False)

    def evidence(self) -> dict[str, Any]:
        """Ledger details for the "admitted" event, JSON-plain: ``challenge`` (its dict),
        ``nonce``, ``digest``, ``step``, and ``evidence``: a one-element list holding the
        signed solution message, under the key the ledger verifies signatures of.

        Anyone can re-check it offline: ``Challenge.from_dict(d["challenge"])``, then
        ``verify(challenge, d["nonce"])`` and the message's signature and sender.
        """
        return {"challenge": self.challenge.to_dict(), "nonce": self.nonce, "digest": self.digest,
                "step": self.step, "evidence": [dict(self.message)]}


@dataclass
class _Record:
    challenge: Challenge
    used: bool = False
    attempts: int = 0


def solution_message(identity: Identity, job: str, step: int, challenge: Challenge,
                     solution: Solution) -> dict[str, Any]:
    """The signed ``puzzle_solution`` message a joiner sends for ``solution``, as a dict:
    payload ``{"challenge_id": challenge.challenge_id, "nonce": solution.nonce}``.

    ValueError when ``job`` is not the challenge's job or ``identity`` is not the key the
    challenge was issued to (such a message would be refused anyway).
    """
    if job != challenge.job:
        raise ValueError(f"the challenge is for job {challenge.job!r}, not {job!r}")
    if identity.public_hex != challenge.public_key:
        raise ValueError(f"the challenge was issued to key {challenge.public_key[:16]}…, "
                         f"not to {identity.public_hex[:16]}…")
    payload = {"challenge_id": challenge.challenge_id, "nonce": solution.nonce}
    return sign_message(identity, job, step, SOLUTION_KIND, payload).to_dict()


def _positive(name: str, value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


class AdmissionBook:
    """Issues admission challenges and checks their solutions for one job (see the module doc).

    ``alpha``: a solution costs alpha gradients in expectation; ``expiry_steps``: a
    challenge issued at step t is accepted up to step t + expiry_steps;
    ``gradient_seconds``: the measured cost of one gradient (None: not known yet, see
    :meth:`set_gradient_seconds`); ``evaluation_seconds``: the cost of one puzzle
    evaluation (None: measured now, with :func:`measure_evaluation_seconds`).
    """

    def __init__(self, job: str, params: PuzzleParams = PuzzleParams(), *, alpha: float, expiry_steps: int,
                 gradient_seconds: float | None = None, evaluation_seconds: float | None = None,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        if not isinstance(job, str) or not job:
            raise ValueError("job must be a non-empty string")
        if not isinstance(params, PuzzleParams):
            raise TypeError(f"params must be a PuzzleParams, got {type(params).__name__}")
        for name, value, low in (("expiry_steps", expiry_steps, 0), ("max_attempts", max_attempts, 1),
                                 ("max_pending", max_pending, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        self.job = job
        self.params = params
        self.alpha = _positive("alpha", alpha)
        self.expiry_steps = expiry_steps
        self.max_attempts = max_attempts
        self.max_pending = max_pending
        self._gradient_seconds = None if gradient_seconds is None else _positive("gradient_seconds",
                                                                                 gradient_seconds)
        self.evaluation_seconds = (measure_evaluation_seconds(params) if evaluation_seconds is None
                                   else _positive("evaluation_seconds", evaluation_seconds))
        self._step: int | None = None
        self._seed: bytes | None = None
        # challenge_id -> record, in issue order (so the oldest are evicted first)
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._lock = threading.Lock()

    # -- state the driver feeds in ----------------------------------------------------------

    @property
    def step(self) -> int | None:
        """The current step (None before the first :meth:`advance`)."""
        return self._step

    def advance(self, step: int, seed: bytes) -> None:
        """Set the current step and its shared seed r_t, and forget challenges retired
        more than ``max(expiry_steps, 1)`` steps ago. The step never decreases (ValueError);
        advancing to the current step again replaces the seed."""
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        if not isinstance(seed, (bytes, bytearray)) or not seed:
            raise ValueError("seed must be non-empty bytes")
        with self._lock:
            if self._step is not None and step < self._step:
                raise ValueError(f"step {step} is before the current step {self._step}: steps never go back")
            self._step, self._seed = step, bytes(seed)
            keep = max(self.expiry_steps, 1)
            for cid in [c for c, r in self._records.items() if step > r.challenge.expires_step + keep]:
                del self._records[cid]

    @property
    def gradient_seconds(self) -> float:
        """The gradient cost used for the difficulty (the default until one is reported)."""
        return DEFAULT_GRADIENT_SECONDS if self._gradient_seconds is None else self._gradient_seconds

    def set_gradient_seconds(self, seconds: float) -> None:
        """Report the measured wall time of one gradient; later challenges use it."""
        self._gradient_seconds = _positive("gradient_seconds", seconds)

    @property
    def expected_evaluations(self) -> float:
        """The current difficulty k = difficulty(alpha, gradient_seconds, evaluation_seconds)."""
        return difficulty(self.alpha, self.gradient_seconds, self.evaluation_seconds)

    def costs(self) -> dict[str, Any]:
        """The parameters behind the difficulty, JSON-plain (for logs and the dashboard)."""
        k = self.expected_evaluations
        return {"alpha": self.alpha, "gradient_seconds": self.gradient_seconds,
                "gradient_seconds_measured": self._gradient_seconds is not None,
                "evaluation_seconds": self.evaluation_seconds, "expected_evaluations": k,
                "expected_solve_seconds": k * self.evaluation_seconds, "expiry_steps": self.expiry_steps,
                "opslimit": self.params.opslimit, "memlimit": self.params.memlimit}

    # -- challenges -------------------------------------------------------------------------

    def issue(self, public_key: str) -> Challenge:
        """A fresh challenge for ``public_key`` (64 lowercase hex) at the current step and
        seed, expiring at step + expiry_steps. AdmissionError(bad_message) for a malformed
        key; RuntimeError before the first :meth:`advance`."""
        if public_key_from_hex(public_key) is None:
            raise AdmissionError(BAD_MESSAGE, f"public key {str(public_key)[:80]!r} is not 64 lowercase hex "
                                              "characters")
        with self._lock:
            if self._step is None or self._seed is None:
                raise RuntimeError("no current step yet: the driver must call advance(step, seed) first")
            challenge = Challenge.create(self.job, public_key, self._step, self._seed,
                                         expected_evaluations=self.expected_evaluations, params=self.params,
                                         expires_step=self._step + self.expiry_steps)
            self._records[challenge.challenge_id] = _Record(challenge)
            while len(self._records) > self.max_pending:
                self._records.popitem(last=False)
        return challenge

    def pending(self) -> int:
        """How many challenges are remembered (used or not)."""
        return len(self._records)

    def check(self, raw_solution: Mapping[str, Any]) -> Admission:
        """Admit the sender of a signed ``puzzle_solution`` message dict, or raise
        AdmissionError with the reason (checked in the order of the module doc). On success
        the challenge is used up. Costs at most one puzzle evaluation."""
        try:
            msg = Message.from_dict(raw_solution)
        except MessageError as exc:
            raise AdmissionError(BAD_MESSAGE, f"not a signed message: {exc.reason}") from None
        if not msg.signature_valid():
            raise AdmissionError(BAD_MESSAGE, "the signature does not verify under the sender's key")
        if msg.job != self.job:
            raise AdmissionError(BAD_MESSAGE, f"signed for job {msg.job!r}, this is job {self.job!r}")
        if msg.kind != SOLUTION_KIND:
            raise AdmissionError(BAD_MESSAGE, f"a {msg.kind!r} message, expected {SOLUTION_KIND!r}")
        cid, nonce = _parse_payload(msg.payload)
        who = f"{msg.sender[:16]}…"
        with self._lock:
            record = self._records.get(cid)
            if record is None:
                raise AdmissionError(UNKNOWN, f"challenge {cid} was not issued by this controller "
                                              "or is long expired")
            challenge = record.challenge
            if record.used:
                raise AdmissionError(REPLAYED, f"challenge {cid} was already used to admit a peer")
            if msg.sender != challenge.public_key:
                raise AdmissionError(OTHER_KEY, f"challenge {cid} was issued to {challenge.public_key[:16]}…, "
                                                f"the solution is signed by {who}")
            current = self._step if self._step is not None else challenge.step
            if current > challenge.expires_step:
                raise AdmissionError(EXPIRED, f"challenge {cid} expired after step {challenge.expires_step}, "
                                              f"it is step {current}")
            if record.attempts >= self.max_attempts:
                raise AdmissionError(WRONG, f"challenge {cid} is burned after {self.max_attempts} wrong nonces; "
                                            "ask for a new one")
            record.attempts += 1
            digest = evaluate(challenge, nonce)  # the one evaluation verification costs
            if not meets_target(challenge, digest):
                left = self.max_attempts - record.attempts
                raise AdmissionError(WRONG, f"nonce {nonce} does not solve challenge {cid} "
                                            f"({left} attempt{'s' if left != 1 else ''} left)")
            record.used = True
        return Admission(public_key=msg.sender, challenge=challenge, nonce=nonce, digest=digest.hex(),
                         step=current, message=msg.to_dict())


def _parse_payload(payload: Mapping[str, Any]) -> tuple[str, int]:
    """``(challenge_id, nonce)`` from a solution payload; AdmissionError(bad_message) otherwise."""
    if set(payload) != {"challenge_id", "nonce"}:
        raise AdmissionError(BAD_MESSAGE, f"payload keys {sorted(map(str, payload))}, expected "
                                          "['challenge_id', 'nonce']")
    cid, nonce = payload["challenge_id"], payload["nonce"]
    if not isinstance(cid, str) or len(cid) > 64 or not cid.isprintable():
        raise AdmissionError(BAD_MESSAGE, "payload challenge_id must be a short printable string")
    if not isinstance(nonce, int) or isinstance(nonce, bool) or not 0 <= nonce < NONCE_LIMIT:
        raise AdmissionError(BAD_MESSAGE, "payload nonce must be an int with 0 <= nonce < 2**64")
    return cid, nonce
