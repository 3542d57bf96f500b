"""Signed protocol messages: what a peer said, at which step of which job, provably.

Every BTARD-SGD message (design §4) is a :class:`Message` signed by its author's
Ed25519 key. The signature covers the job, the step, the kind, the sender, the payload
and a random nonce, so a message cannot be moved into another job, step or kind, and two
messages are never byte-identical. A :class:`MessageVerifier` checks all of that and also
refuses replays. Messages are kept as evidence (ledger details, accusations) as plain
dicts via :meth:`Message.to_dict` / :meth:`Message.from_dict`; anyone can re-check them
offline with :meth:`Message.signature_valid`.

Canonical encoding (what is signed)
-----------------------------------
``canonical_bytes = b"btard-msg-v1\\0" + canonical_json({job, step, kind, sender, payload, nonce})``

:func:`canonical_json` is ``json.dumps`` with sorted keys (Unicode code-point order),
no whitespace (``","`` and ``":"`` separators), ``ensure_ascii=True`` (pure ASCII output,
every non-ASCII character escaped as ``\\uXXXX``), and only these value types: dict with
str keys, list (tuples become lists), str, int, bool, None, and finite float.

Floats are written by Python's ``float.__repr__``: the shortest decimal string that reads
back to the same IEEE-754 double (correctly rounded on every platform since Python 3.1).
So parsing a stored message and encoding it again reproduces the exact signed bytes,
which is what makes offline verification deterministic. Consequences, by design:

* NaN and ±Infinity are rejected (not JSON, and NaN != NaN); send them as strings.
* ``1.0`` stays a float (``"1.0"``), distinct from the int ``1``; ``-0.0`` is kept.
* float subclasses (``numpy.float64``) are encoded as plain floats; other non-JSON
  types (bytes, numpy arrays, numpy float32/int64) are rejected with the path of the
  offending value: hex-encode bytes, call ``.tolist()`` on arrays.
* Evidence must travel through this module (or any JSON codec that keeps Python's float
  spelling and int/float distinction); a codec that rewrites ``1.0`` as ``1`` breaks it.

This is deliberately not RFC 8785 (JCS): JCS spells floats the ECMAScript way and sorts
keys by UTF-16 code units. Every verifier of btard evidence is this Python code, so
Python's spelling is the reference one.
"""

from __future__ import annotations

import copy
import hashlib
import json
import secrets
import threading
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from btard_ray.identity import Identity, public_key_from_hex, verify_signature

DOMAIN_TAG = b"btard-msg-v1\0"
NONCE_BYTES = 16

#: Every message kind, with what it carries (design §4 and §5 steps in brackets).
KIND_DOCS: dict[str, str] = {
    "commitment": "hashes of the sender's n gradient parts and of its seed nonce [§4.1]",
    "aggregate_report": "an aggregator's hash of its aggregate x_j and the n distances ||g_i[j] - x_j|| [§4.2]",
    "reveal": "the sender's seed nonce, opening its commitment [§4.3]",
    "inner_products": "s_ij = c_ij <z_j, g_i[j] - x_j> and ||g_i[j] - x_j|| for every part j [§4.4]",
    "weight_hash": "the hash of the sender's weights, every K steps [§4.5]",
    "validation": "a validator's result of re-computing its target's gradient [§4.6]",
    "accusation": "a claim that a peer misbehaved: payload['accused'] is its hex key, plus what and where [§4.7]",
    "vote": "a judge's guilty/not-guilty vote on one accusation [§4.7]",
    "verdict": "the tribunal's decision on one accusation, signed by the job key [§4.7]",
    "join_request": "a joiner's public key asking the admission controller for a puzzle [§5.1]",
    "puzzle_solution": "a joiner's solution to its admission puzzle [§5.2]",
    "leave": "a peer announcing that it leaves the job at a step boundary",
    "admin": "a request of the job's owner to the control plane, signed by the job key",
}
KINDS: frozenset[str] = frozenset(KIND_DOCS)

_FIELDS = ("job", "step", "kind", "sender", "payload", "nonce", "signature")


# -- canonical JSON ---------------------------------------------------------------------------


