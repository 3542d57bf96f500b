"""The ban ledger: append, read, export, and verification that catches every kind of tampering.

Real SQLite files in tmp_path (and, when BTARD_TEST_POSTGRES_URL is set, a real PostgreSQL
database too), real Ed25519 signatures, tampering done with raw SQL the way an attacker
with write access to the database would.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from btard_ray.identity import Identity
from btard_ray.ledger import Event, Ledger, LedgerError, LedgerNotFound, VerifyReport, resolve_ledger_url
from btard_ray.ledger.chain import GENESIS, event_hash, head_signing_bytes
from btard_ray.ledger.models import Base
from btard_ray.ledger.recompute import RECOMPUTERS, register_recomputer
from btard_ray.ledger_cli import ledger_app
from btard_ray.messages import canonical_json, sign_message

JOB = "job-test"
POSTGRES_ENV = "BTARD_TEST_POSTGRES_URL"
EVENTS = "btard_ledger_events"
HEAD = "btard_ledger_head"

JOB_KEY = Identity.from_seed(b"\x10" * 32)
ALICE = Identity.from_seed(b"\x11" * 32)  # honest accuser
BOB = Identity.from_seed(b"\x12" * 32)  # Byzantine aggregator
CAROL = Identity.from_seed(b"\x13" * 32)  # judge
MALLORY = Identity.from_seed(b"\x14" * 32)  # someone who does not hold the job key


# -- fixtures and helpers ----------------------------------------------------------------------


def _reset_postgres(url: str) -> None:
    engine = create_engine(url)
    try:
        Base.metadata.drop_all(engine)
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request, tmp_path) -> str:
    """A fresh, empty ledger location: a SQLite file, or the PostgreSQL database from the env."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"set {POSTGRES_ENV} to a PostgreSQL SQLAlchemy URL to run the ledger tests against it")
    _reset_postgres(url)
    yield url
    _reset_postgres(url)


@pytest.fixture
def ledger(ledger_url):
    with Ledger(ledger_url, JOB_KEY) as led:
        yield led


