"""The ledger's two tables (SQLAlchemy 2.0 ORM): the event chain and its signed head.

``btard_ledger_events`` is append-only: one row per event, each chained to the previous
one by ``prev_hash`` (see :mod:`btard_ray.ledger.chain`). ``btard_ledger_head`` holds a
single row (id 1): the seq and hash of the last event, signed by the job key. It is the
one row that is ever updated; the signature is what stops someone with write access to
the database from rewriting the whole chain with fresh hashes.

``details`` is stored as canonical JSON text (see :func:`btard_ray.messages.canonical_json`).
Signed messages are kept in it as :meth:`Message.to_dict` dicts under the keys listed in
:data:`EVIDENCE_KEYS` ("evidence": the accusation and the disputed messages, "votes": the
judges' signed votes); the ledger refuses to store, and verification fails on, anything
there that is not a validly signed message of the same job.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import CheckConstraint, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: What can happen to a peer, or to the job, in the order of a peer's life. ``job_resumed``:
#: the job's driver restarted from a checkpoint (``btard resume``); its details name the
#: step, the checkpoint's chain head and the membership's new public keys.
EVENT_KINDS: frozenset[str] = frozenset({
    "job_started", "admitted", "probation_passed", "probation_failed", "promoted",
    "accused", "verdict", "banned", "left", "dropped", "job_resumed", "job_finished",
    "admission_rejected",
})

#: Keys of ``details`` that hold lists of signed messages (as ``Message.to_dict`` dicts).
EVIDENCE_KEYS: tuple[str, ...] = ("evidence", "votes")

EVENTS_TABLE = "btard_ledger_events"
MAX_LABEL = 200  # longest job or peer name (a VARCHAR on PostgreSQL; checked on append everywhere)
HEAD_TABLE = "btard_ledger_head"


class Base(DeclarativeBase):
    """Declarative base of the ledger's tables (kept apart from any other metadata)."""


class Event(Base):
    """One ledger event. Every column but ``id`` and ``hash`` is covered by ``hash``.

    ``seq`` is the 0-based position in the chain; ``peer`` a peer's label or hex public
    key (None for job-level events); ``created_at`` a UTC ISO-8601 string;
    ``details_json`` the canonical JSON text of the details (parsed: :attr:`details`).
    """

    __tablename__ = EVENTS_TABLE

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(Integer, unique=True, nullable=False)
    job: Mapped[str] = mapped_column(String(MAX_LABEL), nullable=False, index=True)
    step: Mapped[int] = mapped_column(Integer, nullable=False)
    kind: Mapped[str] = mapped_column(String(32), nullable=False, index=True)
    peer: Mapped[str | None] = mapped_column(String(MAX_LABEL), nullable=True, index=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    details_json: Mapped[str] = mapped_column("details", Text, nullable=False, default="{}")
    created_at: Mapped[str] = mapped_column(String(40), nullable=False)
    prev_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False)

    @property
    def details(self) -> dict[str, Any]:
        """The details, parsed (a fresh dict on every access; changing it changes nothing)."""
        return json.loads(self.details_json)

    def hashed_fields(self) -> dict[str, Any]:
        """The fields that :func:`btard_ray.ledger.chain.event_hash` covers (details parsed)."""
        return {"seq": self.seq, "job": self.job, "step": self.step, "kind": self.kind, "peer": self.peer,
                "reason": self.reason, "details": self.details, "created_at": self.created_at}

    def to_dict(self) -> dict[str, Any]:
        """The event as plain JSON (what ``btard ledger list --json`` and export print)."""
        return {**self.hashed_fields(), "prev_hash": self.prev_hash, "hash": self.hash}

    def __repr__(self) -> str:
        return f"Event(seq={self.seq}, step={self.step}, kind={self.kind!r}, peer={self.peer!r})"


class ChainHead(Base):
    """The last event's seq and hash, signed by the job key (a single row, id = 1).

    ``signature`` is the hex Ed25519 signature of
    :func:`btard_ray.ledger.chain.head_signing_bytes` (job, seq, hash) and
    ``public_key`` the hex job key it verifies under; both are None on a ledger written
    without a job identity (which ``verify`` refuses unless told to accept it).
    """

    __tablename__ = HEAD_TABLE
    __table_args__ = (CheckConstraint("id = 1", name="btard_ledger_single_head"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, default=1)
    job: Mapped[str] = mapped_column(String(MAX_LABEL), nullable=False)
    seq: Mapped[int] = mapped_column(Integer, nullable=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False)
    public_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    signature: Mapped[str | None] = mapped_column(String(128), nullable=True)

    def to_dict(self) -> dict[str, Any]:
        return {"job": self.job, "seq": self.seq, "hash": self.hash, "public_key": self.public_key,
                "signature": self.signature}