def _normalise(value: Any, path: str) -> Any:
    """``value`` rebuilt from plain JSON types only; ValueError naming ``path`` otherwise."""
    if value is None or value is True or value is False:
        return value
    if isinstance(value, str):
        return str.__str__(value)  # the characters themselves, also for str enums (str() gives the name)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{path} is {value!r}: NaN and infinities have no canonical JSON form")
        return float(value)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{path} has a {type(key).__name__} key {key!r}; JSON keys must be str")
            out[str(key)] = _normalise(item, f"{path}[{key!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_normalise(item, f"{path}[{i}]") for i, item in enumerate(value)]
    raise ValueError(
        f"{path} has type {type(value).__name__}, which has no canonical JSON form "
        "(hex-encode bytes, call .tolist() on arrays, float()/int() on numpy scalars)"
    )


def copy_tree(value: Any) -> Any:
    """A deep copy of a JSON-like tree, fast: dicts and lists rebuilt, str/int/float/bool/None
    shared (they are immutable), anything else (a tuple, a foreign object) copied by
    :func:`copy.deepcopy`. Equal to ``copy.deepcopy(value)`` in what it returns; used for
    every message parsed or handed out, a few hundred per step."""
    kind = type(value)
    if kind is dict:
        return {k: copy_tree(v) for k, v in value.items()}
    if kind is list:
        return [copy_tree(v) for v in value]
    if value is None or kind in (str, int, float, bool):
        return value
    return copy.deepcopy(value)


def to_json_value(value: Any, path: str = "value") -> Any:
    """A deep copy of ``value`` made of plain JSON types (tuples → lists, float subclasses →
    float). Raises ValueError naming the path of the first value with no canonical form."""
    return _normalise(value, path)


def canonical_json(value: Any, *, path: str = "value") -> bytes:
    """The canonical JSON encoding of ``value`` (see the module docstring), as ASCII bytes.

    Equal values give equal bytes whatever the order their dicts were built in, and
    ``canonical_json(json.loads(canonical_json(v))) == canonical_json(v)``. Raises
    ValueError naming the path (``path`` is the name of the root) of a value with no
    canonical form.
    """
    return _dumps(_normalise(value, path))


def _dumps(plain: Any) -> bytes:
    """:func:`canonical_json` of a value that is already made of plain JSON types."""
    return json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
                      ).encode("ascii")


# -- errors -----------------------------------------------------------------------------------


class MessageError(ValueError):
    """A message that must not be accepted. ``sender``, ``kind`` and ``step`` name it.

    Every subclass except :class:`BadSignature` and :class:`MalformedMessage` is raised
    only after the signature verified, i.e. the named sender really signed these bytes.
    """

    def __init__(self, reason: str, *, sender: str | None = None, kind: str | None = None,
                 step: int | None = None) -> None:
        self.reason = reason
        self.sender = sender
        self.kind = kind
        self.step = step
        who = f"{sender[:16]}…" if isinstance(sender, str) and len(sender) > 16 else repr(sender)
        super().__init__(f"{kind!s} message from {who} at step {step}: {reason}")

    @classmethod
    def about(cls, msg: Message, reason: str) -> MessageError:
        return cls(reason, sender=msg.sender, kind=msg.kind, step=msg.step)


class MalformedMessage(MessageError):
    """A message or dict that is not structurally a message (missing fields, wrong types)."""


class BadSignature(MessageError):
    """The signature does not verify under the sender's key (forged or modified)."""


class WrongJob(MessageError):
    """Validly signed, but for another job (a cross-job replay)."""


class WrongStep(MessageError):
    """Validly signed, but for another step than expected, or outside the replay window."""


class UnknownKind(MessageError):
    """A kind that is not in :data:`KINDS`."""


class WrongKind(MessageError):
    """A known kind, but not the one the caller expects at this point of the protocol."""


class ReplayedMessage(MessageError):
    """The same message (same signature, or same sender/kind/step/nonce) was seen before."""