def _sql(url: str, statement: str, **params) -> list:
    """Run raw SQL outside the Ledger API (the attacker's view of the database)."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            result = conn.execute(text(statement), params)
            return list(result) if result.returns_rows else []
    finally:
        engine.dispose()


def _populate(led: Ledger) -> list[Event]:
    """A small but realistic history: admission, probation, an accusation, its verdict, a ban."""
    accusation = sign_message(ALICE, JOB, 3, "accusation",
                              {"accused": BOB.public_hex, "reason": "aggregate_check", "part": 1})
    report = sign_message(BOB, JOB, 3, "aggregate_report", {"part": 1, "hash": "ab" * 32, "distances": [0.5, 1.25]})
    vote = sign_message(CAROL, JOB, 3, "vote", {"accused": BOB.public_hex, "guilty": True})
    events = [
        led.append(JOB, 0, "job_started", details={"job_public_key": JOB_KEY.public_hex, "peers": 3}),
        *(led.append(JOB, 0, "admitted", peer=p.public_hex, reason="genesis peer")
          for p in (ALICE, BOB, CAROL)),
        led.append(JOB, 2, "probation_passed", peer=CAROL.public_hex),
        led.append(JOB, 3, "accused", peer=BOB.public_hex, reason="aggregate_check",
                   details={"accuser": ALICE.public_hex, "evidence": [accusation, report]}),
        led.append(JOB, 3, "verdict", peer=BOB.public_hex, reason="guilty",
                   details={"verdict": "guilty", "accused": BOB.public_hex, "accuser": ALICE.public_hex,
                            "evidence": [accusation, report], "votes": [vote], "tally": {"guilty": 1, "innocent": 0},
                            "recompute": {"name": "signature"}}),
        led.append(JOB, 4, "banned", peer=BOB.public_hex, reason="guilty of aggregate_check"),
        led.append(JOB, 9, "job_finished"),
    ]
    return events


def _seq_of(events: list[Event], kind: str) -> int:
    return next(ev.seq for ev in events if ev.kind == kind)


def _rows(url: str) -> list[dict]:
    return [dict(r._mapping) for r in _sql(url, f"SELECT * FROM {EVENTS} ORDER BY seq")]


def _rechain(url: str, from_seq: int, signer: Identity | None) -> None:
    """Recompute every hash from ``from_seq`` on and re-sign the head: what someone holding
    the job key (a dishonest job owner) could do after editing a row."""
    rows = _rows(url)
    prev = GENESIS if from_seq == 0 else rows[from_seq - 1]["hash"]
    for row in rows[from_seq:]:
        fields = {k: row[k] for k in ("seq", "job", "step", "kind", "peer", "reason", "created_at")}
        fields["details"] = json.loads(row["details"])
        digest = event_hash(prev, fields)
        _sql(url, f"UPDATE {EVENTS} SET prev_hash = :p, hash = :h WHERE seq = :s", p=prev, h=digest, s=row["seq"])
        prev = digest
    last = rows[-1]
    sig = signer.sign(head_signing_bytes(last["job"], last["seq"], prev)).hex() if signer else None
    _sql(url, f"UPDATE {HEAD} SET seq = :s, hash = :h, signature = :sig, public_key = :pk",
         s=last["seq"], h=prev, sig=sig, pk=signer.public_hex if signer else None)


def _insert_row(url: str, **row) -> None:
    cols = ", ".join(row)
    _sql(url, f"INSERT INTO {EVENTS} ({cols}) VALUES ({', '.join(':' + c for c in row)})", **row)


def _forged_row(seq: int, prev_hash: str) -> dict:
    fields = {"seq": seq, "job": JOB, "step": 5, "kind": "banned", "peer": ALICE.public_hex,
              "reason": "forged ban of an honest peer", "details": {}, "created_at": "2030-01-01T00:00:00+00:00"}
    return {**fields, "details": "{}", "prev_hash": prev_hash, "hash": event_hash(prev_hash, fields)}


def _verify(url: str, **kw) -> VerifyReport:
    with Ledger(url, create=False) as led:
        return led.verify(**kw)


# -- append and read back ----------------------------------------------------------------------


def test_append_and_read_back(ledger):
    appended = _populate(ledger)
    events = ledger.events()
    assert [ev.seq for ev in events] == list(range(len(appended)))
    assert events[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(events))
    verdict = events[_seq_of(appended, "verdict")]
    assert verdict.peer == BOB.public_hex and verdict.reason == "guilty" and verdict.step == 3
    assert verdict.details["tally"] == {"guilty": 1, "innocent": 0}
    assert verdict.details["evidence"][0]["sender"] == ALICE.public_hex  # stored as message dicts
    assert verdict.created_at.endswith("+00:00")
    assert verdict.to_dict()["hash"] == verdict.hash == appended[verdict.seq].hash
    assert [ev.kind for ev in ledger.peer_history(BOB.public_hex)] == ["admitted", "accused", "verdict", "banned"]
    assert [ev.kind for ev in ledger.events(kinds={"banned", "verdict"})] == ["verdict", "banned"]
    assert [ev.kind for ev in ledger.events(peer=BOB.public_hex, kinds={"banned"})] == ["banned"]
    assert ledger.peers() == sorted(p.public_hex for p in (ALICE, BOB, CAROL))
    assert len(ledger) == len(appended)
    head = ledger.head()
    assert (head.seq, head.hash, head.public_key) == (events[-1].seq, events[-1].hash, JOB_KEY.public_hex)
    with pytest.raises(ValueError, match="unknown event kind"):
        ledger.events(kinds={"exploded"})


def test_append_validates_its_input(ledger):
    with pytest.raises(ValueError, match="unknown ledger event kind"):
        ledger.append(JOB, 0, "exploded")
    with pytest.raises(ValueError, match="cannot be stored"):
        ledger.append(JOB, 0, "admitted", details={"x": float("nan")})
    forged = sign_message(ALICE, JOB, 3, "accusation", {"accused": BOB.public_hex}).to_dict()
    forged["payload"]["accused"] = CAROL.public_hex
    with pytest.raises(LedgerError, match=r"evidence\[0\].*signature does not verify"):
        ledger.append(JOB, 3, "accused", peer=CAROL.public_hex, details={"evidence": [forged]})
    other_job = sign_message(ALICE, "other-job", 3, "accusation", {"accused": BOB.public_hex})
    with pytest.raises(LedgerError, match="signed for job 'other-job'"):
        ledger.append(JOB, 3, "accused", peer=BOB.public_hex, details={"evidence": [other_job]})
    assert len(ledger) == 0  # nothing was written


def test_reopened_ledger_continues_the_chain(ledger_url):
    with Ledger(ledger_url, JOB_KEY) as led:
        _populate(led)
    with Ledger(ledger_url, JOB_KEY) as led:
        ev = led.append(JOB, 10, "left", peer=CAROL.public_hex)
        assert ev.seq == 9
        assert led.verify(JOB_KEY.public_key).ok


def test_a_signed_ledger_only_accepts_appends_from_its_job_key(ledger_url):
    with Ledger(ledger_url, JOB_KEY) as led:
        led.append(JOB, 0, "job_started")
    with Ledger(ledger_url) as led, pytest.raises(LedgerError, match="open it with that job identity"):
        led.append(JOB, 1, "dropped", peer="peer-1")
    with Ledger(ledger_url, MALLORY) as led, pytest.raises(LedgerError, match="signed by job key"):
        led.append(JOB, 1, "dropped", peer="peer-1")
    assert _verify(ledger_url).ok


def test_appends_are_thread_safe(ledger):
    def worker(i: int) -> None:
        for k in range(10):
            ledger.append(JOB, k, "dropped", peer=f"peer-{i}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [ev.seq for ev in ledger.events()] == list(range(40))
    assert ledger.verify().ok


def test_export_jsonl_and_json(ledger, tmp_path):
    appended = _populate(ledger)
    n = ledger.export(tmp_path / "ledger.jsonl")
    lines = (tmp_path / "ledger.jsonl").read_text().splitlines()
    assert n == len(lines) == len(appended)
    assert [json.loads(line)["hash"] for line in lines] == [ev.hash for ev in appended]
    ledger.export(tmp_path / "ledger.json", fmt="json")
    doc = json.loads((tmp_path / "ledger.json").read_text())
    assert doc["head"]["signature"] and doc["head"]["seq"] == appended[-1].seq
    assert [ev["seq"] for ev in doc["events"]] == [ev.seq for ev in appended]
    with pytest.raises(ValueError, match="unknown export format"):
        ledger.export(tmp_path / "x.csv", fmt="csv")


# -- verification ------------------------------------------------------------------------------


def test_verify_ok_on_an_intact_ledger(ledger):
    events = _populate(ledger)
    report = ledger.verify()
    assert report == VerifyReport(True, None, "", len(events), JOB_KEY.public_hex, 0)
    assert ledger.verify(JOB_KEY.public_key).ok and ledger.verify(JOB_KEY.public_hex).ok
    report = ledger.verify(recompute=True)
    assert report.ok and report.recomputed == 1


def test_verify_ok_on_an_empty_ledger(ledger):
    assert ledger.verify() == VerifyReport(True, None, "", 0)


def test_modified_row_is_caught(ledger, ledger_url):
    events = _populate(ledger)
    seq = _seq_of(events, "verdict")
    _sql(ledger_url, f"UPDATE {EVENTS} SET reason = 'innocent' WHERE seq = :s", s=seq)
    report = _verify(ledger_url)
    assert not report.ok and report.first_bad_seq == seq
    assert f"seq {seq} (verdict" in report.problem and "modified" in report.problem
    assert report.events_checked == seq


@pytest.mark.parametrize("column, value", [("step", 99), ("peer", "someone-else"), ("created_at", "2020-01-01"),
                                           ("kind", "left"), ("details", '{"peers":4}')])
def test_any_modified_column_is_caught(ledger, ledger_url, column, value):
    _populate(ledger)
    _sql(ledger_url, f"UPDATE {EVENTS} SET {column} = :v WHERE seq = 0", v=value)
    report = _verify(ledger_url)
    assert not report.ok and report.first_bad_seq == 0


def test_deleted_middle_row_is_caught(ledger, ledger_url):
    events = _populate(ledger)
    seq = _seq_of(events, "accused")
    _sql(ledger_url, f"DELETE FROM {EVENTS} WHERE seq = :s", s=seq)
    report = _verify(ledger_url)
    assert not report.ok and report.first_bad_seq == seq
    assert f"seq {seq} is missing" in report.problem


def test_deleted_last_row_is_caught(ledger, ledger_url):
    events = _populate(ledger)
    _sql(ledger_url, f"DELETE FROM {EVENTS} WHERE seq = :s", s=events[-1].seq)
    report = _verify(ledger_url)
    assert not report.ok and report.first_bad_seq == events[-1].seq and "missing" in report.problem


def test_deleted_middle_row_with_renumbering_is_caught(ledger, ledger_url):
    """Delete a row and shift the later seqs down so there is no gap: the link breaks instead."""
    events = _populate(ledger)
    seq = _seq_of(events, "verdict")
    _sql(ledger_url, f"DELETE FROM {EVENTS} WHERE seq = :s", s=seq)
    for later in range(seq + 1, len(events)):
        _sql(ledger_url, f"UPDATE {EVENTS} SET seq = :new WHERE seq = :old", new=later - 1, old=later)
    report = _verify(ledger_url)
    assert not report.ok and report.first_bad_seq == seq


def test_inserted_unlinked_row_is_caught(ledger, ledger_url):
    events = _populate(ledger)
    n = len(events)
    _insert_row(ledger_url, **_forged_row(n, prev_hash="f" * 64))  # hash self-consistent, link wrong
    report = _verify(ledger_url)
    assert not report.ok and report.first_bad_seq == n and "prev_hash" in report.problem


def test_inserted_linked_row_without_the_job_key_is_caught(ledger, ledger_url):
    events = _populate(ledger)
    n = len(events)
    _insert_row(ledger_url, **_forged_row(n, prev_hash=events[-1].hash))  # linked, chain consistent
    report = _verify(ledger_url)
    assert not report.ok and report.first_bad_seq == n and "not covered by the signed chain head" in report.problem
    # moving the head forward needs the job key: signing with another key fails under the stored one
    forged = _forged_row(n, prev_hash=events[-1].hash)
    sig = MALLORY.sign(head_signing_bytes(JOB, n, forged["hash"])).hex()
    _sql(ledger_url, f"UPDATE {HEAD} SET seq = :s, hash = :h, signature = :sig", s=n, h=forged["hash"], sig=sig)
    report = _verify(ledger_url)
    assert not report.ok and report.first_bad_seq == n and "signature" in report.problem


def test_head_resigned_under_another_key_is_caught_by_the_expected_key(ledger, ledger_url):
    """An attacker who replaces the head's key too is only caught against the job's known key."""
    events = _populate(ledger)
    n = len(events)
    forged = _forged_row(n, prev_hash=events[-1].hash)
    _insert_row(ledger_url, **forged)
    sig = MALLORY.sign(head_signing_bytes(JOB, n, forged["hash"])).hex()
    _sql(ledger_url, f"UPDATE {HEAD} SET seq = :s, hash = :h, signature = :sig, public_key = :pk",
         s=n, h=forged["hash"], sig=sig, pk=MALLORY.public_hex)
    assert _verify(ledger_url).ok  # self-consistent...
    report = _verify(ledger_url, expected_public_key=JOB_KEY.public_key)
    assert not report.ok and "not by the expected job key" in report.problem  # ...but not the job's


def test_replaced_head_signature_is_caught(ledger, ledger_url):
    events = _populate(ledger)
    for bad in (MALLORY.sign(head_signing_bytes(JOB, events[-1].seq, events[-1].hash)).hex(),
                JOB_KEY.sign(b"something else").hex(), "00" * 64, "not hex"):
        _sql(ledger_url, f"UPDATE {HEAD} SET signature = :sig", sig=bad)
        report = _verify(ledger_url)
        assert not report.ok and report.first_bad_seq == events[-1].seq
        assert "chain head signature" in report.problem


def test_stripped_head_signature_is_caught(ledger, ledger_url):
    _populate(ledger)
    _sql(ledger_url, f"UPDATE {HEAD} SET signature = NULL, public_key = NULL")
    report = _verify(ledger_url)
    assert not report.ok and "not signed" in report.problem
    assert _verify(ledger_url, require_signature=False).ok  # only when the caller accepts unsigned ledgers


def test_deleted_head_is_caught(ledger, ledger_url):
    _populate(ledger)
    _sql(ledger_url, f"DELETE FROM {HEAD}")
    report = _verify(ledger_url)
    assert not report.ok and "head row is missing" in report.problem


def test_details_rewritten_with_the_same_meaning_are_caught(ledger, ledger_url):
    """A duplicate key another JSON reader would see first: same parsed value, different bytes."""
    events = _populate(ledger)
    seq = _seq_of(events, "verdict")
    details = _sql(ledger_url, f"SELECT details FROM {EVENTS} WHERE seq = :s", s=seq)[0][0]
    _sql(ledger_url, f"UPDATE {EVENTS} SET details = :d WHERE seq = :s",
         d='{"verdict":"innocent",' + details[1:], s=seq)
    report = _verify(ledger_url)
    assert not report.ok and report.first_bad_seq == seq and "canonical" in report.problem


def test_changed_evidence_byte_is_caught_by_the_hash(ledger, ledger_url):
    events = _populate(ledger)
    seq = _seq_of(events, "accused")
    details = _sql(ledger_url, f"SELECT details FROM {EVENTS} WHERE seq = :s", s=seq)[0][0]
    tampered = details.replace('"part":1', '"part":2', 1)
    assert tampered != details
    _sql(ledger_url, f"UPDATE {EVENTS} SET details = :d WHERE seq = :s", d=tampered, s=seq)
    report = _verify(ledger_url)
    assert not report.ok and report.first_bad_seq == seq and "modified" in report.problem


def test_changed_evidence_is_caught_even_when_the_job_key_rechains(ledger, ledger_url):
    """A dishonest job owner can recompute hashes and re-sign the head, but cannot forge a
    peer's signature: the evidence check catches the edit."""
    events = _populate(ledger)
    seq = _seq_of(events, "accused")
    details = _sql(ledger_url, f"SELECT details FROM {EVENTS} WHERE seq = :s", s=seq)[0][0]
    _sql(ledger_url, f"UPDATE {EVENTS} SET details = :d WHERE seq = :s",
         d=details.replace('"part":1', '"part":2', 1), s=seq)
    _rechain(ledger_url, seq, JOB_KEY)
    report = _verify(ledger_url)
    assert not report.ok and report.first_bad_seq == seq
    assert "evidence[0] (accusation from" in report.problem and "signature does not verify" in report.problem


