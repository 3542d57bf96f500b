"""The admission puzzle (admission/puzzle.py): real argon2id, no mocks.

Challenges use argon2id's minimum memory (8 KiB, ~0.1 ms an evaluation) and fixed
challenge ids, so every test is deterministic and the file runs in about a second.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import pytest
from nacl.pwhash import argon2id

from admission.puzzle import (
    Challenge,
    PuzzleError,
    PuzzleParams,
    Solution,
    difficulty,
    evaluate,
    measure_evaluation_seconds,
    meets_target,
    solve,
    target,
    verify,
)

FAST = PuzzleParams(opslimit=argon2id.OPSLIMIT_MIN, memlimit=argon2id.MEMLIMIT_MIN)


def make_challenge(k: float = 4.0, *, cid: str = "ab" * 16, **changes) -> Challenge:
    fields = dict(job="job-a", public_key="11" * 32, step=7, seed="5e" * 32, challenge_id=cid,
                  expected_evaluations=k, opslimit=FAST.opslimit, memlimit=FAST.memlimit, expires_step=9)
    fields.update(changes)
    return Challenge(**fields)


# -- params and encoding ----------------------------------------------------------------------


def test_params_defaults_and_bounds():
    assert PuzzleParams() == PuzzleParams(opslimit=1, memlimit=8 * 1024 * 1024)
    assert argon2id.OPSLIMIT_MIN == 1 and argon2id.MEMLIMIT_MIN == 8192 and argon2id.SALTBYTES == 16
    for bad in (dict(opslimit=0), dict(memlimit=argon2id.MEMLIMIT_MIN - 1), dict(opslimit=1.0),
                dict(memlimit="8192"), dict(opslimit=True)):
        with pytest.raises(PuzzleError) as err:
            PuzzleParams(**bad)
        assert "\n" not in str(err.value) and next(iter(bad)) in str(err.value)


def test_challenge_round_trips_through_json():
    c = make_challenge(k=4)  # an int difficulty is stored as the float 4.0: one spelling per value
    assert c.expected_evaluations == 4.0 and isinstance(c.expected_evaluations, float)
    again = Challenge.from_dict(json.loads(json.dumps(c.to_dict())))
    assert again == c and again.canonical_bytes() == c.canonical_bytes()
    assert c.params == FAST
    assert c.canonical_bytes() == json.dumps(c.to_dict(), sort_keys=True, separators=(",", ":")).encode()


@pytest.mark.parametrize("mutate, word", [
    (lambda d: d.pop("seed"), "missing"),
    (lambda d: d.update(extra=1), "unexpected"),
    (lambda d: d.update(step="7"), "step"),
    (lambda d: d.update(step=True), "step"),
    (lambda d: d.update(step=-1), "step"),
    (lambda d: d.update(expires_step=6), "expires_step"),
    (lambda d: d.update(public_key="11" * 31), "public_key"),
    (lambda d: d.update(public_key="AB" * 32), "public_key"),
    (lambda d: d.update(public_key="zz" * 32), "public_key"),
    (lambda d: d.update(challenge_id="ab"), "challenge_id"),
    (lambda d: d.update(seed=""), "seed"),
    (lambda d: d.update(seed=b"\x01"), "seed"),
    (lambda d: d.update(job=""), "job"),
    (lambda d: d.update(job=3), "job"),
    (lambda d: d.update(expected_evaluations=0.5), "expected_evaluations"),
    (lambda d: d.update(expected_evaluations=float("nan")), "expected_evaluations"),
    (lambda d: d.update(expected_evaluations=float("inf")), "expected_evaluations"),
    (lambda d: d.update(expected_evaluations="4"), "expected_evaluations"),
    (lambda d: d.update(opslimit=0), "opslimit"),
    (lambda d: d.update(memlimit=1024), "memlimit"),
])
def test_from_dict_rejects_malformed(mutate, word):
    d = make_challenge().to_dict()
    mutate(d)
    with pytest.raises(PuzzleError) as err:
        Challenge.from_dict(d)
    assert "\n" not in str(err.value) and word in str(err.value)


def test_from_dict_rejects_a_non_dict():
    with pytest.raises(PuzzleError, match="must be a dict"):
        Challenge.from_dict(["not", "a", "dict"])  # type: ignore[arg-type]


# -- evaluation and target --------------------------------------------------------------------


def test_evaluate_is_the_documented_formula():
    c = make_challenge()
    cb = c.canonical_bytes()
    salt = hashlib.sha256(b"btard-puzzle-v1\0" + cb).digest()[:16]
    expected = argon2id.kdf(32, cb + (12345).to_bytes(8, "big"), salt, opslimit=c.opslimit, memlimit=c.memlimit)
    assert evaluate(c, 12345) == expected and len(expected) == 32
    assert evaluate(c, 12345) == evaluate(Challenge.from_dict(c.to_dict()), 12345)  # deterministic
    assert evaluate(c, 12345) != evaluate(c, 12346)
    evaluate(c, 2**64 - 1)  # the largest nonce is fine
    for bad in (-1, 2**64, True, 1.0, "1"):
        with pytest.raises(PuzzleError, match="nonce"):
            evaluate(c, bad)  # type: ignore[arg-type]


def test_target_is_floor_of_2_64_over_k_clamped():
    assert target(1) == 2**64
    assert target(2) == 2**63
    assert target(3) == 2**64 // 3  # exact, no float rounding
    assert target(4.5) == (2**65) // 9
    assert target(0.25) == 2**64  # easier than one evaluation: every digest wins
    assert target(1e30) == 1  # never 0: a solution always exists in principle
    for bad in (0, -1, float("nan"), float("inf"), "2", True):
        with pytest.raises(PuzzleError):
            target(bad)  # type: ignore[arg-type]


def test_meets_target_boundary():
    c = make_challenge(k=4)  # target 2**62
    assert meets_target(c, (2**62 - 1).to_bytes(8, "big") + bytes(24))
    assert not meets_target(c, (2**62).to_bytes(8, "big") + bytes(24))
    with pytest.raises(PuzzleError, match="8 bytes"):
        meets_target(c, b"\x00" * 7)


# -- solving and verifying --------------------------------------------------------------------


def test_solve_then_verify():
    c = make_challenge(k=8)
    seen: list[int] = []
    sol = solve(c, start=100, on_evaluation=seen.append)
    assert isinstance(sol, Solution)
    assert sol.nonce >= 100 and sol.evaluations == sol.nonce - 100 + 1
    assert seen == list(range(1, sol.evaluations + 1))  # called after each evaluation
    assert sol.digest == evaluate(c, sol.nonce).hex() and sol.seconds >= 0
    assert verify(c, sol.nonce)
    # every earlier nonce failed (solve stops at the first solution)
    assert not any(verify(c, n) for n in range(100, sol.nonce))


def test_verify_rejects_a_wrong_nonce_for_a_hard_target():
    c = make_challenge(k=2.0**40)  # a given nonce wins with probability 2**-40; fixed challenge: deterministic
    assert not verify(c, 0) and not verify(c, 12345)
    assert not verify(c, -1) and not verify(c, 2**64) and not verify(c, "0")  # type: ignore[arg-type]


def test_solve_gives_up_after_max_evaluations():
    c = make_challenge(k=2.0**40)
    count: list[int] = []
    with pytest.raises(PuzzleError, match="no solution within 3 evaluations"):
        solve(c, max_evaluations=3, on_evaluation=count.append)
    assert count == [1, 2, 3]
    with pytest.raises(PuzzleError, match="no solution within 2 evaluations"):
        solve(c, start=2**64 - 2)  # the nonce space ends there
    with pytest.raises(PuzzleError, match="max_evaluations"):
        solve(c, max_evaluations=0)


def test_changing_any_field_invalidates_the_solution():
    # k = 4096: a solution of one challenge passes another with probability 1/4096 per field,
    # and the challenges are fixed, so this is deterministic (it cannot flake).
    c = make_challenge(k=4096.0)
    sol = solve(c)
    assert verify(c, sol.nonce)
    changes = dict(job="job-b", public_key="22" * 32, step=8, seed="5f" * 32, challenge_id="cd" * 16,
                   expected_evaluations=4097.0, opslimit=2, memlimit=2 * argon2id.MEMLIMIT_MIN, expires_step=10)
    assert set(changes) == {f.name for f in dataclasses.fields(Challenge)}  # really every field
    for name, value in changes.items():
        other = dataclasses.replace(c, **{name: value})
        assert evaluate(other, sol.nonce) != evaluate(c, sol.nonce), name
        assert not verify(other, sol.nonce), name


def test_mean_evaluations_is_about_k():
    # 40 solves at k = 4 with distinct fixed challenge ids (so this is deterministic too).
    # The evaluation counts are i.i.d. geometric with p = 1/4 and mean 4. The bounds are
    # chosen so that even a random instance fails with probability < 1e-6:
    #   mean < 1.5  <=> total <= 60  <=> >= 40 successes in 60 Bernoulli(1/4): P ≈ 1.3e-11
    #   mean > 10   <=> total >= 401 <=> <= 39 successes in 400 Bernoulli(1/4): P < 1.1e-14
    counts = [solve(make_challenge(k=4.0, cid=f"{i:032x}")).evaluations for i in range(40)]
    mean = sum(counts) / len(counts)
    assert 1.5 <= mean <= 10, counts


def test_difficulty_formula():
    assert difficulty(10, 0.1, 0.01) == pytest.approx(100.0)
    assert difficulty(2.5, 0.2, 0.05) == pytest.approx(10.0)
    assert difficulty(1, 0.001, 0.01) == 1.0  # never below one evaluation
    for bad in ((0, 1, 1), (1, -1, 1), (1, 1, 0), (math.inf, 1, 1), (1, math.nan, 1), (1e308, 1e308, 1e-308)):
        with pytest.raises(PuzzleError):
            difficulty(*bad)


def test_measure_evaluation_seconds():
    seconds = measure_evaluation_seconds(FAST, repeats=3)
    assert 0 < seconds < 5
    with pytest.raises(PuzzleError, match="repeats"):
        measure_evaluation_seconds(FAST, repeats=0)
