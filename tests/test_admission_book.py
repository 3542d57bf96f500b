"""The admission bookkeeping (admission/book.py): real PyNaCl keys and argon2id, no mocks.

Books use argon2id's minimum memory and a difficulty of k = alpha * gradient_seconds /
evaluation_seconds = 4 evaluations, so every solve takes well under a second.
"""

from __future__ import annotations

import json

import pytest
from nacl.pwhash import argon2id

from admission.book import (
    BAD_MESSAGE,
    DEFAULT_GRADIENT_SECONDS,
    EXPIRED,
    OTHER_KEY,
    REPLAYED,
    UNKNOWN,
    WRONG,
    Admission,
    AdmissionBook,
    AdmissionError,
    solution_message,
)
from admission.puzzle import Challenge, PuzzleParams, solve, verify
from btard_ray.identity import Identity
from btard_ray.ledger import Ledger
from btard_ray.ledger.recompute import signed_message_problem
from btard_ray.messages import Message, sign_message

JOB = "job-a"
FAST = PuzzleParams(opslimit=argon2id.OPSLIMIT_MIN, memlimit=argon2id.MEMLIMIT_MIN)
SEED = bytes(range(32))


def make_book(*, alpha: float = 4.0, expiry_steps: int = 2, **kw) -> AdmissionBook:
    # k = 4 * 0.01 / 0.01 = 4 expected evaluations
    book = AdmissionBook(JOB, FAST, alpha=alpha, expiry_steps=expiry_steps, gradient_seconds=0.01,
                         evaluation_seconds=0.01, **kw)
    book.advance(5, SEED)
    return book


@pytest.fixture
def joiner() -> Identity:
    return Identity.generate()


def solved(book: AdmissionBook, who: Identity) -> tuple[Challenge, dict]:
    challenge = book.issue(who.public_hex)
    return challenge, solution_message(who, JOB, book.step or 0, challenge, solve(challenge))


def refused(book: AdmissionBook, raw, reason: str, *words: str) -> AdmissionError:
    """Assert that ``raw`` is refused for ``reason``, in one line naming the problem."""
    with pytest.raises(AdmissionError) as err:
        book.check(raw)
    exc = err.value
    assert exc.reason == reason, str(exc)
    text = str(exc)
    assert "\n" not in text and text.startswith(reason) and all(w in text for w in words), text
    return exc


def wrong_nonce(challenge: Challenge, *, avoid: int = -1) -> int:
    """A nonce checked to fail (each fails with probability 1 - 1/k)."""
    return next(n for n in range(10_000, 20_000) if n != avoid and not verify(challenge, n))


# -- the happy path ---------------------------------------------------------------------------


def test_a_good_solution_admits_once(joiner, tmp_path):
    book = make_book()
    challenge, raw = solved(book, joiner)
    assert challenge.public_key == joiner.public_hex and challenge.job == JOB
    assert challenge.step == 5 and challenge.seed == SEED.hex() and challenge.expires_step == 7
    assert challenge.expected_evaluations == pytest.approx(4.0)
    admission = book.check(raw)
    assert isinstance(admission, Admission)
    assert admission.public_key == joiner.public_hex and admission.challenge == challenge
    assert admission.step == 5 and verify(challenge, admission.nonce)

    # the evidence is JSON-plain, re-checkable offline, and accepted by the ledger
    evidence = json.loads(json.dumps(admission.evidence()))
    assert evidence == admission.evidence()
    assert verify(Challenge.from_dict(evidence["challenge"]), evidence["nonce"])
    msg = Message.from_dict(evidence["evidence"][0])
    assert msg.signature_valid() and msg.sender == joiner.public_hex and msg.kind == "puzzle_solution"
    assert signed_message_problem(evidence, JOB) is None
    with Ledger(tmp_path / "ledger.db", Identity.generate()) as ledger:
        ledger.append(JOB, 5, "admitted", peer=joiner.public_hex, details=evidence)
        ledger.append(JOB, 5, "admission_rejected", peer=joiner.public_hex, reason=REPLAYED)
        assert ledger.verify().ok

    # single use: the same message, or a fresh message with the same solution, is a replay
    refused(book, raw, REPLAYED, challenge.challenge_id)
    again = solution_message(joiner, JOB, 5, challenge, solve(challenge))
    refused(book, again, REPLAYED, "already used")


def test_accepted_until_the_expiry_step_inclusive(joiner):
    book = make_book(expiry_steps=2)
    challenge, raw = solved(book, joiner)
    book.advance(challenge.expires_step, bytes(32))
    assert book.check(raw).step == challenge.expires_step


# -- refusals ---------------------------------------------------------------------------------