def test_forged_vote_is_caught(ledger, ledger_url):
    events = _populate(ledger)
    seq = _seq_of(events, "verdict")
    details = json.loads(_sql(ledger_url, f"SELECT details FROM {EVENTS} WHERE seq = :s", s=seq)[0][0])
    details["votes"][0]["payload"]["guilty"] = False
    _sql(ledger_url, f"UPDATE {EVENTS} SET details = :d WHERE seq = :s", d=canonical_json(details).decode(), s=seq)
    _rechain(ledger_url, seq, JOB_KEY)
    report = _verify(ledger_url)
    assert not report.ok and report.first_bad_seq == seq and "votes[0]" in report.problem


def test_recompute_catches_a_verdict_that_does_not_match_its_accusation(ledger):
    accusation = sign_message(ALICE, JOB, 3, "accusation", {"accused": BOB.public_hex})
    ledger.append(JOB, 0, "job_started")
    seq = ledger.append(JOB, 3, "verdict", peer=CAROL.public_hex, reason="guilty",  # the wrong peer punished
                        details={"accused": CAROL.public_hex, "accuser": ALICE.public_hex,
                                 "evidence": [accusation], "recompute": "signature"}).seq
    assert ledger.verify().ok  # every signature is valid...
    report = ledger.verify(recompute=True)  # ...but the accusation does not name the punished peer
    assert not report.ok and report.first_bad_seq == seq and "names the accused" in report.problem