# -- the message ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One signed protocol message.

    ``sender`` is the author's public key in lowercase hex; ``signature`` the hex Ed25519
    signature of :meth:`canonical_bytes`; ``nonce`` random hex that makes every message
    unique. Verification always re-encodes the current field values, so any change to a
    field (the payload dict included) after signing makes the signature fail.
    """

    job: str
    step: int
    kind: str
    sender: str
    payload: dict[str, Any]
    nonce: str
    signature: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        for name in ("job", "kind", "sender", "nonce", "signature"):
            if not isinstance(getattr(self, name), str):
                raise MalformedMessage(f"field {name!r} must be a string", sender=_str_or_none(self.sender),
                                       kind=_str_or_none(self.kind), step=None)
        if not isinstance(self.step, int) or isinstance(self.step, bool):
            raise MalformedMessage("field 'step' must be an int", sender=self.sender, kind=self.kind, step=None)
        if not isinstance(self.payload, dict):
            raise MalformedMessage("field 'payload' must be a dict", sender=self.sender, kind=self.kind,
                                   step=self.step)

    def signed_fields(self) -> dict[str, Any]:
        """Every field except the signature: what the signature covers."""
        return {"job": self.job, "step": self.step, "kind": self.kind, "sender": self.sender,
                "payload": self.payload, "nonce": self.nonce}

    def canonical_bytes(self) -> bytes:
        """``DOMAIN_TAG + canonical_json(signed_fields())``: the exact bytes that are signed.

        Raises MalformedMessage if the payload holds a value with no canonical form.
        """
        try:
            return DOMAIN_TAG + canonical_json(self.signed_fields(), path="message")
        except ValueError as exc:
            raise MalformedMessage.about(self, str(exc)) from None

    def signature_valid(self, canonical: bytes | None = None) -> bool:
        """True iff ``signature`` is the sender's signature of :meth:`canonical_bytes`. Never raises.

        ``canonical``: this message's :meth:`canonical_bytes`, when the caller has just
        computed them (for their size, say), so that they are not encoded twice.
        """
        key = public_key_from_hex(self.sender)
        if key is None or len(self.signature) != 128:
            return False
        try:
            signature = bytes.fromhex(self.signature)
            data = self.canonical_bytes() if canonical is None else canonical
        except (ValueError, MessageError):
            return False
        return verify_signature(key, data, signature)

    def digest(self) -> str:
        """sha256 hex of the canonical bytes: a stable id to cite this message by."""
        return hashlib.sha256(self.canonical_bytes()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """The message as a plain JSON-serialisable dict (a deep copy); inverse of :meth:`from_dict`."""
        return {"job": self.job, "step": self.step, "kind": self.kind, "sender": self.sender,
                "payload": copy_tree(self.payload), "nonce": self.nonce, "signature": self.signature}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Message:
        """Rebuild a message stored with :meth:`to_dict`. Checks structure only.

        Raises :class:`MalformedMessage` on missing or extra keys or wrong types; a dict
        whose values were changed still loads, and then fails :meth:`signature_valid`
        and :meth:`MessageVerifier.check`.
        """
        if not isinstance(data, Mapping):
            raise MalformedMessage(f"expected a dict, got {type(data).__name__}")
        keys = set(data)
        if keys != set(_FIELDS):
            missing = sorted(set(_FIELDS) - keys)
            extra = sorted(str(k) for k in keys - set(_FIELDS))
            raise MalformedMessage(
                f"not a message dict (missing {missing}, unexpected {extra})",
                sender=_str_or_none(data.get("sender")), kind=_str_or_none(data.get("kind")),
                step=data.get("step") if isinstance(data.get("step"), int) else None,
            )
        return cls(job=data["job"], step=data["step"], kind=data["kind"], sender=data["sender"],
                   payload=copy_tree(data["payload"]), nonce=data["nonce"], signature=data["signature"])

    @property
    def sender_key(self) -> bytes | None:
        """The sender's 32-byte public key, or None when ``sender`` is not 64 lowercase hex."""
        return public_key_from_hex(self.sender)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def sign_message(identity: Identity, job: str, step: int, kind: str, payload: Mapping[str, Any]) -> Message:
    """A new message from ``identity``, signed, with a fresh random nonce.

    The payload is copied into plain JSON types first (tuples → lists), so the returned
    message round-trips exactly through :meth:`Message.to_dict` / ``from_dict``.
    Raises :class:`UnknownKind` for a kind not in :data:`KINDS` and
    :class:`MalformedMessage` for a payload with no canonical JSON form.
    """
    sender = identity.public_hex
    if kind not in KINDS:
        raise UnknownKind(f"unknown kind (known: {', '.join(sorted(KINDS))})", sender=sender, kind=kind, step=step)
    if not isinstance(job, str) or not job:
        raise MalformedMessage("job must be a non-empty string", sender=sender, kind=kind, step=step)
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise MalformedMessage("step must be an int >= 0", sender=sender, kind=kind, step=None)
    try:
        plain = to_json_value(payload, "payload")
    except ValueError as exc:
        raise MalformedMessage(str(exc), sender=sender, kind=kind, step=step) from None
    if not isinstance(plain, dict):
        raise MalformedMessage("payload must be a dict", sender=sender, kind=kind, step=step)
    nonce = secrets.token_hex(NONCE_BYTES)
    # ``plain`` is already made of JSON types: encode it without normalising it again.
    signed = {"job": str.__str__(job), "step": int(step), "kind": str.__str__(kind), "sender": str.__str__(sender),
              "payload": plain, "nonce": nonce}
    signature = identity.sign(DOMAIN_TAG + _dumps(signed))
    return Message(job=job, step=step, kind=kind, sender=sender, payload=plain, nonce=nonce,
                   signature=signature.hex())