def test_other_key(joiner):
    book = make_book()
    challenge, raw = solved(book, joiner)
    thief = Identity.generate()
    stolen = sign_message(thief, JOB, 5, "puzzle_solution", Message.from_dict(raw).payload).to_dict()
    refused(book, stolen, OTHER_KEY, thief.public_hex[:16], challenge.public_key[:16])
    assert book.check(raw).public_key == joiner.public_hex  # the owner is unaffected


def test_expired(joiner):
    book = make_book(expiry_steps=2)
    challenge, raw = solved(book, joiner)
    book.advance(challenge.expires_step + 1, bytes(32))
    refused(book, raw, EXPIRED, "expired after step 7", "step 8")


def test_wrong_nonce_with_a_hard_target(joiner):
    book = make_book(alpha=2.0**40)  # k = 2**40: a random nonce fails with probability 1 - 2**-40
    challenge = book.issue(joiner.public_hex)
    nonce = wrong_nonce(challenge)
    raw = sign_message(joiner, JOB, 5, "puzzle_solution",
                       {"challenge_id": challenge.challenge_id, "nonce": nonce}).to_dict()
    refused(book, raw, WRONG, f"nonce {nonce}", challenge.challenge_id)


def test_a_wrong_nonce_does_not_consume_the_challenge_but_burns_it_after_max_attempts(joiner):
    book = make_book(max_attempts=3)
    challenge = book.issue(joiner.public_hex)
    good = solve(challenge)

    def send(nonce: int) -> dict:
        return sign_message(joiner, JOB, 5, "puzzle_solution",
                            {"challenge_id": challenge.challenge_id, "nonce": nonce}).to_dict()

    bad = wrong_nonce(challenge, avoid=good.nonce)
    refused(book, send(bad), WRONG, "2 attempts left")
    assert book.check(send(good.nonce)).nonce == good.nonce  # still usable after a wrong try

    challenge = other = book.issue(joiner.public_hex)  # send() now targets this one
    bads = [n for n in range(10_000, 20_000) if not verify(other, n)][:3]
    refused(book, send(bads[0]), WRONG, "2 attempts left")
    refused(book, send(bads[1]), WRONG, "1 attempt left")
    refused(book, send(bads[2]), WRONG, "0 attempts left")
    refused(book, send(solve(other).nonce), WRONG, "burned")  # even the right nonce, unevaluated


def test_unknown_challenge(joiner):
    book = make_book()
    solved(book, joiner)  # some other challenge exists
    raw = sign_message(joiner, JOB, 5, "puzzle_solution", {"challenge_id": "ff" * 16, "nonce": 0}).to_dict()
    refused(book, raw, UNKNOWN, "ff" * 16, "not issued")
    other_book = make_book()
    _, raw = solved(book, joiner)
    refused(other_book, raw, UNKNOWN)  # issued by another controller


@pytest.mark.parametrize("case, words", [
    ("tampered signature", ["signature"]),
    ("tampered payload", ["signature"]),
    ("wrong job", ["job-b"]),
    ("wrong kind", ["join_request"]),
    ("missing field", ["not a signed message"]),
    ("not a dict", ["not a signed message"]),
    ("extra payload key", ["payload keys"]),
    ("string nonce", ["nonce"]),
    ("negative nonce", ["nonce"]),
    ("huge nonce", ["nonce"]),
    ("bool nonce", ["nonce"]),
    ("non-string id", ["challenge_id"]),
])
def test_bad_message(joiner, case, words):
    book = make_book()
    challenge, raw = solved(book, joiner)
    payload = dict(Message.from_dict(raw).payload)

    def signed(job: str = JOB, kind: str = "puzzle_solution", **changes) -> dict:
        return sign_message(joiner, job, 5, kind, {**payload, **changes}).to_dict()

    bad = {
        "tampered signature": {**raw, "signature": ("0" if raw["signature"][0] != "0" else "1") + raw["signature"][1:]},
        "tampered payload": {**raw, "payload": {**payload, "nonce": payload["nonce"] + 1}},
        "wrong job": signed(job="job-b"),
        "wrong kind": signed(kind="join_request"),
        "missing field": {k: v for k, v in raw.items() if k != "nonce"},
        "not a dict": "puzzle_solution",
        "extra payload key": signed(extra=1),
        "string nonce": signed(nonce=str(payload["nonce"])),
        "negative nonce": signed(nonce=-1),
        "huge nonce": signed(nonce=2**64),
        "bool nonce": signed(nonce=True),
        "non-string id": signed(challenge_id=7),
    }[case]
    refused(book, bad, BAD_MESSAGE, *words)
    assert book.check(raw).public_key == joiner.public_hex  # none of it consumed the challenge