def test_recompute_runs_registered_functions(ledger):
    calls = []

    @register_recomputer("test-always-disagrees")
    def disagree(event: dict) -> bool:
        calls.append(event)
        return False

    try:
        ledger.append(JOB, 0, "job_started")
        ledger.append(JOB, 1, "verdict", peer="peer-1", details={"recompute": {"name": "test-always-disagrees"}})
        ledger.append(JOB, 1, "verdict", peer="peer-2", details={"recompute": "not-registered"})
        report = ledger.verify(recompute=True)
        assert not report.ok and report.first_bad_seq == 1 and "disagrees" in report.problem
        assert calls[0]["seq"] == 1 and calls[0]["details"]["recompute"]["name"] == "test-always-disagrees"
        RECOMPUTERS["test-always-disagrees"] = lambda event: True
        report = ledger.verify(recompute=True)
        assert not report.ok and report.first_bad_seq == 2 and "no recompute function registered" in report.problem
    finally:
        RECOMPUTERS.pop("test-always-disagrees", None)


# -- opening -----------------------------------------------------------------------------------


def test_resolve_ledger_url(tmp_path):
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    assert resolve_ledger_url(str(run)) == f"sqlite:///{run / 'ledger.db'}"
    assert resolve_ledger_url(run) == f"sqlite:///{run / 'ledger.db'}"
    assert resolve_ledger_url(str(tmp_path / "x.db")) == f"sqlite:///{tmp_path / 'x.db'}"
    assert resolve_ledger_url(str(tmp_path / "new-run")) == f"sqlite:///{tmp_path / 'new-run' / 'ledger.db'}"
    (tmp_path / "plainfile").write_text("")
    assert resolve_ledger_url(str(tmp_path / "plainfile")) == f"sqlite:///{tmp_path / 'plainfile'}"
    for url in ("sqlite:////abs/ledger.db", "postgresql+psycopg://user:pw@db.example:5432/btard"):
        assert resolve_ledger_url(url) == url
    with pytest.raises(LedgerError):
        resolve_ledger_url("")
    with pytest.raises(LedgerError, match="not a valid database URL"):
        resolve_ledger_url("not a url://at all")


