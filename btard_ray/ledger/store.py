"""The ban ledger: an append-only, hash-chained, head-signed event log in any SQL database.

``Ledger(url_or_path, job_identity)`` opens (and by default creates) the ledger; the job's
control plane appends events, and anyone holding the database file (or an export) can
``verify`` it offline: the chain, the head signature, and every signed message stored as
evidence. The API only ever INSERTs events; the single head row is the one row updated.

Where the ledger lives (:func:`resolve_ledger_url`):

* ``sqlite:///runs/x/ledger.db``, ``postgresql+psycopg://user@host/db`` — any SQLAlchemy
  URL, used as given;
* ``runs/x/ledger.db`` — a path to a database file (an existing file, or a path with a
  suffix) → SQLite;
* ``runs/x`` — a run directory (an existing directory, or a path without a suffix) →
  ``runs/x/ledger.db``.

One database holds one chain (``seq`` is unique), whichever jobs append to it; its head
is signed by one job key, fixed by the first signed append.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from sqlalchemy import create_engine, func, inspect, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from btard_ray.identity import Identity, public_key_from_hex, verify_signature
from btard_ray.ledger.chain import GENESIS, event_hash, head_signing_bytes
from btard_ray.ledger.models import EVENT_KINDS, EVENTS_TABLE, HEAD_TABLE, MAX_LABEL, Base, ChainHead, Event
from btard_ray.ledger.recompute import recompute_spec_name, run_recompute, signed_message_problem
from btard_ray.messages import Message, canonical_json

DEFAULT_DB_NAME = "ledger.db"
EXPORT_FORMATS = ("jsonl", "json")


class LedgerError(Exception):
    """The ledger cannot be opened, read or appended to; the message is one line."""


class LedgerNotFound(LedgerError):
    """There is no ledger where one was expected (and ``create=False``)."""


@dataclass(frozen=True)
class VerifyReport:
    """The result of :meth:`Ledger.verify`.

    ``ok``: every check passed. ``first_bad_seq``: the seq of the first row found bad
    (None when ok, or when the problem is the head's key rather than a row).
    ``problem``: one line naming that row and why ("" when ok). ``events_checked``: rows
    that passed before the walk stopped. ``head_public_key``: hex job key the head is
    signed by (None when unsigned). ``recomputed``: verdicts re-checked by a recompute
    function.
    """

    ok: bool
    first_bad_seq: int | None
    problem: str
    events_checked: int
    head_public_key: str | None = None
    recomputed: int = 0


def resolve_ledger_url(value: str | os.PathLike[str]) -> str:
    """The SQLAlchemy URL for a URL, a database file path or a run directory (see module doc).

    Raises :class:`LedgerError` for an empty value or a malformed URL.
    """
    text = os.fspath(value)
    if not text:
        raise LedgerError("no ledger location given")
    if "://" in text:
        try:
            make_url(text)
        except ArgumentError:
            raise LedgerError(f"{text!r} is not a valid database URL") from None
        return text
    path = Path(text).expanduser()
    if path.is_dir() or (not path.exists() and path.suffix == ""):
        path = path / DEFAULT_DB_NAME
    return f"sqlite:///{path.resolve()}"


def _one_line(exc: BaseException) -> str:
    """The driver's own message for a database error, without SQL or background links."""
    inner = getattr(exc, "orig", None) or exc
    text = str(inner).strip().splitlines()
    return text[0] if text else type(inner).__name__


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _plain(value: Any) -> Any:
    """``value`` with every :class:`Message` replaced by its dict (evidence may be passed as messages)."""
    if isinstance(value, Message):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _short_peer(peer: str | None) -> str:
    if peer is None:
        return "-"
    return peer[:16] + "…" if len(peer) > 20 else peer


def _row_problem(ev: Event, prev_hash: str) -> str | None:
    """Why one row breaks the chain (None if it does not), given the previous row's hash."""
    try:
        fields = ev.hashed_fields()
        recomputed_hash = event_hash(ev.prev_hash, fields)
        # byte-exact: no duplicate keys or re-spellings that another JSON reader could read differently
        canonical = canonical_json(fields["details"]).decode("ascii") == ev.details_json
    except ValueError:
        canonical = False
    if not canonical:
        return "details are not the canonical JSON the ledger writes (row modified)"
    if recomputed_hash != ev.hash:
        return "content does not match its stored hash (row modified after it was written)"
    if ev.prev_hash != prev_hash:
        link = "the genesis hash" if ev.seq == 0 else f"the hash of seq {ev.seq - 1}"
        return f"prev_hash is not {link} (row inserted or replaced)"
    return signed_message_problem(fields["details"], ev.job)


def _fail(seq: int | None, problem: str, checked: int, key: str | None = None, recomputed: int = 0) -> VerifyReport:
    return VerifyReport(False, seq, problem, checked, key, recomputed)


class Ledger:
    """An append-only ban ledger in one SQL database (see the module docstring).

    ``job_identity`` signs the chain head on every append; a ledger whose head is signed
    refuses appends without that same identity. ``create=False`` opens an existing ledger
    only (what ``btard ledger`` does), raising :class:`LedgerNotFound` for a missing
    SQLite file and :class:`LedgerError` for a database without the ledger's tables.
    Appends are serialised by a lock (thread-safe within one process); a second process
    appending concurrently makes one of the two appends fail rather than fork the chain.
    """

    def __init__(self, url_or_path: str | os.PathLike[str], job_identity: Identity | None = None,
                 *, create: bool = True) -> None:
        self.url = resolve_ledger_url(url_or_path)
        parsed = make_url(self.url)
        #: the URL with any password hidden, for messages
        self.display_url = parsed.render_as_string(hide_password=True)
        self.job_identity = job_identity
        self._lock = threading.Lock()
        kwargs: dict[str, Any] = {}
        backend = parsed.get_backend_name()
        if backend == "sqlite":
            database = parsed.database or ""
            in_memory = database in ("", ":memory:") or parsed.query.get("mode") == "memory"
            if not in_memory:
                path = Path(database)
                self.display_url = str(path)
                if not create and not path.is_file():
                    raise LedgerNotFound(f"no ledger at {path}")
                if create:
                    path.parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False}
            if in_memory:
                kwargs["poolclass"] = StaticPool  # one shared connection, or each would see its own empty db
        elif backend == "postgresql" and "connect_timeout" not in parsed.query:
            kwargs["connect_args"] = {"connect_timeout": 10}  # an unreachable host fails fast, not after minutes
        try:
            self._engine: Engine = create_engine(self.url, **kwargs)
        except ImportError as exc:
            raise LedgerError(f"cannot open ledger {self.display_url}: its database driver is not installed "
                              f"({_one_line(exc)})") from None
        except (ArgumentError, SQLAlchemyError) as exc:
            raise LedgerError(
                f"cannot open ledger {self.display_url}: {type(exc).__name__}: {_one_line(exc)}"
            ) from None
        try:
            if create:
                Base.metadata.create_all(self._engine)
            else:
                tables = set(inspect(self._engine).get_table_names())
                missing = {EVENTS_TABLE, HEAD_TABLE} - tables
                if missing:
                    absent = ", ".join(sorted(missing))
                    raise LedgerError(f"{self.display_url} is not a btard ledger (no table {absent})")
        except SQLAlchemyError as exc:
            self._engine.dispose()
            raise LedgerError(f"cannot open ledger {self.display_url}: {_one_line(exc)}") from None
        except LedgerError:
            self._engine.dispose()
            raise
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Release the database connections."""
        self._engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger({self.display_url!r})"

    @contextmanager
    def _session(self, action: str) -> Iterator[Session]:
        try:
            with self._sessions() as session:
                yield session
        except SQLAlchemyError as exc:
            raise LedgerError(f"cannot {action} ledger {self.display_url}: {_one_line(exc)}") from None

    # -- writing ------------------------------------------------------------------------------

    def append(self, job: str, step: int, kind: str, peer: str | None = None, reason: str | None = None,
               details: Mapping[str, Any] | None = None) -> Event:
        """Append one event and return it (detached from any session).

        In one transaction: seq = last seq + 1 (0 for the first), prev_hash = last hash
        (GENESIS for the first), hash = event_hash(prev_hash, fields), and the head moves
        to the new event, signed by the job identity when there is one. ``details`` must
        be JSON-serialisable (Message objects in it are stored as their dicts); signed
        messages under "evidence"/"votes" must verify and belong to ``job``, or nothing
        is written. Raises LedgerError (ValueError or TypeError for a bad argument).
        """
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown ledger event kind {kind!r} (known: {', '.join(sorted(EVENT_KINDS))})")
        if not isinstance(job, str) or not 0 < len(job) <= MAX_LABEL:
            raise ValueError(f"job must be a string of 1 to {MAX_LABEL} characters")
        if peer is not None and (not isinstance(peer, str) or not 0 < len(peer) <= MAX_LABEL):
            raise ValueError(f"peer must be None or a string of 1 to {MAX_LABEL} characters")
        if not isinstance(step, int) or isinstance(step, bool):
            raise TypeError("step must be an int")
        if reason is not None and not isinstance(reason, str):
            raise TypeError("reason must be None or a string")  # a TEXT column would hand back '5' for 5
        try:
            plain = json.loads(canonical_json(_plain(dict(details or {})), path="details"))
        except ValueError as exc:
            raise ValueError(f"details of the {kind} event cannot be stored: {exc}") from None
        problem = signed_message_problem(plain, job)
        if problem:
            raise LedgerError(f"refusing to append a {kind} event for {peer or 'the job'}: {problem}")
        identity = self.job_identity
        with self._lock:
            try:
                with self._sessions.begin() as session:
                    # FOR UPDATE serialises writers on PostgreSQL; SQLite locks the file on write anyway
                    head = session.get(ChainHead, 1, with_for_update=True)
                    last = session.scalars(select(Event).order_by(Event.seq.desc()).limit(1)).first()
                    self._check_appendable(head, last, identity)
                    seq = 0 if last is None else last.seq + 1
                    prev_hash = GENESIS if last is None else last.hash
                    created_at = _utc_now()
                    fields = {"seq": seq, "job": job, "step": step, "kind": kind, "peer": peer, "reason": reason,
                              "details": plain, "created_at": created_at}
                    digest = event_hash(prev_hash, fields)
                    event = Event(seq=seq, job=job, step=step, kind=kind, peer=peer, reason=reason,
                                  details_json=canonical_json(plain).decode("ascii"), created_at=created_at,
                                  prev_hash=prev_hash, hash=digest)
                    session.add(event)
                    if head is None:
                        head = ChainHead(id=1, job=job, seq=seq, hash=digest)
                        session.add(head)
                    head.job, head.seq, head.hash = job, seq, digest
                    if identity is not None:
                        head.public_key = identity.public_hex
                        head.signature = identity.sign(head_signing_bytes(job, seq, digest)).hex()
            except IntegrityError as exc:
                raise LedgerError(
                    f"another writer appended to {self.display_url} at the same time ({_one_line(exc)}); retry"
                ) from None
            except SQLAlchemyError as exc:
                raise LedgerError(f"cannot append to ledger {self.display_url}: {_one_line(exc)}") from None
        return event

    @staticmethod
    def _check_appendable(head: ChainHead | None, last: Event | None, identity: Identity | None) -> None:
        """Refuse to extend a chain whose head does not match its last row, or with the wrong key."""
        if (head is None) != (last is None) or (
            head is not None and last is not None and (head.seq != last.seq or head.hash != last.hash)
        ):
            raise LedgerError("the chain head does not match the last event: the ledger was modified; "
                              "run `btard ledger verify` before appending")
        if head is not None and head.public_key is not None:
            if identity is None:
                raise LedgerError(f"this ledger's head is signed by job key {head.public_key[:16]}…; "
                                  "open it with that job identity to append")
            if identity.public_hex != head.public_key:
                raise LedgerError(f"this ledger's head is signed by job key {head.public_key[:16]}…, "
                                  f"not by {identity.public_hex[:16]}…")

    # -- reading ------------------------------------------------------------------------------

    def events(self, peer: str | None = None, kinds: set[str] | frozenset[str] | None = None) -> list[Event]:
        """Events in chain order, optionally only those about ``peer`` and/or of ``kinds``."""
        stmt = select(Event).order_by(Event.seq)
        if peer is not None:
            stmt = stmt.where(Event.peer == peer)
        if kinds is not None:
            unknown = set(kinds) - EVENT_KINDS
            if unknown:
                raise ValueError(f"unknown event kind(s) {sorted(unknown)} (known: {', '.join(sorted(EVENT_KINDS))})")
            stmt = stmt.where(Event.kind.in_(sorted(kinds)))
        with self._session("read") as session:
            return list(session.scalars(stmt))

    def peer_history(self, peer: str) -> list[Event]:
        """Every event whose ``peer`` column is ``peer``, in chain order."""
        return self.events(peer=peer)

    def peers(self) -> list[str]:
        """Every distinct non-null ``peer`` value, sorted."""
        with self._session("read") as session:
            return sorted(session.scalars(select(Event.peer).where(Event.peer.is_not(None)).distinct()))

    def event_at(self, seq: int) -> Event | None:
        """The event at position ``seq`` of the chain (None when there is none)."""
        with self._session("read") as session:
            return session.scalars(select(Event).where(Event.seq == seq)).first()

    def head(self) -> ChainHead | None:
        """The chain head row (None for an empty ledger)."""
        with self._session("read") as session:
            return session.get(ChainHead, 1)

    def __len__(self) -> int:
        with self._session("read") as session:
            return int(session.scalar(select(func.count()).select_from(Event)) or 0)

    def export(self, dest: str | os.PathLike[str] | IO[str], fmt: str = "jsonl") -> int:
        """Write every event (``Event.to_dict()``) to a path or text file; return how many.

        ``jsonl``: one event per line, in chain order. ``json``: one document
        ``{"head": {...} | null, "events": [...]}``, a complete snapshot for offline audit.
        """
        if fmt not in EXPORT_FORMATS:
            raise ValueError(f"unknown export format {fmt!r} (use {' or '.join(EXPORT_FORMATS)})")
        events = [ev.to_dict() for ev in self.events()]
        if fmt == "jsonl":
            text = "".join(json.dumps(ev, sort_keys=True) + "\n" for ev in events)
        else:
            head = self.head()
            text = json.dumps({"head": head.to_dict() if head else None, "events": events}, indent=2,
                              sort_keys=True) + "\n"
        if isinstance(dest, (str, os.PathLike)):
            Path(dest).write_text(text)
        else:
            dest.write(text)
        return len(events)

    # -- auditing -----------------------------------------------------------------------------

    def verify(self, expected_public_key: bytes | str | None = None, *, require_signature: bool = True,
               recompute: bool = False) -> VerifyReport:
        """Re-walk the chain in seq order and stop at the first problem.

        Checks, per row: seq is the next integer from 0 (a gap is a deleted row, a repeat
        an inserted one); the stored hash recomputes from the row (else: modified); the
        prev_hash is the previous row's hash (else: inserted or replaced); every signed
        message in its details verifies and belongs to the row's job; with ``recompute``,
        the row's recompute spec (if any) agrees (:mod:`btard_ray.ledger.recompute`).
        Then: the head names the last row (seq and hash), its signature verifies under its
        stored job key, and that key equals ``expected_public_key`` when one is given (the
        only defence against someone who rewrote everything, head key included). An
        unsigned head fails unless ``require_signature=False``. Raises LedgerError only
        when the database cannot be read.
        """
        expected_hex = self._expected_key_hex(expected_public_key)
        checked = recomputed = 0
        prev_hash, last = GENESIS, None
        with self._session("verify") as session:
            head = session.get(ChainHead, 1)
            rows = session.scalars(select(Event).order_by(Event.seq, Event.id).execution_options(yield_per=500))
            try:
                for ev in rows:
                    if ev.seq != checked:  # rows so far are exactly seq 0 .. checked-1
                        if ev.seq > checked:
                            return _fail(checked, f"seq {checked} is missing: the next row is seq {ev.seq} "
                                                  "(row deleted)", checked)
                        return _fail(ev.seq, f"seq {ev.seq} appears more than once (row inserted)", checked)
                    problem = _row_problem(ev, prev_hash)
                    if problem is None and recompute and recompute_spec_name(ev.details) is not None:
                        problem = run_recompute(ev.to_dict())
                        if problem is None:
                            recomputed += 1
                    if problem:
                        where = f"seq {ev.seq} ({ev.kind}, step {ev.step}, peer {_short_peer(ev.peer)})"
                        return _fail(ev.seq, f"{where}: {problem}", checked, recomputed=recomputed)
                    prev_hash, last = ev.hash, ev
                    checked += 1
            finally:
                rows.close()  # a server-side cursor (PostgreSQL) left open by an early return warns
            return self._verify_head(head, last, checked, expected_hex, require_signature, recomputed)

    @staticmethod
    def _expected_key_hex(key: bytes | str | None) -> str | None:
        if key is None:
            return None
        text = key.hex() if isinstance(key, (bytes, bytearray)) else str(key).strip().lower()
        if public_key_from_hex(text) is None:
            raise ValueError("the expected job public key must be 32 bytes or 64 hex characters")
        return text

    @staticmethod
    def _verify_head(head: ChainHead | None, last: Event | None, checked: int, expected_hex: str | None,
                     require_signature: bool, recomputed: int) -> VerifyReport:
        key = head.public_key if head is not None else None
        if last is None:
            if head is not None:
                return _fail(0, f"the ledger has no events but its chain head is seq {head.seq} (rows deleted)",
                             checked, key)
            if expected_hex is not None:
                return _fail(None, "the ledger is empty: nothing is signed by the expected job key", checked)
            return VerifyReport(True, None, "", 0)
        if head is None:
            return _fail(None, "the chain head row is missing (deleted): nothing vouches for the chain", checked)
        if head.seq < last.seq:
            return _fail(head.seq + 1, f"seq {head.seq + 1} and later are not covered by the signed chain head "
                                       f"(head is seq {head.seq}): rows appended without the job key", checked, key)
        if head.seq > last.seq:
            return _fail(last.seq + 1, f"seq {last.seq + 1} is missing: the chain head is seq {head.seq} but the "
                                       f"last row is seq {last.seq} (rows deleted)", checked, key)
        if head.hash != last.hash or head.job != last.job:
            return _fail(head.seq, f"the chain head does not match seq {head.seq} (row or head replaced)",
                         checked, key)
        if head.signature is None and head.public_key is None:
            if require_signature or expected_hex is not None:
                return _fail(None, "the chain head is not signed (written without a job key, or its signature "
                                   "was stripped)", checked)
            return VerifyReport(True, None, "", checked, None, recomputed)
        public = public_key_from_hex(head.public_key or "")
        try:
            signature = bytes.fromhex(head.signature or "")
        except ValueError:
            signature = b""
        if public is None or not verify_signature(public, head_signing_bytes(head.job, head.seq, head.hash),
                                                  signature):
            who = f"{head.public_key[:16]}…" if head.public_key else "(no key)"
            return _fail(head.seq, f"the chain head signature for seq {head.seq} does not verify under the job key "
                                   f"{who} (head forged or rows rewritten)", checked, key)
        signer = head.public_key or ""  # not None here: the signature verified under it
        if expected_hex is not None and signer != expected_hex:
            return _fail(None, f"the chain head is signed by {signer[:16]}…, not by the expected job key "
                               f"{expected_hex[:16]}… (ledger rewritten under another key)", checked, key)
        return VerifyReport(True, None, "", checked, head.public_key, recomputed)