def test_issue_rejects_a_malformed_key_and_needs_a_step():
    book = AdmissionBook(JOB, FAST, alpha=1.0, expiry_steps=1, evaluation_seconds=0.01)
    with pytest.raises(RuntimeError, match="advance"):
        book.issue(Identity.generate().public_hex)
    book.advance(0, SEED)
    for key in ("11" * 31, "AB" * 32, "zz" * 32, 7):
        with pytest.raises(AdmissionError) as err:
            book.issue(key)  # type: ignore[arg-type]
        assert err.value.reason == BAD_MESSAGE and "public key" in str(err.value) and "\n" not in str(err.value)


# -- state, memory, costs ---------------------------------------------------------------------


def test_advance_never_goes_back():
    book = make_book()
    book.advance(5, b"\x01" * 32)  # the same step again is fine (replaces the seed)
    assert book.issue(Identity.generate().public_hex).seed == "01" * 32
    with pytest.raises(ValueError, match="never go back"):
        book.advance(4, SEED)
    for step, seed in ((-1, SEED), (True, SEED), (6, b""), (6, "00")):
        with pytest.raises(ValueError):
            book.advance(step, seed)  # type: ignore[arg-type]
    assert book.step == 5


def test_old_challenges_are_forgotten_but_replays_recognised_meanwhile(joiner):
    book = make_book(expiry_steps=2)  # issued at 5, expires after 7, remembered up to step 9
    used, used_raw = solved(book, joiner)
    book.check(used_raw)
    unused, unused_raw = solved(book, joiner)
    assert book.pending() == 2
    book.advance(9, SEED)
    assert book.pending() == 2
    refused(book, used_raw, REPLAYED)
    refused(book, unused_raw, EXPIRED)
    book.advance(10, SEED)
    assert book.pending() == 0
    refused(book, used_raw, UNKNOWN)
    refused(book, unused_raw, UNKNOWN)


def test_max_pending_forgets_the_oldest(joiner):
    book = make_book(max_pending=2)
    first, first_raw = solved(book, joiner)
    _, second_raw = solved(book, joiner)
    _, third_raw = solved(book, joiner)
    assert book.pending() == 2
    refused(book, first_raw, UNKNOWN)
    assert book.check(third_raw) and book.check(second_raw)


def test_difficulty_follows_the_measured_costs(joiner):
    book = AdmissionBook(JOB, FAST, alpha=3.0, expiry_steps=4, evaluation_seconds=0.002)
    assert book.gradient_seconds == DEFAULT_GRADIENT_SECONDS
    assert book.expected_evaluations == pytest.approx(3.0 * DEFAULT_GRADIENT_SECONDS / 0.002)
    book.set_gradient_seconds(0.004)
    assert book.expected_evaluations == pytest.approx(6.0)
    book.advance(0, SEED)
    assert book.issue(joiner.public_hex).expected_evaluations == pytest.approx(6.0)
    book.set_gradient_seconds(0.0001)
    assert book.expected_evaluations == 1.0  # never below one evaluation
    costs = book.costs()
    assert json.loads(json.dumps(costs)) == costs
    assert {"alpha", "gradient_seconds", "evaluation_seconds", "expected_evaluations", "expiry_steps",
            "opslimit", "memlimit"} <= set(costs)
    assert costs["alpha"] == 3.0 and costs["memlimit"] == FAST.memlimit and costs["expiry_steps"] == 4
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            book.set_gradient_seconds(bad)


def test_evaluation_seconds_is_measured_when_not_given():
    book = AdmissionBook(JOB, FAST, alpha=1.0, expiry_steps=1)
    assert 0 < book.evaluation_seconds < 5


def test_constructor_validates():
    for kw in (dict(alpha=0), dict(alpha=float("inf")), dict(expiry_steps=-1), dict(expiry_steps=1.5),
               dict(max_attempts=0), dict(max_pending=0), dict(gradient_seconds=0)):
        args = {**dict(alpha=1.0, expiry_steps=1, evaluation_seconds=0.01), **kw}
        with pytest.raises(ValueError):
            AdmissionBook(JOB, FAST, **args)
    with pytest.raises(ValueError):
        AdmissionBook("", FAST, alpha=1.0, expiry_steps=1, evaluation_seconds=0.01)


def test_solution_message_checks_job_and_key(joiner):
    book = make_book()
    challenge = book.issue(joiner.public_hex)
    sol = solve(challenge)
    with pytest.raises(ValueError, match="job"):
        solution_message(joiner, "job-b", 5, challenge, sol)
    with pytest.raises(ValueError, match="issued to key"):
        solution_message(Identity.generate(), JOB, 5, challenge, sol)
    raw = solution_message(joiner, JOB, 5, challenge, sol)
    assert raw["kind"] == "puzzle_solution" and raw["payload"] == {"challenge_id": challenge.challenge_id,
                                                                   "nonce": sol.nonce}
