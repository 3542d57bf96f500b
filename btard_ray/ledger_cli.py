"""``btard ledger``: list, show, export and verify a ban ledger (a typer sub-app).

Which ledger: ``--db`` takes a run directory, a database file or a SQLAlchemy URL; without
it, the most recently written ``runs/*/ledger.db`` under the current directory.

Exit codes: 0 success; 1 ``verify`` found a problem (or ``show`` found no events for the
peer); 2 the ledger cannot be used (missing, not a ledger, unreachable) or a bad option.
Every error is one line on stderr; ``verify`` prints its verdict on stdout.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Any, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape as _escape  # ledger content and paths may hold square brackets
from rich.table import Table

from btard_ray import verdicts  # noqa: F401,E402  - registers the "tally" recomputer for verify --recompute

from btard_ray.ledger import EVENT_KINDS, EVIDENCE_KEYS, Event, Ledger, LedgerError
from btard_ray.ledger.store import DEFAULT_DB_NAME

ledger_app = typer.Typer(
    name="ledger",
    help=(
        "Inspect and audit the ban ledger: list events, show one peer's history, export, "
        "and verify the hash chain, the signed head and every signed piece of evidence.\n\n"
        "Example:  btard ledger verify --db runs/quickstart-20260101-120000"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

RUNS_DIR = Path("runs")

DB_OPT = typer.Option(
    None,
    "--db",
    help="The ledger: a run directory, a .db file or a SQLAlchemy URL. Default: the newest runs/*/ledger.db.",
    metavar="PATH|URL",
    show_default=False,
)
JSON_OPT = typer.Option(False, "--json", help="Print one JSON array of events instead of a table.")


class ExportFormat(str, Enum):
    jsonl = "jsonl"
    json = "json"


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"[bold red]error:[/] {_escape(message)}")
    raise typer.Exit(code)


def _default_db() -> str:
    """The most recently modified ``runs/*/ledger.db`` (exit 2 when there is none)."""
    candidates = []
    if RUNS_DIR.is_dir():
        candidates = [p / DEFAULT_DB_NAME for p in RUNS_DIR.iterdir() if (p / DEFAULT_DB_NAME).is_file()]
    if not candidates:
        _fail("no ledger found; pass --db", 2)
    newest = max(candidates, key=lambda p: (p.stat().st_mtime, str(p)))
    err.print(f"[dim]ledger: {_escape(str(newest))}[/]")
    return str(newest)


def _open(db: Optional[str]) -> Ledger:
    try:
        return Ledger(db if db is not None else _default_db(), create=False)
    except LedgerError as exc:
        _fail(str(exc), 2)


def _short(peer: Optional[str]) -> str:
    """A hex key shortened for tables; labels are shown as they are."""
    if peer is None:
        return "-"
    if len(peer) == 64 and all(c in "0123456789abcdef" for c in peer):
        return peer[:12] + "…"
    return peer


def _summary(details: dict[str, Any], width: int = 70) -> str:
    """One line of details: signed-message lists as counts, other values as compact JSON."""
    parts = []
    for key in sorted(details):
        value = details[key]
        if key in EVIDENCE_KEYS and isinstance(value, list):
            parts.append(f"{key}: {len(value)} signed")
        elif isinstance(value, str):
            parts.append(f"{key}={_short(value)}")
        else:
            text = json.dumps(value, separators=(",", ":"))
            parts.append(f"{key}={text if len(text) <= 24 else text[:23] + '…'}")
    line = "; ".join(parts)
    return line if len(line) <= width else line[: width - 1] + "…"


def _table(events: list[Event], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("seq", justify="right", no_wrap=True)
    table.add_column("step", justify="right", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("peer", no_wrap=True)
    table.add_column("reason", overflow="fold", min_width=10)
    table.add_column("details", overflow="fold", min_width=16)
    table.add_column("UTC", no_wrap=True)
    for ev in events:
        table.add_row(str(ev.seq), str(ev.step), ev.kind, _escape(_short(ev.peer)), _escape(ev.reason or ""),
                      _escape(_summary(ev.details)), ev.created_at[5:19].replace("T", " "))
    return table


def _print_events(events: list[Event], as_json: bool, title: str) -> None:
    if as_json:
        sys.stdout.write(json.dumps([ev.to_dict() for ev in events], indent=2) + "\n")
    elif not events:
        out.print(f"{_escape(title)}: no events")
    else:
        out.print(_table(events, title))


@ledger_app.command("list")
def list_events(
    db: Optional[str] = DB_OPT,
    as_json: bool = JSON_OPT,
    kind: list[str] = typer.Option(
        [], "--kind", "-k", metavar="KIND",
        help=f"Only events of this kind (repeatable): {', '.join(sorted(EVENT_KINDS))}.",
    ),
) -> None:
    """List the ledger's events in chain order.

    With --json: exactly one JSON array of events (seq, job, step, kind, peer, reason, details, created_at, hashes).

    Example:  btard ledger list --kind banned --kind verdict
    """
    unknown = sorted(set(kind) - EVENT_KINDS)
    if unknown:
        _fail(f"unknown event kind {', '.join(unknown)} (known: {', '.join(sorted(EVENT_KINDS))})", 2)
    with _open(db) as ledger:
        try:
            events = ledger.events(kinds=set(kind) or None)
        except LedgerError as exc:
            _fail(str(exc), 2)
        title = f"ledger {ledger.display_url}"
    _print_events(events, as_json, title)


@ledger_app.command()
def show(
    peer: str = typer.Argument(
        ..., show_default=False,
        help="The peer's label or hex public key; a unique prefix of at least 4 characters is enough.",
    ),
    db: Optional[str] = DB_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Show one peer's history: admission, probation, accusations, verdicts, ban or departure.

    Exits 1 when the ledger has no event about the peer.

    Example:  btard ledger show 3fa1c2d4 --db runs/quickstart-20260101-120000
    """
    with _open(db) as ledger:
        try:
            events = ledger.peer_history(peer)
            if not events and len(peer) >= 4:
                matches = [p for p in ledger.peers() if p.startswith(peer)]
                if len(matches) > 1:
                    _fail(f"peer prefix {peer!r} is ambiguous: {', '.join(_short(m) for m in matches[:5])}", 2)
                if matches:
                    peer = matches[0]
                    events = ledger.peer_history(peer)
        except LedgerError as exc:
            _fail(str(exc), 2)
    if not events:
        err.print(f"no events for peer {_escape(peer)}")
        raise typer.Exit(1)
    _print_events(events, as_json, f"peer {peer}")


@ledger_app.command()
def export(
    db: Optional[str] = DB_OPT,
    out_file: Optional[Path] = typer.Option(
        None, "--out", "-o", help="File to write. Default: standard output.", show_default=False
    ),
    fmt: ExportFormat = typer.Option(
        ExportFormat.jsonl, "--format", "-f",
        help="jsonl: one event per line. json: one document with the signed head and all events.",
    ),
) -> None:
    """Export every event (with its hashes and evidence) for archiving or offline audit.

    Example:  btard ledger export --format json --out ledger.json
    """
    with _open(db) as ledger:
        try:
            count = ledger.export(out_file if out_file is not None else sys.stdout, fmt.value)
        except LedgerError as exc:
            _fail(str(exc), 2)
        except OSError as exc:
            _fail(f"cannot write {out_file}: {exc.strerror}", 2)
    if out_file is not None:
        err.print(f"wrote {count} events to {_escape(str(out_file))}")


@ledger_app.command()
def verify(
    db: Optional[str] = DB_OPT,
    recompute: bool = typer.Option(
        False, "--recompute",
        help="Also re-check every verdict that carries a recompute spec (see btard_ray/ledger/recompute.py).",
    ),
    key: Optional[str] = typer.Option(
        None, "--key", metavar="HEX", show_default=False,
        help="The job's public key (64 hex): fail unless the chain head is signed by it.",
    ),
    allow_unsigned: bool = typer.Option(
        False, "--allow-unsigned", help="Accept a ledger whose chain head was written without a job key."
    ),
) -> None:
    """Verify the ledger: the hash chain, the signed head, and every signed message kept as evidence.

    Exit 0: "ledger OK". Exit 1: one line naming the first bad row (modified, inserted, deleted, bad signature).

    Example:  btard ledger verify --db runs/quickstart-20260101-120000 --recompute
    """
    with _open(db) as ledger:
        try:
            report = ledger.verify(key, require_signature=not allow_unsigned, recompute=recompute)
        except ValueError as exc:
            _fail(str(exc), 2)
        except LedgerError as exc:
            _fail(str(exc), 2)
    if not report.ok:
        out.print(f"ledger FAILED: {_escape(report.problem)}")
        raise typer.Exit(1)
    if report.events_checked == 0:
        out.print("ledger OK: 0 events (empty ledger)")
        return
    signer = (f"chain head signed by {report.head_public_key[:16]}…" if report.head_public_key
              else "chain head NOT signed")
    extra = f", {report.recomputed} verdict(s) re-checked" if recompute else ""
    out.print(f"ledger OK: {report.events_checked} events, {signer}{extra}")