def test_a_run_directory_is_a_ledger_location(tmp_path):
    with Ledger(tmp_path / "runs" / "r1", JOB_KEY) as led:  # created, with its directory
        led.append(JOB, 0, "job_started")
    assert (tmp_path / "runs" / "r1" / "ledger.db").is_file()
    assert _verify(str(tmp_path / "runs" / "r1")).ok


def test_opening_what_is_not_a_ledger_fails_clearly(tmp_path):
    with pytest.raises(LedgerNotFound, match="no ledger at"):
        Ledger(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()  # looking did not create it
    other = tmp_path / "other.db"
    _sql(f"sqlite:///{other}", "CREATE TABLE t (x INTEGER)")
    with pytest.raises(LedgerError, match="not a btard ledger"):
        Ledger(other, create=False)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database file at all" * 100)
    with pytest.raises(LedgerError, match="cannot open ledger"):
        Ledger(garbage, create=False)
    with pytest.raises(LedgerError, match="cannot open ledger"):
        Ledger(garbage)


# -- the CLI -----------------------------------------------------------------------------------

runner = CliRunner()


@pytest.fixture
def run_dir(tmp_path) -> Path:
    path = tmp_path / "runs" / "job-test-20260101-000000"
    with Ledger(path, JOB_KEY) as led:
        _populate(led)
    return path


def _cli(*args: str):
    return runner.invoke(ledger_app, list(args))


def test_cli_list_json(run_dir):
    result = _cli("list", "--db", str(run_dir), "--json")
    assert result.exit_code == 0, result.output
    events = json.loads(result.stdout)
    assert isinstance(events, list) and len(events) == 9
    for ev in events:
        assert {"seq", "kind", "step", "peer", "reason", "created_at"} <= set(ev)
    result = _cli("list", "--db", str(run_dir / "ledger.db"), "--json", "--kind", "banned", "--kind", "verdict")
    assert [ev["kind"] for ev in json.loads(result.stdout)] == ["verdict", "banned"]


def test_cli_list_table(run_dir):
    result = _cli("list", "--db", str(run_dir))
    assert result.exit_code == 0, result.output
    for text_ in ("job_started", "verdict", "banned", BOB.public_hex[:12]):
        assert text_ in result.stdout
    result = _cli("list", "--db", str(run_dir), "--kind", "exploded")
    assert result.exit_code == 2 and "unknown event kind" in result.output


def test_cli_show_filters_by_peer(run_dir):
    result = _cli("show", BOB.public_hex, "--db", str(run_dir), "--json")
    assert result.exit_code == 0, result.output
    events = json.loads(result.stdout)
    assert [ev["kind"] for ev in events] == ["admitted", "accused", "verdict", "banned"]
    assert {ev["peer"] for ev in events} == {BOB.public_hex}
    result = _cli("show", BOB.public_hex[:10], "--db", str(run_dir))  # a prefix is enough
    assert result.exit_code == 0 and "banned" in result.stdout and "job_started" not in result.stdout
    result = _cli("show", "nobody", "--db", str(run_dir))
    assert result.exit_code == 1 and "no events for peer nobody" in result.output


def test_cli_export_writes_a_file(run_dir, tmp_path):
    out = tmp_path / "export.jsonl"
    result = _cli("export", "--db", str(run_dir), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 9
    out_json = tmp_path / "export.json"
    result = _cli("export", "--db", str(run_dir), "--out", str(out_json), "--format", "json")
    assert result.exit_code == 0 and len(json.loads(out_json.read_text())["events"]) == 9
    result = _cli("export", "--db", str(run_dir))  # to stdout
    assert len(result.stdout.splitlines()) == 9


def test_cli_verify_ok(run_dir):
    result = _cli("verify", "--db", str(run_dir))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"ledger OK: 9 events, chain head signed by {JOB_KEY.public_hex[:16]}…"
    result = _cli("verify", "--db", str(run_dir), "--recompute", "--key", JOB_KEY.public_hex)
    assert result.exit_code == 0 and "1 verdict(s) re-checked" in result.stdout


def test_cli_verify_fails_on_tampering(run_dir):
    url = f"sqlite:///{run_dir / 'ledger.db'}"
    result = _cli("verify", "--db", url, "--key", MALLORY.public_hex)
    assert result.exit_code == 1 and "expected job key" in result.stdout
    _sql(url, f"UPDATE {EVENTS} SET reason = 'innocent' WHERE seq = 6")
    result = _cli("verify", "--db", url)
    assert result.exit_code == 1
    assert len(result.stdout.strip().splitlines()) == 1
    assert result.stdout.startswith("ledger FAILED: seq 6 (verdict")


def test_cli_verify_fails_on_a_deleted_row(run_dir):
    _sql(f"sqlite:///{run_dir / 'ledger.db'}", f"DELETE FROM {EVENTS} WHERE seq = 2")
    result = _cli("verify", "--db", str(run_dir))
    assert result.exit_code == 1 and "seq 2 is missing" in result.stdout


@pytest.mark.parametrize("make_db", [
    lambda tmp: str(tmp / "missing.db"),
    lambda tmp: str(tmp / "no-such-run-dir"),
    lambda tmp: (tmp / "notes.db").write_text("not a database " * 100) and str(tmp / "notes.db"),
    lambda tmp: "postgresql+psycopg://nobody@127.0.0.1:1/none",
    lambda tmp: "nosuchdialect://x/y",
])
@pytest.mark.parametrize("command", ["list", "export", "verify"])
def test_cli_bad_db_exits_2_with_one_line(tmp_path, make_db, command):
    result = _cli(command, "--db", make_db(tmp_path))
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("error:")
    assert "Traceback" not in result.output


def test_cli_bad_key_exits_2(run_dir):
    result = _cli("verify", "--db", str(run_dir), "--key", "abc")
    assert result.exit_code == 2 and "64 hex" in result.output


def test_cli_default_db_is_the_newest_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _cli("verify")
    assert result.exit_code == 2 and "no ledger found; pass --db" in result.output
    with Ledger("runs/older", JOB_KEY) as led:
        led.append(JOB, 0, "job_started")
    with Ledger("runs/newer", JOB_KEY) as led:
        led.append(JOB, 0, "job_started")
        led.append(JOB, 0, "admitted", peer="peer-0")
    old = time.time() - 3600
    os.utime("runs/older/ledger.db", (old, old))
    result = _cli("list", "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 2
    assert "runs/newer/ledger.db" in result.stderr


@pytest.mark.parametrize("command", ["list", "show", "export", "verify"])
def test_cli_every_command_has_an_example(command):
    result = _cli(command, "--help")
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output