def signed_dict(identity: Identity, job: str, step: int, kind: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """``sign_message(...).to_dict()`` without copying the payload a second time: the new
    message's payload is a fresh copy that nothing else holds, so the dict takes it over."""
    msg = sign_message(identity, job, step, kind, payload)
    return {"job": msg.job, "step": msg.step, "kind": msg.kind, "sender": msg.sender, "payload": msg.payload,
            "nonce": msg.nonce, "signature": msg.signature}


# -- the verifier -----------------------------------------------------------------------------


class MessageVerifier:
    """Accepts a message only if it is authentic, for this job, at the expected step and
    kind, and not seen before.

    :meth:`check` runs, in this order: structure, signature (:class:`BadSignature`),
    known kind (:class:`UnknownKind`), job (:class:`WrongJob`), step
    (:class:`WrongStep`), expected kind (:class:`WrongKind`), replay
    (:class:`ReplayedMessage`). The signature comes first so that every later error is
    attributable: the named sender did sign that message. A message is remembered only
    once it passed every check, so forged messages cannot fill the replay memory.

    Replay memory is bounded by a window of steps. The verifier's *current step* is the
    highest step its owner vouched for: an ``expected_step`` passed to :meth:`check`, or
    :meth:`advance`. Signed messages never move it, so a Byzantine peer cannot push the
    window forward by signing a far-future step. Everything remembered for steps below
    ``current - window`` is forgotten, and from then on a message of such a step is
    refused as :class:`WrongStep` (it can no longer be told apart from a replay). With
    ``expected_step=None`` a message must lie within ``[current - window, current + window]``
    once a current step is known; before that any step is accepted (call :meth:`advance`
    at step boundaries if you only ever check with ``expected_step=None``).

    Memory: O(window × messages per step). Thread-safe.
    """

    def __init__(self, job: str, *, window: int = 16) -> None:
        if not isinstance(job, str) or not job:
            raise ValueError("job must be a non-empty string")
        if window < 1:
            raise ValueError("window must be >= 1 step")
        self.job = job
        self.window = window
        self._current: int | None = None
        self._seen_ids: dict[int, set[tuple[str, str, str]]] = defaultdict(set)  # step -> (sender, kind, nonce)
        self._seen_sigs: dict[int, set[str]] = defaultdict(set)  # step -> signatures
        self._lock = threading.Lock()

    @property
    def current_step(self) -> int | None:
        """The highest step vouched for by the owner (None before the first)."""
        return self._current

    def advance(self, step: int) -> None:
        """Move the current step forward to ``step`` (never backwards) and forget old steps."""
        with self._lock:
            self._advance(step)

    def _advance(self, step: int) -> None:
        if self._current is not None and step <= self._current:
            return
        self._current = step
        floor = step - self.window
        for old in [s for s in self._seen_ids if s < floor]:
            del self._seen_ids[old]
        for old in [s for s in self._seen_sigs if s < floor]:
            del self._seen_sigs[old]

    def check(self, msg: Message, expected_step: int | None, expected_kind: str | None = None,
              canonical: bytes | None = None) -> Message:
        """Return ``msg`` if it is acceptable, and remember it; raise a :class:`MessageError` otherwise.

        ``expected_step=None`` accepts any step inside the replay window (for messages
        that legitimately arrive late, e.g. accusations about an earlier step).
        ``canonical``: ``msg.canonical_bytes()`` if the caller has them (see
        :meth:`Message.signature_valid`).
        """
        if not isinstance(msg, Message):
            raise MalformedMessage(f"expected a Message, got {type(msg).__name__}")
        if expected_kind is not None and expected_kind not in KINDS:
            raise ValueError(f"expected_kind {expected_kind!r} is not a message kind")
        if not msg.signature_valid(canonical):
            raise BadSignature.about(msg, "signature does not verify under the sender's key "
                                          "(forged, or modified after signing)")
        if msg.kind not in KINDS:
            raise UnknownKind.about(msg, f"unknown kind (known: {', '.join(sorted(KINDS))})")
        if msg.job != self.job:
            raise WrongJob.about(msg, f"signed for job {msg.job!r}, this is job {self.job!r}")
        with self._lock:
            if expected_step is not None:
                if msg.step != expected_step:
                    raise WrongStep.about(msg, f"expected step {expected_step}")
                self._advance(expected_step)
            if self._current is not None:
                # also when the caller expects an old step: its replay memory may be gone
                if msg.step < self._current - self.window:
                    raise WrongStep.about(msg, f"older than the replay window ({self.window} steps before "
                                               f"the current step {self._current})")
                if expected_step is None and msg.step > self._current + self.window:
                    raise WrongStep.about(msg, f"more than {self.window} steps after the current step "
                                               f"{self._current}")
            if expected_kind is not None and msg.kind != expected_kind:
                raise WrongKind.about(msg, f"expected a message of kind {expected_kind!r}")
            ident = (msg.sender, msg.kind, msg.nonce)
            if msg.signature in self._seen_sigs[msg.step] or ident in self._seen_ids[msg.step]:
                raise ReplayedMessage.about(msg, "already received (same signature or same nonce)")
            self._seen_sigs[msg.step].add(msg.signature)
            self._seen_ids[msg.step].add(ident)
        return msg
